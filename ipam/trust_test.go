package ipam

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Regression tests of issue 15: each attack below worked on the code before
// signed messages and owner-only writes (see site/security.md).

// signed is e signed by signer for ring id.
func signed(signer Signer, id string, e entry) entry {
	if !e.Grant.isZero() {
		copy(e.Grant.Sig[:], signer.Sign(grantPayload(id, e.Start, e.Grant)))
	}
	copy(e.Sig[:], signer.Sign(entryPayload(id, e)))
	return e
}

func ringIDOf(p *IPAM) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ring.ID
}

func keysOf(p *IPAM) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ring.entries)
}

func ownerOf(t *testing.T, p *IPAM, addr string) string {
	t.Helper()
	o, _ := p.Owner(netip.MustParseAddr(addr))
	return o
}

// A pinned member (a password holder, or in plaintext anyone who joins)
// cannot move another peer's range by any message, relayed or direct.
func TestRangeTheftRefused(t *testing.T) {
	n := newFakeNet(t, 1)
	a := n.add("a", simRange, seedAB(), "")
	b := n.add("b", simRange, seedAB(), "")
	mallory := testSigner("mallory")
	n.pin("mallory", mallory.Public())
	id := ringIDOf(a)
	half := uint64(1 << 15)
	n.advance(selfTakeoverWindow + time.Second) // a has been running a while

	attacks := map[string][]entry{
		"high version": {signed(mallory, id, entry{Start: 0, End: half, Owner: "mallory", Version: 1 << 40, Free: 100})},
		"forged donation": {signed(mallory, id, entry{Start: 0, End: half, Owner: "mallory", Version: 1 << 40, Free: 100,
			Grant: grant{From: "a", To: "mallory", Version: 1 << 40, Reason: reasonDonation}})},
		"takeover of a live peer": {signed(mallory, id, entry{Start: 0, End: half, Owner: "mallory", Version: 1 << 40, Free: 100,
			Grant: grant{From: "a", To: "mallory", Version: 1 << 40, Reason: reasonTakeover}})},
		"new key inside a's range":          {signed(mallory, id, entry{Start: 4, End: 64, Owner: "mallory", Version: 1, Free: 60})},
		"a's key rewritten by mallory as a": {signed(mallory, id, entry{Start: 0, End: 8, Owner: "a", Version: 99, Free: 1})},
	}
	for name, es := range attacks {
		for _, p := range []*IPAM{a, b} {
			p.HandleMessage(n.forge(mallory, &message{Type: msgRing, From: "mallory", RingID: id, Entries: toWire(es)}))
			// The same as a full state, as push/pull would carry it.
			st := &message{Type: msgState, From: "mallory", RingID: id, Range: simRange.String(), Size: 1 << 16,
				Seeds: []string{"a", "b"}, Entries: toWire(es)}
			_ = p.MergeState(n.forge(mallory, st))
			// Relayed in b's name but signed by mallory.
			p.HandleMessage(n.forge(mallory, &message{Type: msgRing, From: "b", RingID: id, Entries: toWire(es)}))
			if o := ownerOf(t, p, "10.32.0.5"); o != "a" {
				t.Fatalf("%s: %s believes 10.32.0.5 is owned by %q", name, p.cfg.Name, o)
			}
		}
	}
	// The honest owner's write still goes through, relayed by anyone.
	a.mu.Lock()
	own := a.writeLocked(a.ring, 0, half, "a", 123, reasonNone)
	a.mu.Unlock()
	b.MergeState(n.forge(mallory, &message{Type: msgState, From: "mallory", RingID: id, Range: simRange.String(), Size: 1 << 16,
		Seeds: []string{"a", "b"}, Entries: toWire([]entry{own})}))
	b.mu.Lock()
	got := b.ring.entries[0]
	b.mu.Unlock()
	if got != own {
		t.Fatalf("a's own write relayed by a third peer was not taken: %+v", got)
	}
}

