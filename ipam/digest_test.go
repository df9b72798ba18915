package ipam

import (
	"context"
	"fmt"
	"slices"
	"testing"
)

func digestOf(p *IPAM) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return ringDigest(p.ring.entries)
}

// A periodic push/pull carries a digest of the ring, not the ring: a few
// hundred bytes and the seeds instead of one entry per peer. Equal rings end there; a
// ring that differs is fetched in full by whichever side sees the
// difference, and both end up equal.
func TestPushPullDigest(t *testing.T) {
	n := newFakeNet(t, 7)
	all := names(100)
	for _, name := range all {
		n.add(name, simRange, Init{Mode: ModeSeed, Seeds: all}, "")
	}
	roundsUntil(t, n, 200, "seeded ring", func() bool { return converged(n.live()) })
	n.pump()
	a, b := n.peers[all[0]], n.peers[all[1]]
	full, dg := a.LocalState(), a.LocalDigest()
	t.Logf("100 peers: full state %d bytes, digest %d bytes", len(full), len(dg))
	// Here the seeds are every peer (a Kubernetes bootstrap), and they stay
	// in the digest for older peers to check the ring ID; the entries go.
	if len(dg)*4 > len(full) {
		t.Fatalf("digest of %d bytes against a full state of %d", len(dg), len(full))
	}
	// Equal rings: nothing more is sent.
	if err := b.MergeState(dg); err != nil {
		t.Fatal(err)
	}
	if q := n.queued(t); len(q) != 0 {
		t.Fatalf("equal rings: %d messages sent after the digest, want none", len(q))
	}

	// a's ring changes while b hears nothing of it (cut off, its broadcasts lost).
	n.partition([]string{a.cfg.Name}, all[1:])
	for i := range 20 {
		if _, err := a.Allocate(context.Background(), fmt.Sprintf("c%d", i), "eth0", ""); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		n.round(false)
	}
	n.mu.Lock()
	n.group = map[string]int{} // linked again, without telling anyone
	n.mu.Unlock()
	if digestOf(a) == digestOf(b) {
		t.Fatal("a's allocations did not change its ring")
	}
	// The push/pull: each side merges the other's digest.
	if err := b.MergeState(a.LocalDigest()); err != nil {
		t.Fatal(err)
	}
	if err := a.MergeState(b.LocalDigest()); err != nil {
		t.Fatal(err)
	}
	asks := 0
	for _, m := range n.queued(t) {
		if m.Type == msgGetState {
			asks++
		}
	}
	if asks != 2 {
		t.Fatalf("%d full states asked after differing digests, want 2 (one each way)", asks)
	}
	n.pump()
	if da, db := digestOf(a), digestOf(b); da != db {
		t.Fatalf("rings still differ after the full states: %s vs %s", da, db)
	}
}

