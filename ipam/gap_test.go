package ipam

import (
	"fmt"
	"testing"
)

// give makes p donate [start,end) of its own space to peer `to` and returns
// the keys written, as the donation's broadcast carries them.
func give(t *testing.T, p *IPAM, start, end uint64, to string) []entry {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	es := p.giveLocked(start, end, to)
	if len(es) == 0 {
		t.Fatalf("%s cannot give [%d,%d) to %s", p.cfg.Name, start, end, to)
	}
	p.publishLocked()
	return es
}

// deliver hands the ring entries es to p as a broadcast of from's.
func deliver(n *fakeNet, p *IPAM, from string, es []entry) {
	p.HandleMessage(n.from(&message{Type: msgRing, From: from, RingID: ringIDOf(p), Entries: toWire(es)}))
}

func complete(p *IPAM) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ring != nil && p.ringCompleteLocked()
}

func ownedTotal(p *IPAM) uint64 {
	var n uint64
	for _, sh := range p.Status().Entries {
		n += sh.Owned
	}
	return n
}

// TestKubeBootstrapAndReclaim's flake (a host's ring lacked a /17 for 30 s,
// maketest2.log): seed a gave [32768,49152) to c, then [16384,32768) to b.
// b missed the first donation's broadcast, then gave the tail of its block to
// d. b's key before 32768 is now d's, given by b, so the old rule ("a new key
// is created by the owner of the key before it, or by who gave that key")
// refused a's key 32768 for ever: from a's rebroadcasts, from c's, and from
// every push/pull's full state. The ring stayed split.
func TestGapAfterResplitIsRepaired(t *testing.T) {
	n := newFakeNet(t, 3)
	seed := Init{Mode: ModeSeed, Seeds: []string{"a"}}
	a := n.add("a", simRange, seed, "")
	b := n.add("b", simRange, seed, "")
	c := n.add("c", simRange, seed, "")
	d := n.add("d", simRange, seed, "")

	toC := give(t, a, 32768, 49152, "c")
	deliver(n, c, "a", toC)
	deliver(n, d, "a", toC)
	toB := give(t, a, 16384, 32768, "b")
	for _, p := range []*IPAM{b, c, d} { // b hears of its own donation only
		deliver(n, p, "a", toB)
	}
	toD := give(t, b, 28672, 32768, "d")
	for _, p := range []*IPAM{a, c, d} {
		deliver(n, p, "b", toD)
	}
	// c writes its key again (an allocation's new free count), as the
	// e2e test does on every host: that broadcast reaches b too.
	c.mu.Lock()
	i, _ := c.ring.find(32768)
	ce := c.writeLocked(c.ring, 32768, 49152, "c", c.ring.entries[i].Free-1, reasonNone)
	c.mu.Unlock()
	for _, p := range []*IPAM{a, b, d} {
		deliver(n, p, "c", []entry{ce})
	}
	n.pump()
	if !complete(a) || !complete(c) || !complete(d) {
		t.Fatal("the peers that heard every broadcast should hold a complete ring")
	}
	if complete(b) {
		t.Fatal("b should lack [32768,65536) before any repair: the scenario is wrong")
	}

	// The repair is bounded: a few ticks of the background work, no
	// periodic push/pull (it comes every 15 s in a real mesh).
	deadline := 10
	for r := 0; r < deadline && !converged(n.live()); r++ {
		n.round(false)
	}
	if got := ownedTotal(b); got != 1<<16 || !converged(n.live()) {
		t.Fatalf("b's ring not repaired within %d ticks: owners hold %d of %d addresses", deadline, got, 1<<16)
	}
	checkSafety(t, n.live())
}

// A full state repairs every key a peer missed in one merge, even when the
// keys it lacks follow one another: each new key may be created by the owner
// of the key before it, and that key may itself be new in the same batch.
// Before, each merge added only the first key of such a chain, and a host
// that had missed three donations needed three push/pulls, 15 s apart.
func TestFullStateFillsChainInOneMerge(t *testing.T) {
	n := newFakeNet(t, 4)
	seed := Init{Mode: ModeSeed, Seeds: []string{"a"}}
	a := n.add("a", simRange, seed, "")
	e := n.add("e", simRange, seed, "")
	give(t, a, 32768, 49152, "b") // [49152,65536) stays a's
	give(t, a, 16384, 32768, "c") // [0,16384) stays a's
	give(t, a, 49152, 57344, "d") // [57344,65536) stays a's
	toE := give(t, a, 8192, 16384, "e")
	deliver(n, e, "a", toE) // e hears of its own donation only
	if complete(e) {
		t.Fatal("e should lack [16384,65536): the scenario is wrong")
	}
	if err := e.MergeState(a.LocalState()); err != nil {
		t.Fatal(err)
	}
	if !converged([]*IPAM{a, e}) {
		t.Fatalf("one full state did not complete e's ring: owners hold %d of %d addresses", ownedTotal(e), 1<<16)
	}
}