// Versions and rounds never wrap, and absurd ones are refused on receipt.
func TestVersionOverflowRefused(t *testing.T) {
	dir := t.TempDir()
	n := newFakeNet(t, 1)
	a := n.add("a", simRange, seedAB(), dir)
	b := n.add("b", simRange, seedAB(), "")
	id := ringIDOf(a)
	// a's own key at 2^64-1, even signed by a itself, is refused whole.
	huge := signed(testSigner("a"), id, entry{Start: 0, End: 1 << 15, Owner: "a", Version: math.MaxUint64, Free: 1})
	a.HandleMessage(n.from(&message{Type: msgRing, From: "b", RingID: id, Entries: toWire([]entry{huge})}))
	b.HandleMessage(n.from(&message{Type: msgRing, From: "a", RingID: id, Entries: toWire([]entry{huge})}))
	for _, p := range []*IPAM{a, b} {
		p.mu.Lock()
		v, err := p.ring.entries[0].Version, p.ring.validate()
		p.mu.Unlock()
		if v > maxVersion || err != nil {
			t.Fatalf("%s: version %d, ring %v", p.cfg.Name, v, err)
		}
	}
	// A key at the bound saturates instead of wrapping to 0: the ring stays
	// valid, is saved, and loads again.
	a.mu.Lock()
	a.ring.entries[0].Version = maxVersion
	a.mu.Unlock()
	if _, err := a.Allocate(context.Background(), "c1", "eth0", ""); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	v, err := a.ring.entries[0].Version, a.ring.validate()
	a.mu.Unlock()
	if v != maxVersion || err != nil {
		t.Fatalf("after a write at the bound: version %d, ring %v", v, err)
	}
	if _, err := New(n.config("a", simRange, seedAB(), dir)); err != nil {
		t.Fatalf("state saved at the bound does not load: %v", err)
	}
	if got := takeoverVersion(maxVersion - 1); got != maxVersion {
		t.Fatalf("takeover version at the bound: %d", got)
	}
	// Ballot rounds: an absurd one is refused, and ours saturates.
	c := n.add("c", simRange, Init{Mode: ModeConsensus, Quorum: 3}, "")
	c.HandleMessage(n.from(&message{Type: msgPrepare, From: "b", Ballot: &ballot{Round: math.MaxUint64, Proposer: "b"}}))
	c.mu.Lock()
	promised := c.acceptor.Promised
	c.maxRound = maxRound
	c.startProposalLocked(n.now(), []string{"a", "b"})
	round := c.maxRound
	c.mu.Unlock()
	if promised.Round != 0 || round != maxRound {
		t.Fatalf("promised %+v after an absurd ballot; next round %d", promised, round)
	}
}

