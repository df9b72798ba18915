package identity

import (
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"
)

func genKey(t *testing.T) ed25519.PublicKey {
	t.Helper()
	s, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	return s.Public()
}

// TestPinsAuthority: the authority decides for the names it knows (pins its
// key, refuses others even on first contact, re-pins when its key changes);
// when it fails or does not know a name, trust on first use applies.
func TestPinsAuthority(t *testing.T) {
	a, b, c := genKey(t), genKey(t), genKey(t)
	dir := t.TempDir()
	p, err := loadPins(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]ed25519.PublicKey{"n1": a}
	var down error
	p.SetAuthority(func(name string) (ed25519.PublicKey, bool, error) {
		if down != nil {
			return nil, false, down
		}
		k, ok := held[name]
		return k, ok, nil
	})

	// First contact with a key the authority does not hold: refused, not pinned.
	err = p.Check("n1", b)
	if !errors.Is(err, ErrKeyMismatch) || !strings.Contains(err.Error(), Fingerprint(a)) || !strings.Contains(err.Error(), Fingerprint(b)) {
		t.Fatalf("mismatch on first contact: %v, want ErrKeyMismatch naming both fingerprints", err)
	}
	if _, ok := p.Key("n1"); ok {
		t.Fatal("a refused key was pinned")
	}
	// The authority's key: pinned, and persisted.
	if err := p.Check("n1", a); err != nil {
		t.Fatal(err)
	}
	if k, _ := p.Key("n1"); !k.Equal(a) {
		t.Fatal("authority's key not pinned")
	}
	// The authority changes its mind (host re-provisioned): re-pinned.
	held["n1"] = c
	if err := p.Check("n1", c); err != nil {
		t.Fatalf("re-pin from the authority: %v", err)
	}
	if err := p.Check("n1", a); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("old key after re-pin: %v", err)
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	reloaded, err := loadPins(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if k, _ := reloaded.Key("n1"); !k.Equal(c) {
		t.Fatal("re-pin not persisted")
	}

	// Unknown to the authority: trust on first use.
	if err := p.Check("other", a); err != nil {
		t.Fatal(err)
	}
	if err := p.Check("other", b); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("TOFU pin not enforced: %v", err)
	}
	// Authority down: trust on first use, and existing pins still hold.
	down = errors.New("connection refused")
	if err := p.Check("n2", b); err != nil {
		t.Fatalf("authority down, first contact: %v", err)
	}
	if err := p.Check("n1", a); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("authority down, pinned name with another key: %v", err)
	}
	if err := p.Check("n1", c); err != nil {
		t.Fatal(err)
	}
}
