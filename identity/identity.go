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
	if err := WriteFileAtomic(path, []byte(hex.EncodeToString(s.priv.Seed())+"\n")); err != nil {
		return nil, fmt.Errorf("save signing key: %w", err)
	}
	return s, nil
}

// WriteFileAtomic replaces path with data (mode 0600): a crash leaves the old
// or the new file, never a torn one.
func WriteFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Chmod(0o600); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
