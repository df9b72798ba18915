package crypto

// The keys derived from the password, kept in the state directory so that a
// restart does not wait for Argon2id (seconds on a busy host) before gossip
// and the data plane can run.

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/weftnet/weft/internal/atomicfile"
)

// PasswordKeysFile is the name of the cache of PasswordKeys in the state dir.
const PasswordKeysFile = "password-keys"

// The file is: magic (8 bytes), SHA-256 of the salt (32), the gossip key
// (32), the PSK (32), and a SHA-256 of everything before it (32), which
// catches a torn or corrupted file.
const (
	keyCacheMagic = "weftpk1\n"
	keyCacheLen   = len(keyCacheMagic) + 32*4
)

// ErrKeyCache is wrapped by every error of DecodePasswordKeys.
var ErrKeyCache = errors.New("invalid password key cache")

// EncodePasswordKeys lays out the cache of k, derived under salt.
func EncodePasswordKeys(salt []byte, k PasswordKeys) []byte {
	b := make([]byte, 0, keyCacheLen)
	b = append(b, keyCacheMagic...)
	saltSum := sha256.Sum256(salt)
	b = append(b, saltSum[:]...)
	b = append(b, k.Gossip[:]...)
	b = append(b, k.PSK[:]...)
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// DecodePasswordKeys checks a cache strictly and returns its keys. ok is
// false, without an error, for a well-formed cache of another salt (the
// range or cluster name changed): it does not apply.
func DecodePasswordKeys(b, salt []byte) (k PasswordKeys, ok bool, err error) {
	if len(b) != keyCacheLen {
		return k, false, fmt.Errorf("%w: %d bytes, want %d", ErrKeyCache, len(b), keyCacheLen)
	}
	if !bytes.HasPrefix(b, []byte(keyCacheMagic)) {
		return k, false, fmt.Errorf("%w: bad magic", ErrKeyCache)
	}
	body, sum := b[:keyCacheLen-32], b[keyCacheLen-32:]
	want := sha256.Sum256(body)
	if subtle.ConstantTimeCompare(sum, want[:]) != 1 {
		return k, false, fmt.Errorf("%w: checksum mismatch", ErrKeyCache)
	}
	rest := body[len(keyCacheMagic):]
	saltSum := sha256.Sum256(salt)
	if !bytes.Equal(rest[:32], saltSum[:]) {
		return k, false, nil
	}
	copy(k.Gossip[:], rest[32:64])
	copy(k.PSK[:], rest[64:96])
	if k.Gossip == ([32]byte{}) || k.PSK == ([32]byte{}) {
		return PasswordKeys{}, false, fmt.Errorf("%w: zero key", ErrKeyCache)
	}
	return k, true, nil
}

// CachedPasswordKeys reads the cache in dir. ok is false when there is none
// for this salt; err says why a cache present could not be used (it should
// then be ignored and replaced, not trusted).
func CachedPasswordKeys(dir string, salt []byte) (PasswordKeys, bool, error) {
	path := filepath.Join(dir, PasswordKeysFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return PasswordKeys{}, false, nil
	}
	if err != nil {
		return PasswordKeys{}, false, fmt.Errorf("read %s: %w", path, err)
	}
	k, ok, err := DecodePasswordKeys(b, salt)
	if err != nil {
		return k, false, fmt.Errorf("%s: %w", path, err)
	}
	return k, ok, nil
}

// SavePasswordKeys writes the cache of k in dir (mode 0600, atomically).
func SavePasswordKeys(dir string, salt []byte, k PasswordKeys) error {
	path := filepath.Join(dir, PasswordKeysFile)
	if err := atomicfile.Write(path, EncodePasswordKeys(salt, k), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Equal reports whether two sets of keys are the same, in constant time.
func (k PasswordKeys) Equal(o PasswordKeys) bool {
	var a, b [64]byte
	copy(a[:], k.Gossip[:])
	copy(a[32:], k.PSK[:])
	copy(b[:], o.Gossip[:])
	copy(b[32:], o.PSK[:])
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}
