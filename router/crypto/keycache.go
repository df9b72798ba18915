package crypto

// The keys derived from the password, kept in the state directory so that a
// restart does not run Argon2id (seconds of CPU on a busy host) at all: not
// before gossip and the data plane can run, and not after either, where its
// burst of CPU would stall the node's other pods in the middle of a rolling
// restart. A check value of the password, keyed with the derived PSK, tells
// at once whether the cache belongs to the password given now.

import (
	"bytes"
	"crypto/hmac"
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
// (32), the PSK (32), the password check (32: HMAC-SHA256 keyed with the PSK
// of a label and the password), and a SHA-256 of everything before it (32),
// which catches a torn or corrupted file. The check lets anyone who reads
// the file test password guesses cheaply; the file holds the keys
// themselves, which are worth as much as the password, so it is as secret
// as the password already is (0600, root's state dir). A cache of the first
// format (magic weftpk1, no check) is not used: the keys are derived again
// and the cache rewritten.
const (
	keyCacheMagic = "weftpk2\n"
	keyCacheLen   = len(keyCacheMagic) + 32*5
	checkLabel    = "weft password check v1"
	// keyCacheMagicV1 starts a cache of the first format.
	keyCacheMagicV1 = "weftpk1\n"
)

// passwordCheck is the check value of password under the keys derived from it.
func passwordCheck(k PasswordKeys, password []byte) []byte {
	m := hmac.New(sha256.New, k.PSK[:])
	m.Write([]byte(checkLabel))
	m.Write(password)
	return m.Sum(nil)
}

// ErrKeyCache is wrapped by every error of DecodePasswordKeys.
var ErrKeyCache = errors.New("invalid password key cache")

// EncodePasswordKeys lays out the cache of k, derived from password under
// salt.
func EncodePasswordKeys(salt, password []byte, k PasswordKeys) []byte {
	b := make([]byte, 0, keyCacheLen)
	b = append(b, keyCacheMagic...)
	saltSum := sha256.Sum256(salt)
	b = append(b, saltSum[:]...)
	b = append(b, k.Gossip[:]...)
	b = append(b, k.PSK[:]...)
	b = append(b, passwordCheck(k, password)...)
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// DecodePasswordKeys checks a cache strictly and returns its keys. ok is
// false, without an error, for a well-formed cache of another salt (the
// range or cluster name changed) or of another password: it does not apply.
func DecodePasswordKeys(b, salt, password []byte) (k PasswordKeys, ok bool, err error) {
	if bytes.HasPrefix(b, []byte(keyCacheMagicV1)) {
		return k, false, nil // the first format, without the check: derive again
	}
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
	if !hmac.Equal(rest[96:128], passwordCheck(k, password)) {
		return PasswordKeys{}, false, nil
	}
	return k, true, nil
}

// CachedPasswordKeys reads the cache in dir. ok is false when there is none
// for this salt and password; err says why a cache present could not be
// used (it should then be ignored and replaced, not trusted).
func CachedPasswordKeys(dir string, salt, password []byte) (PasswordKeys, bool, error) {
	path := filepath.Join(dir, PasswordKeysFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return PasswordKeys{}, false, nil
	}
	if err != nil {
		return PasswordKeys{}, false, fmt.Errorf("read %s: %w", path, err)
	}
	k, ok, err := DecodePasswordKeys(b, salt, password)
	if err != nil {
		return k, false, fmt.Errorf("%s: %w", path, err)
	}
	return k, ok, nil
}

// SavePasswordKeys writes the cache of k, derived from password, in dir
// (mode 0600, atomically).
func SavePasswordKeys(dir string, salt, password []byte, k PasswordKeys) error {
	path := filepath.Join(dir, PasswordKeysFile)
	if err := atomicfile.Write(path, EncodePasswordKeys(salt, password, k), 0o600); err != nil {
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
