package crypto

import (
	"bytes"
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

func TestPasswordKeyCache(t *testing.T) {
	dir := t.TempDir()
	salt := PasswordSalt("10.32.0.0/12", "")
	if _, ok, err := CachedPasswordKeys(dir, salt); ok || err != nil {
		t.Fatalf("empty dir: ok %v err %v", ok, err)
	}
	k := testKeys()
	if err := SavePasswordKeys(dir, salt, k); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, PasswordKeysFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("cache file: %v %v", st, err)
	}
	got, ok, err := CachedPasswordKeys(dir, salt)
	if err != nil || !ok || !got.Equal(k) {
		t.Fatalf("read back: ok %v err %v equal %v", ok, err, got.Equal(k))
	}
	// Another range or cluster name: the cache does not apply.
	if _, ok, err := CachedPasswordKeys(dir, PasswordSalt("10.32.0.0/12", "other")); ok || err != nil {
		t.Fatalf("other salt: ok %v err %v", ok, err)
	}
	// Any flipped bit, a truncation or an extension is refused.
	b := EncodePasswordKeys(salt, k)
	for i := range b {
		c := bytes.Clone(b)
		c[i] ^= 0x10
		if _, ok, err := DecodePasswordKeys(c, salt); ok || !errors.Is(err, ErrKeyCache) {
			t.Fatalf("bit flipped at %d: ok %v err %v", i, ok, err)
		}
	}
	for _, c := range [][]byte{b[:len(b)-1], append(bytes.Clone(b), 0), nil} {
		if _, ok, err := DecodePasswordKeys(c, salt); ok || !errors.Is(err, ErrKeyCache) {
			t.Fatalf("%d bytes: ok %v err %v", len(c), ok, err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, PasswordKeysFile), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := CachedPasswordKeys(dir, salt); ok || !errors.Is(err, ErrKeyCache) {
		t.Fatalf("garbage: ok %v err %v", ok, err)
	}
	if k.Equal(PasswordKeys{}) || !k.Equal(testKeys()) {
		t.Fatal("Equal")
	}
}

func FuzzDecodePasswordKeys(f *testing.F) {
	salt := PasswordSalt("10.32.0.0/12", "")
	good := EncodePasswordKeys(salt, testKeys())
	f.Add(good)
	f.Add(EncodePasswordKeys(PasswordSalt("10.0.0.0/8", "c"), testKeys()))
	f.Add(good[:40])
	f.Add([]byte(keyCacheMagic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		k, ok, err := DecodePasswordKeys(b, salt)
		if ok && err != nil {
			t.Fatal("ok with an error")
		}
		if ok && !bytes.Equal(EncodePasswordKeys(salt, k), b) {
			t.Fatal("accepted a cache that does not encode back to itself")
		}
	})
}
