// Package crypto holds weft's cryptography: key material derived from the mesh
// password, the authenticated key exchange between peers, and the AEAD of the
// data plane with its replay window.
package crypto

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

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

// passwordSaltLabel begins the salt of the password KDF. Every peer must
// derive the same keys from the same password without talking first, so the
// salt cannot be random per peer. It is specific to weft and versioned, and
// followed by the cluster's own values (PasswordSalt): a table precomputed
// for one weft cluster, or for other software, does not apply to another.
const passwordSaltLabel = "weft password salt v2"

// MinPasswordLength is the shortest password accepted without an explicit
// override, in characters.
const MinPasswordLength = 12

// ErrEmptyPassword is returned when encryption is asked for with no password.
var ErrEmptyPassword = errors.New("password is empty")

// ErrShortPassword is returned by CheckPassword for a password shorter than
// MinPasswordLength.
var ErrShortPassword = fmt.Errorf("password is shorter than %d characters", MinPasswordLength)

// CheckPassword refuses passwords too short to resist offline guessing of a
// captured handshake or gossip packet.
func CheckPassword(password []byte) error {
	if len(password) == 0 {
		return ErrEmptyPassword
	}
	if n := utf8.RuneCount(password); n < MinPasswordLength {
		return fmt.Errorf("%w (it has %d)", ErrShortPassword, n)
	}
	return nil
}

// PasswordSalt is the salt of the password KDF for one cluster: the label,
// then the pod address range and the cluster name (may be empty), each
// length-prefixed so that no two pairs give the same salt. Every peer knows
// both before it joins.
func PasswordSalt(ipRange, clusterName string) []byte {
	salt := []byte(passwordSaltLabel)
	for _, v := range []string{ipRange, clusterName} {
		salt = binary.BigEndian.AppendUint32(salt, uint32(len(v)))
		salt = append(salt, v...)
	}
	return salt
}

// PasswordKeys is everything derived from the mesh password.
type PasswordKeys struct {
	// Gossip is the AES-256 key memberlist encrypts gossip with.
	Gossip [32]byte
	// PSK is the pre-shared key mixed into the data-plane handshake.
	PSK [32]byte
}

// DerivePasswordKeys stretches password with Argon2id under salt (from
// PasswordSalt), then separates the keys for gossip and for the data plane
// with HKDF, so neither key reveals the other or the password. The length
// of the password is the caller's policy (CheckPassword).
func DerivePasswordKeys(password, salt []byte) (PasswordKeys, error) {
	var k PasswordKeys
	if len(password) == 0 {
		return k, ErrEmptyPassword
	}
	if len(salt) < len(passwordSaltLabel) {
		return k, errors.New("password salt is too short: use PasswordSalt")
	}
	master := argon2.IDKey(password, salt, argonTime, argonMemory, argonThreads, 32)
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
