package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// fillDisk makes every state write of p fail with ENOSPC, as a full
// --state-dir does, and returns the function that gives the room back.
func fillDisk(t *testing.T, p *IPAM) (free func()) {
	t.Helper()
	open := p.store.openTemp
	p.store.openTemp = func(dir string) (tempFile, error) {
		f, err := open(dir)
		if err != nil {
			return nil, err
		}
		return fullDisk{f.(*os.File)}, nil
	}
	return func() { p.store.openTemp = open }
}

func readState(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, StateFileName))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ownFree is the free count p publishes for itself.
func ownFree(p *IPAM) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.freeByPeerLocked()[p.cfg.Name]
}

// queued decodes the messages waiting in the fake network.
func (n *fakeNet) queued(t *testing.T) []*message {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []*message
	for _, d := range n.queue {
		m, err := decodeMessage(d.msg)
		if err != nil {
			t.Fatalf("queued message: %v", err)
		}
		out = append(out, m)
	}
	return out
}

// A DEL on a full disk fails and keeps the allocation, in memory as on
// disk; the retried DEL, once there is room, releases it for real, and a
// restart does not bring it back.
func TestReleaseOnFullDiskKeepsAllocation(t *testing.T) {
	dir := t.TempDir()
	n := newFakeNet(t, 1)
	p := n.add("a", simRange, seedAB(), dir)
	ctx := context.Background()
	addr, err := p.Allocate(ctx, "c1", "eth0", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Allocate(ctx, "c2", "eth0", ""); err != nil {
		t.Fatal(err)
	}
	before := readState(t, dir)
	freeBefore := ownFree(p)
	free := fillDisk(t, p)

	if err := p.Release("c1", "eth0"); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("release on a full disk: %v, want ENOSPC", err)
	}
	if _, err := p.GC([]Attachment{{"c1", "eth0"}}); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("GC on a full disk: %v, want ENOSPC", err)
	}
	if got := readState(t, dir); got != before {
		t.Fatal("failed release changed the state file")
	}
	as := p.Allocations()
	if len(as) != 2 || as[0].ContainerID != "c1" || as[0].Addr != addr {
		t.Fatalf("failed release changed memory: %v", as)
	}
	if got := ownFree(p); got != freeBefore {
		t.Fatalf("free count moved on a failed release: %d, was %d", got, freeBefore)
	}
	// The address is still taken: a new container gets another one.
	if err := p.Claim(ctx, "c3", "eth0", "", addr); !errors.Is(err, ErrConflict) {
		t.Fatalf("claim of the unreleased %s: %v", addr, err)
	}

	free()
	if err := p.Release("c1", "eth0"); err != nil {
		t.Fatalf("retried release: %v (want it to release, not to find nothing)", err)
	}
	n2 := newFakeNet(t, 2)
	again := n2.add("a", simRange, seedAB(), dir)
	for _, a := range again.Allocations() {
		if a.ContainerID == "c1" {
			t.Fatalf("released allocation came back at restart: %v", a)
		}
	}
	if len(again.Allocations()) != 1 {
		t.Fatalf("after restart: %v, want c2 only", again.Allocations())
	}
}

// donReq is a donation request as p sends it.
func donReq(p *IPAM, ringID string) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.nonce++
	return p.encodeLocked(&message{Type: msgDonReq, RingID: ringID, Nonce: p.nonce})
}

// A donation whose persist fails is undone and never told to anyone: the
// donor keeps owning the block in memory as on disk, and the requester hears
// "no donation" so it asks elsewhere.
func TestDonationOnFullDiskRollsBack(t *testing.T) {
	dir := t.TempDir()
	n := newFakeNet(t, 1)
	a := n.add("a", simRange, Init{Mode: ModeSeed, Seeds: []string{"a"}}, dir)
	o := n.add("o", simRange, Init{Mode: ModeObserver}, "")
	n.pump()
	a.mu.Lock()
	ringID := a.ring.ID
	a.mu.Unlock()
	before := readState(t, dir)
	free := fillDisk(t, a)

	a.HandleMessage(donReq(o, ringID))
	if pf := a.OwnedPrefixes(); !slices.Equal(pf, []netip.Prefix{simRange}) {
		t.Fatalf("donor owns %v after a failed donation, want all of %s", pf, simRange)
	}
	if got := readState(t, dir); got != before {
		t.Fatal("failed donation changed the state file")
	}
	// Memory still owns it: push/pull does not carry it.
	st, err := decodeMessage(a.LocalState())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range st.Entries {
		if e.Owner != "a" {
			t.Fatalf("a's full state gives [%d,%d) to %s after a failed donation", e.Start, e.End, e.Owner)
		}
	}
	var noDon bool
	for _, m := range n.queued(t) {
		if m.From != "a" {
			continue
		}
		if len(m.Entries) > 0 {
			t.Fatalf("a failed donation was gossiped: %s with %v", m.Type, m.Entries)
		}
		noDon = noDon || m.Type == msgNoDon
	}
	if !noDon {
		t.Fatal("the requester was not told that no donation comes")
	}
	// Nor does the next tick gossip it as a changed key of ours.
	n.advance(tickInterval)
	a.PeersChanged()
	a.tick()
	for _, m := range n.queued(t) {
		for _, e := range m.Entries {
			if m.From == "a" && e.Owner != "a" {
				t.Fatalf("a gossips %s as owner of [%d,%d) after a failed donation", e.Owner, e.Start, e.End)
			}
		}
	}
	n.pump()

	free()
	a.HandleMessage(donReq(o, ringID))
	if pf := a.OwnedPrefixes(); slices.Equal(pf, []netip.Prefix{simRange}) {
		t.Fatal("with room on disk again, the donation was still not made")
	}
	if got := readState(t, dir); got == before || !strings.Contains(got, `"o"`) {
		t.Fatal("the donation made is not in the state file")
	}
}

