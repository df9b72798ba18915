// Package identity is a host's long-term signing identity and the names of
// peers pinned to theirs.
//
// Every host has an Ed25519 key in its state directory, with or without a
// password, created on first start and kept across restarts and `weft reset`.
// Peers announce its public half in their gossip metadata; the first key seen
// for a name is pinned (trust on first use) and a different key for that
// name is refused until an operator clears the pin (`weft rmpeer`).
//
// IPAM signs its messages and ring entries with it, so that a message is
// bound to the peer that wrote it whoever relays it.
package identity

import (
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/weftnet/weft/internal/atomicfile"
)

// KeyFile is the signing key inside the state directory.
const KeyFile = "signing.key"

// Errors of this package.
var (
	ErrCorrupt     = errors.New("corrupt identity file")
	ErrKeyMismatch = errors.New("peer announces a different signing key than the one pinned to its name")
)

// Signer is this host's signing key.
type Signer struct {
	priv ed25519.PrivateKey
}

// NewSigner wraps a private key (tests and Generate).
func NewSigner(priv ed25519.PrivateKey) *Signer { return &Signer{priv: priv} }

// Generate makes a fresh, unsaved signer.
func Generate() (*Signer, error) {
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		return nil, fmt.Errorf("generate signing key: %w", err)
	}
	return &Signer{priv: priv}, nil
}

// Public is the key peers verify with.
func (s *Signer) Public() ed25519.PublicKey { return s.priv.Public().(ed25519.PublicKey) }

// Sign signs msg.
func (s *Signer) Sign(msg []byte) []byte { return ed25519.Sign(s.priv, msg) }

// String never shows the private key.
func (s *Signer) String() string { return "signer(" + hex.EncodeToString(s.Public()[:8]) + "…)" }

// LoadOrCreate reads stateDir/signing.key, or creates it (0600, written
// atomically) when there is none. A corrupt file is an error and is left in
// place: replacing it would silently give this host a new identity, which its
// peers refuse.
func LoadOrCreate(stateDir string) (*Signer, error) {
	path := filepath.Join(stateDir, KeyFile)
	b, err := os.ReadFile(path)
	if err == nil {
		seed, derr := hex.DecodeString(strings.TrimSpace(string(b)))
		if derr != nil || len(seed) != ed25519.SeedSize {
			return nil, fmt.Errorf("%w: %s: want %d hex-encoded bytes (move it away to give this host a new identity; its peers must then `weft rmpeer` it)",
				ErrCorrupt, path, ed25519.SeedSize)
		}
		return &Signer{priv: ed25519.NewKeyFromSeed(seed)}, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	s, err := Generate()
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(path, []byte(hex.EncodeToString(s.priv.Seed())+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("save signing key: %w", err)
	}
	return s, nil
}