// A 2.7 MB state of 60k keys from a pinned member is refused in bounded
// time, and no message grows the ring beyond its cap.
func TestRingBloatCappedAndBounded(t *testing.T) {
	n := newFakeNet(t, 1)
	rng := netip.MustParsePrefix("10.32.0.0/12")
	seeds := Init{Mode: ModeSeed, Seeds: []string{"a", "b", "mallory"}}
	a := n.add("a", rng, seeds, "")
	n.add("b", rng, seeds, "")
	mallory := testSigner("mallory")
	n.pin("mallory", mallory.Public())
	id := ringIDOf(a)
	a.mu.Lock()
	ms, me := a.ring.entries[2].Start, a.ring.entries[2].End // mallory's seeded range
	a.mu.Unlock()

	// 60k keys, each a valid split of mallory's own range: the worst a
	// member can send about what it owns.
	var es []entry
	limit := ringKeysBase + ringKeysPerPeer*3
	for i := range uint64(60_000) {
		start := ms + i*4
		e := entry{Start: start, End: start + 4, Owner: "mallory", Version: 2, Free: 4}
		if i < 3*uint64(limit) {
			e = signed(mallory, id, e) // the rest are refused before any check of theirs
		} else {
			e.Sig = es[0].Sig
		}
		es = append(es, e)
	}
	if es[len(es)-1].End > me {
		t.Fatal("test range too small")
	}
	st := &message{Type: msgState, From: "mallory", RingID: id, Range: rng.String(), Size: 1 << 20,
		Seeds: seeds.Seeds, Entries: toWire(es)}
	buf := n.forge(mallory, st)
	before := keysOf(a)
	start := time.Now()
	err := a.MergeState(buf)
	took := time.Since(start)
	t.Logf("hostile state of %d bytes, %d keys: %v in %v", len(buf), len(es), err, took)
	if err == nil || keysOf(a) != before {
		t.Fatalf("60k-key state accepted: %v, %d keys", err, keysOf(a))
	}
	if took > 2*time.Second { // ≤ 100 ms on an idle machine (BenchmarkHostileState)
		t.Fatalf("refusing it took %v", took)
	}
	// Under the byte bound, many messages of splits still stop at the cap.
	for off := 0; off < 40; off++ {
		chunk := es[off*maxBroadcastEntries : (off+1)*maxBroadcastEntries]
		for k := 0; k < 4; k++ {
			a.HandleMessage(n.forge(mallory, &message{Type: msgRing, From: "mallory", RingID: id, Entries: toWire(chunk)}))
		}
	}
	for i := 0; i < 3; i++ {
		st.Entries = toWire(es[i*limit : (i+1)*limit])
		_ = a.MergeState(n.forge(mallory, st))
	}
	if k := keysOf(a); k > 2*limit {
		t.Fatalf("ring grew to %d keys, cap %d", k, 2*limit)
	}
	// Per message: no more than maxBroadcastEntries in a delta, maxSeeds seeds.
	big := toWire(es[:maxBroadcastEntries+1])
	if _, err := decodeMessage(n.forge(mallory, &message{Type: msgRing, From: "mallory", RingID: id, Entries: big})); err == nil {
		t.Fatal("ring delta of 65 entries accepted")
	}
	var many []string
	for i := range maxSeeds + 1 {
		many = append(many, fmt.Sprintf("s%05d", i))
	}
	if _, err := decodeMessage(n.forge(mallory, &message{Type: msgState, From: "mallory", RingID: "x", Range: "r", Size: 1, Seeds: many})); err == nil {
		t.Fatal("1025 seeds accepted")
	}
}

// Made-up senders leave no trace; a forgotten peer's entries go.
func TestSenderMapsBounded(t *testing.T) {
	n := newFakeNet(t, 1)
	a := n.add("a", simRange, seedAB(), "")
	n.add("b", simRange, seedAB(), "")
	id := ringIDOf(a)
	for i := range 10_000 {
		name := fmt.Sprintf("fake%05d", i)
		typ := msgNoDon
		if i%2 == 1 {
			typ = msgDonReq
		}
		a.HandleMessage(n.forge(testSigner(name), &message{Type: typ, From: name, RingID: id, Nonce: 1}))
	}
	a.HandleMessage(n.from(&message{Type: msgNoDon, From: "b"}))
	a.mu.Lock()
	senders, refused := len(a.senders), len(a.refused)
	a.mu.Unlock()
	if senders != 1 || refused != 1 {
		t.Fatalf("after 10,000 made-up senders: %d senders, %d refusals kept; want only b's", senders, refused)
	}
	a.ForgetPeer("b")
	a.mu.Lock()
	senders, refused = len(a.senders), len(a.refused)
	a.mu.Unlock()
	if senders != 0 || refused != 0 {
		t.Fatalf("forgotten peer kept: %d senders, %d refusals", senders, refused)
	}
}