// Several peers' push/pulls with differing digests in the same half second
// (a bootstrap): each of them is asked for its full state, since the first
// one may know no more than this peer. A second digest from the same peer
// within the half second is not asked again.
func TestPushPullDigestAsksEachPeer(t *testing.T) {
	n := newFakeNet(t, 11)
	all := names(5)
	for _, name := range all {
		n.add(name, simRange, Init{Mode: ModeSeed, Seeds: all}, "")
	}
	roundsUntil(t, n, 200, "seeded ring", func() bool { return converged(n.live()) })
	n.pump()
	b := n.peers[all[0]]
	// The others' rings change while b hears nothing of it.
	n.partition([]string{b.cfg.Name}, all[1:])
	for i, name := range all[1:] {
		if _, err := n.peers[name].Allocate(context.Background(), fmt.Sprintf("c%d", i), "eth0", ""); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		n.round(false)
	}
	n.mu.Lock()
	n.group = map[string]int{}
	n.queue = nil
	n.mu.Unlock()
	for _, name := range all[1:] {
		if err := b.MergeState(n.peers[name].LocalDigest()); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.MergeState(n.peers[all[1]].LocalDigest()); err != nil { // the same peer again
		t.Fatal(err)
	}
	asks := 0
	for _, m := range n.queued(t) {
		if m.Type == msgGetState {
			asks++
		}
	}
	if asks != len(all)-1 {
		t.Fatalf("%d full states asked after %d differing digests from %d peers in one half second, want %d",
			asks, len(all), len(all)-1, len(all)-1)
	}
}

// A join carries the digest too: a newcomer with the same ring (seeded
// alike) has nothing more to ask; one without a ring asks the member it
// joined for it and has it after one exchange.
func TestJoinCarriesDigest(t *testing.T) {
	n := newFakeNet(t, 13)
	all := names(100)
	for _, name := range all {
		n.add(name, simRange, Init{Mode: ModeSeed, Seeds: all}, "")
	}
	roundsUntil(t, n, 200, "seeded ring", func() bool { return converged(n.live()) })
	n.pump()
	a, b := n.peers[all[0]], n.peers[all[1]]
	join, full := a.JoinState(), a.LocalState()
	if len(join)*4 > len(full) {
		t.Fatalf("join state of %d bytes, full state %d: want the digest", len(join), len(full))
	}
	if err := b.MergeState(join); err != nil {
		t.Fatal(err)
	}
	if q := n.queued(t); len(q) != 0 {
		t.Fatalf("same ring: %d messages after a join, want none", len(q))
	}
	o := n.add("o", simRange, Init{Mode: ModeObserver}, "")
	if err := o.MergeState(a.JoinState()); err != nil {
		t.Fatal(err)
	}
	q := n.queued(t)
	if len(q) != 1 || q[0].Type != msgGetState {
		t.Fatalf("a newcomer without a ring sent %d messages after its join, want one ask", len(q))
	}
	n.pump()
	o.mu.Lock()
	has := o.ring != nil
	o.mu.Unlock()
	if !has || digestOf(o) != digestOf(a) {
		t.Fatalf("newcomer after its ask: has a ring %v, %s", has, o.Status().State)
	}
}

// Encoding a ring of a thousand signed entries for the wire costs a few
// allocations, not one per entry (a seeded mesh of a thousand agents
// encoded it at every join and every save).
func TestToWireAllocations(t *testing.T) {
	all := names(1000)
	r := newSeededRing(simRange.String(), 1<<20, all)
	for i := range r.entries {
		r.entries[i].Sig[0] = 1
		if i%10 == 0 {
			r.entries[i].Grant = grant{From: all[(i+1)%len(all)], To: r.entries[i].Owner, Version: 1, Reason: reasonDonation}
		}
	}
	allocs := testing.AllocsPerRun(20, func() { toWire(r.entries) })
	if allocs > 8 {
		t.Errorf("toWire of %d entries: %.0f allocations, want at most 8", len(r.entries), allocs)
	}
	back := fromWire(toWire(r.entries))
	for i := range back {
		if back[i] != r.entries[i] {
			t.Fatalf("entry %d: %+v after a round trip, want %+v", i, back[i], r.entries[i])
		}
	}
}

// Ready, polled by probes and the agent's start, allocates nothing in a
// ring of a thousand keys (it built a map of every peer's free space).
func TestReadyAllocatesNothing(t *testing.T) {
	n := newFakeNet(t, 17)
	all := names(1000)
	p := n.add(all[0], simRange, Init{Mode: ModeSeed, Seeds: all}, "")
	if !p.Ready() {
		t.Fatal("a seeded peer with space of its own is not ready")
	}
	if allocs := testing.AllocsPerRun(20, func() { p.Ready() }); allocs > 0 {
		t.Errorf("Ready with %d ring keys: %.0f allocations, want 0", len(all), allocs)
	}
}

// The ring's digest, carried by every join and periodic push/pull at both
// ends, is worked out once per change of the ring, not per exchange (at a
// thousand keys hashing it each time was 5 % of a simulated mesh's CPU),
// and is never stale: after allocations, donations and merges of every
// kind, each peer's kept digest is the digest of its entries.
func TestDigestKeptUntilChange(t *testing.T) {
	n := newFakeNet(t, 11)
	all := names(20)
	for _, name := range all {
		n.add(name, simRange, Init{Mode: ModeSeed, Seeds: all}, "")
	}
	roundsUntil(t, n, 200, "seeded ring", func() bool { return converged(n.live()) })
	check := func(when string) {
		t.Helper()
		for _, name := range all {
			p := n.peers[name]
			p.mu.Lock()
			kept, fresh := p.ring.digest(), ringDigest(p.ring.entries)
			p.mu.Unlock()
			if kept != fresh {
				t.Fatalf("%s: %s keeps digest %s of a ring whose digest is %s", when, name, kept, fresh)
			}
		}
	}
	check("seeded")
	a := n.peers[all[0]]
	a.mu.Lock()
	allocs := testing.AllocsPerRun(100, func() { _ = a.ring.digest() })
	a.mu.Unlock()
	if allocs != 0 {
		t.Fatalf("digest of an unchanged ring: %.0f allocations, want 0 (hashed again)", allocs)
	}
	for i := range 30 {
		p := n.peers[all[i%3]]
		if _, err := p.Allocate(context.Background(), fmt.Sprintf("c%d", i), "eth0", ""); err != nil {
			t.Fatal(err)
		}
	}
	n.pump()
	check("after allocations")
	// A takeover of a peer cut off, merged by the others, and by the peer
	// itself after the heal's push/pull.
	n.partition([]string{all[6]}, append(slices.Clone(all[:6]), all[7:]...))
	if _, err := n.peers[all[5]].RemovePeer(all[6]); err != nil {
		t.Fatal(err)
	}
	n.pump()
	n.heal()
	n.pushPull()
	n.pump()
	check("after a takeover")
}
