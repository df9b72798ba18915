// Package crypto holds weft's cryptography: key material derived from the mesh
// password, the authenticated key exchange between peers, and the AEAD of the
// data plane with its replay window.
package crypto

import (
	"crypto/sha256"
	"errors"
	"io"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/hkdf"
)

// Argon2id cost of turning the password into key material. It runs once per
// launch, so it can afford to be slow for an attacker guessing passwords.
const (
	argonTime    = 2
	argonMemory  = 64 * 1024 // KiB
	argonThreads = 2
)

// passwordSalt is the fixed, public salt of the password KDF. Every peer must
// derive the same keys from the same password without talking first, so the
// salt cannot be random per peer; it is specific to weft and versioned so a
// precomputed table for other software does not apply.
var passwordSalt = []byte("weft password salt v1")

// ErrEmptyPassword is returned when encryption is asked for with no password.
var ErrEmptyPassword = errors.New("password is empty")

// PasswordKeys is everything derived from the mesh password.
type PasswordKeys struct {
	// Gossip is the AES-256 key memberlist encrypts gossip with.
	Gossip [32]byte
	// PSK is the pre-shared key mixed into the data-plane handshake.
	PSK [32]byte
}

// DerivePasswordKeys stretches password with Argon2id, then separates the
// keys for gossip and for the data plane with HKDF, so neither key reveals the
// other or the password.
func DerivePasswordKeys(password []byte) (PasswordKeys, error) {
	var k PasswordKeys
	if len(password) == 0 {
		return k, ErrEmptyPassword
	}
	master := argon2.IDKey(password, passwordSalt, argonTime, argonMemory, argonThreads, 32)
	for _, out := range []struct {
		info string
		key  *[32]byte
	}{{"weft gossip key v1", &k.Gossip}, {"weft data psk v1", &k.PSK}} {
		r := hkdf.New(sha256.New, master, nil, []byte(out.info))
		if _, err := io.ReadFull(r, out.key[:]); err != nil {
			return k, err
		}
	}
	return k, nil
}