// One captured donation request replayed 12 times gives one donation; a
// request from a peer that has free space gives none.
func TestReplayedDonationRequestGivesOneDonation(t *testing.T) {
	n := newFakeNet(t, 1)
	rng := netip.MustParsePrefix("10.32.0.0/24")
	a := n.add("a", rng, seedAB(), "")
	b := n.add("b", rng, seedAB(), "")
	ctx := context.Background()
	for i := range 127 { // all of b's half but the reserved broadcast address
		if _, err := b.Allocate(ctx, fmt.Sprintf("c%d", i), "eth0", ""); err != nil {
			t.Fatal(err)
		}
	}
	n.pump()
	b.mu.Lock()
	b.askDonationLocked()
	out := b.outbox
	b.outbox = nil
	b.mu.Unlock()
	var req []byte
	for _, o := range out {
		if m, err := decodeMessage(o.msg); err == nil && m.Type == msgDonReq && o.to == "a" {
			req = o.msg
		}
	}
	if req == nil {
		t.Fatal("b asked nobody for a donation")
	}
	freeOfA := func() uint64 {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.freeByPeerLocked()["a"]
	}
	before := freeOfA()
	a.HandleMessage(req)
	after, keys := freeOfA(), keysOf(a)
	if after >= before {
		t.Fatalf("no donation: a's free space %d -> %d", before, after)
	}
	for range 11 {
		a.HandleMessage(req)
	}
	if got := freeOfA(); got != after || keysOf(a) != keys {
		t.Fatalf("12 deliveries of one request: a's free space %d -> %d -> %d, keys %d -> %d", before, after, got, keys, keysOf(a))
	}
	// The same request id again under a new sequence number: answered once.
	m, _ := decodeMessage(req)
	m.Entries = nil
	a.HandleMessage(n.from(m))
	// A new request while b has the donated space: refused.
	m.Nonce++
	a.HandleMessage(n.from(m))
	if got := freeOfA(); got != after {
		t.Fatalf("a donated again to a peer that has space: %d -> %d", after, got)
	}
}

// rmpeer refuses a suspect peer, and every receiver refuses a takeover of a
// peer it sees alive or suspect.
func TestRmpeerOfSuspectPeerRefused(t *testing.T) {
	seeds := Init{Mode: ModeSeed, Seeds: []string{"a", "b", "c"}}
	n := newFakeNet(t, 1)
	a := n.add("a", simRange, seeds, "")
	n.add("b", simRange, seeds, "")
	n.add("c", simRange, seeds, "")
	n.mu.Lock()
	n.suspect["b"] = true
	n.mu.Unlock()
	if got, err := a.RemovePeer("b"); !errors.Is(err, ErrPeerSuspect) || got != 0 {
		t.Fatalf("rmpeer of a suspect peer: %d, %v", got, err)
	}
	bAddr := "10.32.100.1"
	if o := ownerOf(t, a, bAddr); o != "b" {
		t.Fatalf("b's range owned by %q", o)
	}

	// c, in another view where b is dead, takes b's ranges over.
	n2 := newFakeNet(t, 2)
	n2.add("a", simRange, seeds, "")
	c2 := n2.add("c", simRange, seeds, "")
	n2.pin("b", testSigner("b").Public())
	if got, err := c2.RemovePeer("b"); err != nil || got == 0 {
		t.Fatalf("rmpeer of a dead peer: %d, %v", got, err)
	}
	n2.mu.Lock()
	q := n2.queue
	n2.mu.Unlock()
	for _, d := range q {
		a.HandleMessage(d.msg)
	}
	_ = a.MergeState(c2.LocalState())
	if o := ownerOf(t, a, bAddr); o != "b" {
		t.Fatalf("a accepted a takeover of b, which it sees suspect: owner %q", o)
	}
	// Once b is dead in a's view too, the same takeover is accepted, and a
	// forgets b: its replay state, and (through PeerGone) its pinned key.
	var gone []string
	a.cfg.PeerGone = func(name string) { gone = append(gone, name) }
	a.HandleMessage(n.from(&message{Type: msgNoDon, From: "b"})) // a keeps b's replay state
	a.mu.Lock()
	_, had := a.senders["b"]
	a.mu.Unlock()
	if !had {
		t.Fatal("b's message not kept")
	}
	n.mu.Lock()
	n.down["b"] = true
	n.mu.Unlock()
	_ = a.MergeState(c2.LocalState())
	if o := ownerOf(t, a, bAddr); o != "c" {
		t.Fatalf("takeover of a dead peer not accepted: owner %q", o)
	}
	a.mu.Lock()
	_, kept := a.senders["b"]
	a.mu.Unlock()
	if len(gone) != 1 || gone[0] != "b" || kept {
		t.Fatalf("after b's ranges were taken over: PeerGone %v, replay state kept %v", gone, kept)
	}
}

