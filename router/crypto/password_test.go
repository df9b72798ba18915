package crypto

import (
	"bytes"
	"errors"
	"testing"
)

// Two clusters with the same password but another range or another name get
// other keys; the same cluster always gets the same keys.
func TestPasswordKeysArePerCluster(t *testing.T) {
	pw := []byte("correct horse battery")
	derive := func(rng, name string) PasswordKeys {
		t.Helper()
		k, err := DerivePasswordKeys(pw, PasswordSalt(rng, name))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	base := derive("10.32.0.0/12", "")
	if again := derive("10.32.0.0/12", ""); again != base {
		t.Fatal("the same password, range and name gave different keys")
	}
	for _, other := range []PasswordKeys{derive("10.48.0.0/12", ""), derive("10.32.0.0/12", "prod")} {
		if other.Gossip == base.Gossip || other.PSK == base.PSK {
			t.Error("another cluster derived the same key from the same password")
		}
	}
	if base.Gossip == base.PSK {
		t.Error("gossip key and data PSK are the same")
	}
}

// The fields of the salt cannot be shifted into one another.
func TestPasswordSaltIsUnambiguous(t *testing.T) {
	if bytes.Equal(PasswordSalt("10.0.0.0/8", "x"), PasswordSalt("10.0.0.0/8x", "")) {
		t.Fatal("range and name run into each other in the salt")
	}
	if _, err := DerivePasswordKeys([]byte("correct horse battery"), []byte("short")); err == nil {
		t.Error("a salt not made by PasswordSalt was accepted")
	}
	if _, err := DerivePasswordKeys(nil, PasswordSalt("10.32.0.0/12", "")); !errors.Is(err, ErrEmptyPassword) {
		t.Errorf("empty password: %v, want ErrEmptyPassword", err)
	}
}

func TestCheckPassword(t *testing.T) {
	for _, c := range []struct {
		pw   string
		want error
	}{
		{"", ErrEmptyPassword},
		{"s3cret pass", ErrShortPassword}, // 11
		{"äöüäöüäöüäö", ErrShortPassword}, // 11 characters, 22 bytes
		{"s3cret passw", nil},             // 12
		{"äöüäöüäöüäöü", nil},             // 12 characters
	} {
		if err := CheckPassword([]byte(c.pw)); !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
			t.Errorf("CheckPassword(%q) = %v, want %v", c.pw, err, c.want)
		}
	}
}