// A hand-over that the taker cannot persist is not confirmed and not kept:
// the leaving peer may hand the same ranges to someone else next.
func TestHandOverOnFullDiskNotKept(t *testing.T) {
	n := newFakeNet(t, 1)
	a := n.add("a", simRange, seedAB(), "")
	dirB := t.TempDir()
	b := n.add("b", simRange, seedAB(), dirB)
	aAddr := netip.MustParseAddr("10.32.0.9")
	free := fillDisk(t, b)

	a.mu.Lock()
	next := a.ring.clone()
	idx, ends := next.ownedBy("a")
	var es []entry
	for k, i := range idx {
		e := next.entries[i]
		es = append(es, a.writeLocked(next, e.Start, ends[k], "b", freeIn(e.Start, ends[k], a.size, nil), reasonHandOver))
	}
	msg := a.encodeLocked(&message{Type: msgHandOver, RingID: next.ID, Entries: toWire(es), Nonce: 7})
	a.mu.Unlock()

	b.HandleMessage(msg)
	if o, _ := b.Owner(aAddr); o != "a" {
		t.Fatalf("b took %s's range over without persisting it (owner %q)", aAddr, o)
	}
	if pf := b.OwnedPrefixes(); len(pf) != 1 || pf[0] != netip.MustParsePrefix("10.32.128.0/17") {
		t.Fatalf("b owns %v after a failed hand-over", pf)
	}
	for _, m := range n.queued(t) {
		if m.Type == msgAck {
			t.Fatal("b confirmed a hand-over it did not persist")
		}
	}
	free()
}

func TestDecodeStateRejectsDuplicatesAndReserved(t *testing.T) {
	alloc := func(id, ifName, addr string) Allocation {
		return Allocation{ContainerID: id, IfName: ifName, Addr: netip.MustParseAddr(addr)}
	}
	state := func(as ...Allocation) []byte {
		b, err := json.Marshal(persisted{Format: stateFormat, Name: "a", Range: "10.32.0.0/24", Allocations: as})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if _, err := decodeState(state(alloc("c1", "eth0", "10.32.0.1"), alloc("c1", "eth1", "10.32.0.2"),
		alloc(HostContainerID, "weft", "10.32.0.3"))); err != nil {
		t.Fatalf("good state refused: %v", err)
	}
	for _, tc := range []struct {
		name  string
		as    []Allocation
		names []string // what the error must mention
	}{
		{"same interface twice", []Allocation{alloc("c1", "eth0", "10.32.0.1"), alloc("c1", "eth0", "10.32.0.2")},
			[]string{"c1/eth0", "10.32.0.2", "10.32.0.1"}},
		{"same address twice", []Allocation{alloc("c1", "eth0", "10.32.0.1"), alloc("c2", "eth0", "10.32.0.1")},
			[]string{"c2/eth0", "c1/eth0", "10.32.0.1"}},
		{"network address", []Allocation{alloc("c1", "eth0", "10.32.0.0")}, []string{"c1/eth0", "10.32.0.0", "reserved"}},
		{"broadcast address", []Allocation{alloc("c1", "eth0", "10.32.0.255")}, []string{"c1/eth0", "10.32.0.255", "reserved"}},
		{"host address twice", []Allocation{alloc(HostContainerID, "weft", "10.32.0.1"), alloc(HostContainerID, "weft", "10.32.0.7")},
			[]string{HostContainerID + "/weft"}},
		{"host address given to a pod", []Allocation{alloc(HostContainerID, "weft", "10.32.0.1"), alloc("c1", "eth0", "10.32.0.1")},
			[]string{"c1/eth0", HostContainerID}},
		{"outside the range", []Allocation{alloc("c1", "eth0", "10.33.0.1")}, []string{"c1/eth0", "outside"}},
		{"no container", []Allocation{alloc("", "eth0", "10.32.0.1")}, []string{"10.32.0.1", "no container ID"}},
	} {
		_, err := decodeState(state(tc.as...))
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		for _, s := range tc.names {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: error %q does not name %q", tc.name, err, s)
			}
		}
	}
}

// A state with a duplicate interface refuses to load at startup, with the
// file's path, rather than silently dropping one of the two addresses.
func TestLoadRefusesDuplicateInterface(t *testing.T) {
	dir := t.TempDir()
	b, _ := json.Marshal(persisted{Format: stateFormat, Name: "a", Range: simRange.String(), Allocations: []Allocation{
		{ContainerID: "c1", IfName: "eth0", Addr: netip.MustParseAddr("10.32.0.1")},
		{ContainerID: "c1", IfName: "eth0", Addr: netip.MustParseAddr("10.32.0.2")}}})
	file := filepath.Join(dir, StateFileName)
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	n := newFakeNet(t, 1)
	_, err := New(n.config("a", simRange, seedAB(), dir))
	if err == nil || !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), "c1/eth0") {
		t.Fatalf("state with a duplicate interface: %v", err)
	}
}
