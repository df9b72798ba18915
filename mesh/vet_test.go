package mesh

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/weftnet/weft/identity"
)

// memberlist asks the Alive delegate about every alive message, duplicates
// included (a forming mesh of 1,000 sends each one about twelve times to
// every member): the metadata and pin check runs once per name and
// metadata, not once per message, and a change of the pin or of the
// metadata is checked afresh at once.
func TestVetChecksOncePerMeta(t *testing.T) {
	sink := &logSink{}
	pins := identity.NewPins()
	now := time.Unix(1000, 0)
	m := &Mesh{cfg: Config{Name: "a", Pins: pins}, log: newTestLogger(sink), now: func() time.Time { return now }}
	d := &delegate{m: m}
	node := func(key byte, version string) *memberlist.Node {
		meta, err := Meta{Protocol: ProtocolMin, DataPort: 6784, Version: version, SigningKey: bytes.Repeat([]byte{key}, 32)}.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return &memberlist.Node{Name: "b", Addr: net.IPv4(198, 18, 0, 2), Port: 6783, Meta: meta}
	}
	for range 1000 {
		if err := d.NotifyAlive(node(1, "v1")); err != nil {
			t.Fatal(err)
		}
	}
	if got := d.vetChecks.Load(); got != 1 {
		t.Fatalf("1,000 alive messages of one peer: %d full checks, want 1", got)
	}
	// Other metadata (an upgrade): checked.
	if err := d.NotifyAlive(node(1, "v2")); err != nil || d.vetChecks.Load() != 2 {
		t.Fatalf("new metadata: err %v, %d checks, want 2", err, d.vetChecks.Load())
	}
	// Another key for the pinned name: refused every time, never remembered.
	for range 3 {
		if err := d.NotifyAlive(node(2, "v2")); !errors.Is(err, identity.ErrKeyMismatch) {
			t.Fatalf("another key: %v", err)
		}
	}
	if d.vetChecks.Load() != 5 {
		t.Fatalf("refusals: %d checks, want 5", d.vetChecks.Load())
	}
	// The pin cleared (weft rmpeer): the next message is checked, and pins again.
	if err := pins.Forget("b"); err != nil {
		t.Fatal(err)
	}
	if err := d.NotifyAlive(node(1, "v2")); err != nil || d.vetChecks.Load() != 6 {
		t.Fatalf("after Forget: err %v, %d checks, want 6", err, d.vetChecks.Load())
	}
	if _, ok := pins.Key("b"); !ok {
		t.Fatal("not pinned again after Forget")
	}
	// Past the TTL: checked again (an authority may have changed its answer).
	now = now.Add(vetTTL)
	if err := d.NotifyAlive(node(1, "v2")); err != nil || d.vetChecks.Load() != 7 {
		t.Fatalf("after the TTL: err %v, %d checks, want 7", err, d.vetChecks.Load())
	}
	// Merges vet every node of the list: the same memory serves them.
	if err := d.NotifyMerge([]*memberlist.Node{node(1, "v2"), node(1, "v2")}); err != nil || d.vetChecks.Load() != 7 {
		t.Fatalf("merge: err %v, %d checks, want 7", err, d.vetChecks.Load())
	}
}

// An authority's new key for a name re-pins it: the remembered check no
// longer matches the pin and the old key is refused at once.
func TestVetRepinnedNameCheckedAgain(t *testing.T) {
	pins := identity.NewPins()
	m := &Mesh{cfg: Config{Name: "a", Pins: pins}, log: newTestLogger(&logSink{})}
	d := &delegate{m: m}
	meta, _ := Meta{Protocol: ProtocolMin, DataPort: 6784, Version: "t", SigningKey: bytes.Repeat([]byte{1}, 32)}.Encode()
	n := &memberlist.Node{Name: "b", Addr: net.IPv4(198, 18, 0, 2), Port: 6783, Meta: meta}
	if err := d.vet(n); err != nil {
		t.Fatal(err)
	}
	other := bytes.Repeat([]byte{2}, 32)
	pins.SetAuthority(func(name string) (ed25519.PublicKey, bool, error) { return other, true, nil })
	if err := pins.Check("b", other); err != nil { // as another member's alive message would
		t.Fatal(err)
	}
	if err := d.vet(n); !errors.Is(err, identity.ErrKeyMismatch) {
		t.Fatalf("old key after the authority re-pinned b: %v", err)
	}
}
