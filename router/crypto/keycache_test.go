package crypto

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func testKeys() PasswordKeys {
	var k PasswordKeys
	for i := range k.Gossip {
		k.Gossip[i], k.PSK[i] = byte(i+1), byte(0x80+i)
	}
	return k
}

var testPassword = []byte("correct horse battery")

func TestPasswordKeyCache(t *testing.T) {
	dir := t.TempDir()
	salt := PasswordSalt("10.32.0.0/12", "")
	if _, ok, err := CachedPasswordKeys(dir, salt, testPassword); ok || err != nil {
		t.Fatalf("empty dir: ok %v err %v", ok, err)
	}
	k := testKeys()
	if err := SavePasswordKeys(dir, salt, testPassword, k); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, PasswordKeysFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("cache file: %v %v", st, err)
	}
	got, ok, err := CachedPasswordKeys(dir, salt, testPassword)
	if err != nil || !ok || !got.Equal(k) {
		t.Fatalf("read back: ok %v err %v equal %v", ok, err, got.Equal(k))
	}
	// Another range or cluster name: the cache does not apply.
	if _, ok, err := CachedPasswordKeys(dir, PasswordSalt("10.32.0.0/12", "other"), testPassword); ok || err != nil {
		t.Fatalf("other salt: ok %v err %v", ok, err)
	}
	// Another password: the cache does not apply either, and telling so
	// takes no Argon2id.
	if _, ok, err := CachedPasswordKeys(dir, salt, []byte("correct horse battery!")); ok || err != nil {
		t.Fatalf("other password: ok %v err %v", ok, err)
	}
	// Any flipped bit, a truncation or an extension is refused.
	b := EncodePasswordKeys(salt, testPassword, k)
	for i := range b {
		c := bytes.Clone(b)
		c[i] ^= 0x10
		if _, ok, err := DecodePasswordKeys(c, salt, testPassword); ok || (i >= len(keyCacheMagic) && !errors.Is(err, ErrKeyCache)) {
			t.Fatalf("bit flipped at %d: ok %v err %v", i, ok, err)
		}
	}
	for _, c := range [][]byte{b[:len(b)-1], append(bytes.Clone(b), 0), nil} {
		if _, ok, err := DecodePasswordKeys(c, salt, testPassword); ok || !errors.Is(err, ErrKeyCache) {
			t.Fatalf("%d bytes: ok %v err %v", len(c), ok, err)
		}
	}
	// A cache of the first format (no password check) is not used, and is
	// no error: the keys are derived again.
	v1 := append([]byte(keyCacheMagicV1), b[len(keyCacheMagic):len(keyCacheMagic)+96]...)
	v1sum := sha256.Sum256(v1)
	if _, ok, err := DecodePasswordKeys(append(v1, v1sum[:]...), salt, testPassword); ok || err != nil {
		t.Fatalf("first format: ok %v err %v", ok, err)
	}
	if err := os.WriteFile(filepath.Join(dir, PasswordKeysFile), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := CachedPasswordKeys(dir, salt, testPassword); ok || !errors.Is(err, ErrKeyCache) {
		t.Fatalf("garbage: ok %v err %v", ok, err)
	}
	if k.Equal(PasswordKeys{}) || !k.Equal(testKeys()) {
		t.Fatal("Equal")
	}
}

func FuzzDecodePasswordKeys(f *testing.F) {
	salt := PasswordSalt("10.32.0.0/12", "")
	good := EncodePasswordKeys(salt, testPassword, testKeys())
	f.Add(good)
	f.Add(EncodePasswordKeys(PasswordSalt("10.0.0.0/8", "c"), testPassword, testKeys()))
	f.Add(EncodePasswordKeys(salt, []byte("another password"), testKeys()))
	f.Add(append([]byte(keyCacheMagicV1), good[len(keyCacheMagic):]...))
	f.Add(good[:40])
	f.Add([]byte(keyCacheMagic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		k, ok, err := DecodePasswordKeys(b, salt, testPassword)
		if ok && err != nil {
			t.Fatal("ok with an error")
		}
		if ok && !bytes.Equal(EncodePasswordKeys(salt, testPassword, k), b) {
			t.Fatal("accepted a cache that does not encode back to itself")
		}
	})
}
