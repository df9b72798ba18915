package identity

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSignerPersistsWithMode0600(t *testing.T) {
	dir := t.TempDir()
	s1, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	s2, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s1.Public(), s2.Public()) {
		t.Fatal("key changed across a restart")
	}
	other, err := LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(other.Public(), s1.Public()) {
		t.Fatal("two state dirs share a key")
	}
	if strings.Contains(s1.String(), "priv") || len(s1.String()) > 40 {
		t.Fatalf("String shows too much: %q", s1.String())
	}
}

func TestCorruptKeyIsAnErrorAndKept(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, KeyFile)
	for _, junk := range []string{"", "zz", strings.Repeat("ab", 31)} {
		if err := os.WriteFile(path, []byte(junk), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadOrCreate(dir); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("corrupt key %q: %v", junk, err)
		}
		if got, _ := os.ReadFile(path); string(got) != junk {
			t.Fatal("corrupt key file replaced")
		}
	}
}

func TestPinsTrustOnFirstUse(t *testing.T) {
	dir := t.TempDir()
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	p, err := loadPins(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Check("b", k1); err != nil {
		t.Fatal(err)
	}
	if err := p.Check("b", k2); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("another key for b: %v", err)
	}
	if err := p.Check("c", []byte{1}); err == nil {
		t.Fatal("short key pinned")
	}
	// Pins survive a restart (the agent flushes them when it stops).
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	p2, err := loadPins(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := p2.Key("b"); !ok || !bytes.Equal(k, k1) {
		t.Fatalf("pin lost across a restart: %x %v", k, ok)
	}
	if err := p2.Check("b", k2); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("after a restart, another key for b: %v", err)
	}
	// Forget clears it, for good.
	if err := p2.Forget("b"); err != nil {
		t.Fatal(err)
	}
	p3, _ := loadPins(t, dir)
	if err := p3.Check("b", k2); err != nil {
		t.Fatalf("after forget: %v", err)
	}
}

func TestPinsBounded(t *testing.T) {
	p := NewPins()
	key := bytes.Repeat([]byte{3}, 32)
	for i := range MaxPins {
		if err := p.Check(string(rune(0x4e00+i)), key); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Check("one-more", key); !errors.Is(err, ErrTooManyPins) {
		t.Fatalf("pin beyond the bound: %v", err)
	}
	if p.Len() != MaxPins {
		t.Fatalf("%d pins", p.Len())
	}
}

func TestCorruptPinsAreAnError(t *testing.T) {
	dir := t.TempDir()
	for _, junk := range []string{"{", `{"b":"zz"}`, `{"":"` + strings.Repeat("00", 32) + `"}`} {
		if err := os.WriteFile(filepath.Join(dir, PinsFile), []byte(junk), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadPins(t, dir); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("corrupt pins %q: %v", junk, err)
		}
	}
}

// FuzzLoadPins: the pins file is read at every start; no input panics, and
// what loads has only well-formed keys.
func FuzzLoadPins(f *testing.F) {
	f.Add([]byte(`{"b":"` + strings.Repeat("01", 32) + `"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, PinsFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
		p, err := loadPins(t, dir)
		if err != nil {
			return
		}
		for name, k := range p.keys {
			if name == "" || len(k) != 32 {
				t.Fatalf("loaded pin %q of %d bytes", name, len(k))
			}
		}
	})
}

// A new pin reaches the disk by itself, without Flush: written in the
// background, since Check runs inside gossip callbacks.
func TestPinsSavedInBackground(t *testing.T) {
	dir := t.TempDir()
	p, err := loadPins(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]ed25519.PublicKey{}
	for i := range 50 {
		pub, _, err := ed25519.GenerateKey(nil)
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("peer%d", i)
		keys[name] = pub
		if err := p.Check(name, pub); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		q, err := loadPins(t, dir)
		if err == nil && q.Len() == len(keys) {
			for name, k := range keys {
				if got, ok := q.Key(name); !ok || !bytes.Equal(got, k) {
					t.Fatalf("%s: pinned %x on disk, want %x", name, got, k)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pins not all on disk after 10 s (err %v), want %d", err, len(keys))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// loadPins is LoadPins for a test: pins written in the background are on
// disk before the test's directory is removed.
func loadPins(t *testing.T, dir string) (*Pins, error) {
	t.Helper()
	p, err := LoadPins(dir, nil)
	if p != nil {
		t.Cleanup(func() { _ = p.Flush() })
	}
	return p, err
}
