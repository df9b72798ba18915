package crypto

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/crypto/curve25519"

	"github.com/weftnet/weft/internal/atomicfile"
)

// IdentityFile is the name of the identity key file inside the state dir.
const IdentityFile = "identity.key"

// identityHeader is the first line of the identity file; it names the format
// so that a future format can be told apart from a corrupt file.
const identityHeader = "weft-identity-v1"

// Identity is a peer's long-term X25519 static key pair. Its public half is
// announced in gossip metadata; its private half never leaves the host.
type Identity struct {
	private [32]byte
	public  [32]byte
}

// GenerateIdentity makes a fresh random identity.
func GenerateIdentity() (Identity, error) {
	var priv [32]byte
	if _, err := rand.Read(priv[:]); err != nil {
		return Identity{}, fmt.Errorf("generate identity: %w", err)
	}
	return identityFromPrivate(priv)
}

func identityFromPrivate(priv [32]byte) (Identity, error) {
	// Clamp as RFC 7748 describes; X25519 clamps anyway, but a clamped stored
	// key is what other tools expect to see.
	priv[0] &= 248
	priv[31] = (priv[31] & 127) | 64
	pub, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		return Identity{}, fmt.Errorf("derive public key: %w", err)
	}
	id := Identity{private: priv}
	copy(id.public[:], pub)
	return id, nil
}

// Public returns the public key to announce to other peers.
func (id Identity) Public() [32]byte { return id.public }

// IsZero reports whether id was never set.
func (id Identity) IsZero() bool { return id.public == [32]byte{} }

// LoadOrCreateIdentity reads stateDir/identity.key, or creates it (mode 0600,
// written atomically) when it does not exist. A file that exists but cannot
// be parsed is an error: silently replacing it would change this peer's
// identity behind the operator's back.
func LoadOrCreateIdentity(stateDir string) (Identity, error) {
	path := filepath.Join(stateDir, IdentityFile)
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		id, perr := parseIdentity(data)
		if perr != nil {
			return Identity{}, fmt.Errorf("identity file %s is corrupt (%w); move it away to create a new identity", path, perr)
		}
		return id, nil
	case !errors.Is(err, os.ErrNotExist):
		return Identity{}, fmt.Errorf("read identity: %w", err)
	}
	id, err := GenerateIdentity()
	if err != nil {
		return Identity{}, err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return Identity{}, fmt.Errorf("create state dir: %w", err)
	}
	if err := atomicfile.Write(path, formatIdentity(id), 0o600); err != nil {
		return Identity{}, fmt.Errorf("write identity: %w", err)
	}
	return id, nil
}

func formatIdentity(id Identity) []byte {
	return []byte(identityHeader + "\n" + base64.StdEncoding.EncodeToString(id.private[:]) + "\n")
}

func parseIdentity(data []byte) (Identity, error) {
	lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	if len(lines) != 2 {
		return Identity{}, fmt.Errorf("want 2 lines, have %d", len(lines))
	}
	if string(lines[0]) != identityHeader {
		return Identity{}, fmt.Errorf("first line is not %q", identityHeader)
	}
	var priv [32]byte
	// Check the length first: Decode writes past a too-small destination.
	if want := base64.StdEncoding.EncodedLen(len(priv)); len(lines[1]) != want {
		return Identity{}, fmt.Errorf("private key line is %d characters, want %d", len(lines[1]), want)
	}
	var buf [33]byte // DecodedLen of 44 characters
	n, err := base64.StdEncoding.Decode(buf[:], lines[1])
	if err != nil {
		return Identity{}, fmt.Errorf("private key is not base64: %w", err)
	}
	if n != len(priv) {
		return Identity{}, fmt.Errorf("private key is %d bytes, want %d", n, len(priv))
	}
	copy(priv[:], buf[:n])
	if priv == [32]byte{} {
		return Identity{}, errors.New("private key is all zero")
	}
	return identityFromPrivate(priv)
}

// String shows only the public key, so that logging an Identity by mistake
// never prints the private key.
func (id Identity) String() string {
	return "identity(" + base64.StdEncoding.EncodeToString(id.public[:]) + ")"
}

// GoString is String for %#v.
func (id Identity) GoString() string { return id.String() }