// Gaps are filled only from a state this peer asked for, only where it
// knows no owner, and only with entries whose signatures verify.
func TestGapFillTrustsOnlyAskedValidGapEntries(t *testing.T) {
	n := newFakeNet(t, 5)
	seed := Init{Mode: ModeSeed, Seeds: []string{"a"}}
	a := n.add("a", simRange, seed, "")
	b := n.add("b", simRange, seed, "")
	mallory := testSigner("mallory")
	n.pin("mallory", mallory.Public())
	n.pin("c", testSigner("c").Public())
	give(t, a, 32768, 49152, "c") // b misses it
	deliver(n, b, "a", give(t, a, 16384, 32768, "b"))
	give(t, b, 28672, 32768, "d") // b's ring now has a gap at 32768
	id := ringIDOf(b)
	state := func(es ...entry) []byte {
		return n.forge(mallory, &message{Type: msgState, From: "mallory", RingID: id, Range: simRange.String(),
			Size: 1 << 16, Seeds: []string{"a"}, Entries: toWire(es)})
	}
	theft := signed(mallory, id, entry{Start: 0, End: 16384, Owner: "mallory", Version: 1 << 40, Free: 10})
	gapKey := signed(mallory, id, entry{Start: 32768, End: 65536, Owner: "mallory", Version: 1, Free: 10})
	forgedC := signed(mallory, id, entry{Start: 32768, End: 49152, Owner: "c", Version: 1, Free: 10,
		Grant: grant{From: "a", To: "c", Version: 1, Reason: reasonDonation}})
	gapState := func() (struct{}, bool) {
		b.mu.Lock()
		defer b.mu.Unlock()
		_, ok := b.ring.find(32768)
		return struct{}{}, ok
	}

	// Not asked: a state's new keys in the gap are refused.
	_ = b.MergeState(state(gapKey))
	if _, ok := gapState(); ok {
		t.Fatal("an unasked state filled a gap")
	}
	// Asked: an entry b holds is not moved, a bad signature not taken.
	b.mu.Lock()
	b.askStateLocked("mallory", n.now())
	b.outbox = nil
	b.mu.Unlock()
	_ = b.MergeState(state(theft, forgedC))
	if o := ownerOf(t, b, "10.32.0.5"); o != "a" {
		t.Fatalf("an asked state moved a's range to %q", o)
	}
	if _, ok := gapState(); ok {
		t.Fatal("a gap entry with a forged signature was taken")
	}
	// One ask, one trusted answer: the next state is merged as any.
	_ = b.MergeState(state(gapKey))
	if _, ok := gapState(); ok {
		t.Fatal("a second, unasked state filled a gap")
	}
	// A signed entry from an asked state fills it.
	b.mu.Lock()
	b.askStateLocked("mallory", n.now())
	b.outbox = nil
	b.mu.Unlock()
	_ = b.MergeState(state(gapKey))
	if _, ok := gapState(); !ok {
		t.Fatal("an asked state's valid entry did not fill the gap")
	}
}

// The e2e test's bootstrap in miniature, over lossy, reordering gossip: one
// seed owns the range, four peers each allocate (a donation each, donors
// splitting again), and a third of the broadcasts are lost. Without any
// push/pull, no ring may keep a gap (addresses of no known owner) for more
// than a few ticks; with one push/pull round, all agree on every owner.
// Before, a gap lasted until a push/pull, and after a re-split for ever.
func TestLossyBootstrapConverges(t *testing.T) {
	const seeds, ticks = 40, 15 // 15 ticks of 200 ms: 3 s
	for s := uint64(1); s <= seeds; s++ {
		n := newFakeNet(t, s)
		n.loss = 0.35
		init := Init{Mode: ModeSeed, Seeds: []string{"a"}}
		for _, name := range []string{"a", "b", "c", "d", "e"} {
			n.add(name, simRange, init, "")
		}
		for _, p := range n.live()[1:] {
			if _, err := n.allocatePumping(t, p, "pod-"+p.cfg.Name); err != nil {
				t.Fatalf("seed %d: %s: allocate: %v", s, p.cfg.Name, err)
			}
		}
		// More allocations: peers short of space ask again, and donors
		// may split what they were given.
		for _, p := range n.live() {
			for k := range 3 {
				if _, err := n.allocatePumping(t, p, fmt.Sprintf("pod2-%s-%d", p.cfg.Name, k)); err != nil {
					t.Fatalf("seed %d: %s: allocate: %v", s, p.cfg.Name, err)
				}
			}
		}
		for r := 0; r < ticks && !allComplete(n.live()); r++ {
			n.round(false)
		}
		for _, p := range n.live() {
			if !complete(p) {
				for _, q := range n.live() {
					q.mu.Lock()
					t.Logf("%s: gapAsks %d %+v", q.cfg.Name, q.gapAsks, q.ring.entries)
					q.mu.Unlock()
				}
				t.Fatalf("seed %d: %s's ring has a gap after %d ticks without push/pull: owners hold %d of %d addresses",
					s, p.cfg.Name, ticks, ownedTotal(p), 1<<16)
			}
		}
		n.round(true)
		for r := 0; r < ticks && !sameOwners(n.live()); r++ {
			n.round(false)
		}
		if !sameOwners(n.live()) || !allComplete(n.live()) {
			t.Fatalf("seed %d: owners differ after a push/pull round and %d ticks", s, ticks)
		}
		checkSafety(t, n.live())
	}
}

func allComplete(ps []*IPAM) bool {
	for _, p := range ps {
		if !complete(p) {
			return false
		}
	}
	return true
}