// The incarnation survives restarts, so a restarted peer's messages are new
// and its old ones stay replays.
func TestIncarnationPersists(t *testing.T) {
	dir := t.TempDir()
	n := newFakeNet(t, 1)
	a := n.add("a", simRange, seedAB(), dir)
	b := n.add("b", simRange, seedAB(), "")
	old := a.LocalState()
	a2, err := New(n.config("a", simRange, seedAB(), dir))
	if err != nil {
		t.Fatal(err)
	}
	if a2.inc <= a.inc {
		t.Fatalf("incarnation %d after a restart, was %d", a2.inc, a.inc)
	}
	if err := b.MergeState(a2.LocalState()); err != nil {
		t.Fatalf("restarted peer's state: %v", err)
	}
	if err := b.MergeState(old); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("state of the previous incarnation: %v", err)
	}
}

// A message signed by no pinned key does nothing.
func TestUnpinnedSenderIgnored(t *testing.T) {
	n := newFakeNet(t, 1)
	a := n.add("a", simRange, seedAB(), "")
	eve := testSigner("eve") // never pinned
	id := ringIDOf(a)
	e := signed(eve, id, entry{Start: 0, End: 1 << 15, Owner: "eve", Version: 1 << 20, Free: 9})
	err := a.MergeState(n.forge(eve, &message{Type: msgState, From: "eve", RingID: id, Range: simRange.String(),
		Size: 1 << 16, Seeds: []string{"a", "b"}, Entries: toWire([]entry{e})}))
	if !errors.Is(err, ErrUnauthenticated) || ownerOf(t, a, "10.32.0.5") != "a" {
		t.Fatalf("unpinned sender: %v, owner %q", err, ownerOf(t, a, "10.32.0.5"))
	}
}

// A state file of the build before signed entries loads, and this peer's
// own keys are signed again at once, so that its peers accept them.
func TestOldStateFileLoadsAndIsSigned(t *testing.T) {
	dir := t.TempDir()
	r := newSeededRing(simRange.String(), 1<<16, []string{"a", "b"})
	r.entries[0].Version, r.entries[0].Free = 5, 100 // written by the old build: unsigned
	old := fmt.Sprintf(`{"format":1,"name":"a","range":%q,"ring":{"id":%q,"seeds":["a","b"],"size":65536,"entries":[`+
		`{"s":0,"x":32768,"o":"a","v":5,"fr":100},{"s":32768,"x":65536,"o":"b","v":1,"fr":32767}]},"allocations":[]}`,
		simRange.String(), r.ID)
	if err := os.WriteFile(filepath.Join(dir, StateFileName), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	n := newFakeNet(t, 1)
	a := n.add("a", simRange, seedAB(), dir)
	b := n.add("b", simRange, seedAB(), "")
	a.mu.Lock()
	e := a.ring.entries[0]
	a.mu.Unlock()
	if e.Version <= 5 || e.Sig == ([sigSize]byte{}) {
		t.Fatalf("own key not signed again: %+v", e)
	}
	if err := b.MergeState(a.LocalState()); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	got := b.ring.entries[0]
	b.mu.Unlock()
	if got != e {
		t.Fatalf("b did not take a's re-signed key: %+v", got)
	}
}
