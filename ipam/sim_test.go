package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var simRange = netip.MustParsePrefix("10.32.0.0/16")

func names(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("p%03d", i)
	}
	return out
}

// roundsUntil runs rounds (with push/pull) until cond holds, checking safety
// after each; it returns the number of rounds taken.
func roundsUntil(t *testing.T, n *fakeNet, limit int, what string, cond func() bool) int {
	t.Helper()
	for r := 1; r <= limit; r++ {
		n.round(true)
		checkSafety(t, n.live())
		if cond() {
			return r
		}
	}
	t.Fatalf("%s: not reached after %d rounds", what, limit)
	return 0
}

func TestSim100Peers(t *testing.T) {
	start := time.Now()
	n := newFakeNet(t, 42)
	// Each round is a 200 ms tick; 1 in 20 peers push/pulls per round, as with
	// memberlist's push/pull every ~4 s; a tenth of broadcasts are lost.
	n.loss, n.dup, n.pushPullShare = 0.1, 0.05, 0.05
	all := names(100)
	for _, name := range all {
		n.add(name, simRange, Init{Mode: ModeConsensus, Quorum: 100}, "")
	}
	rounds := roundsUntil(t, n, 200, "consensus bootstrap", func() bool { return converged(n.live()) })
	t.Logf("100 peers: consensus ring converged in %d rounds (%v simulated, %v wall)", rounds, time.Duration(rounds)*tickInterval, time.Since(start))
	for _, p := range n.live() {
		if !p.Ready() {
			t.Fatalf("%s not ready after bootstrap: %s", p.cfg.Name, p.Status().State)
		}
	}

	// Every peer allocates; nobody duplicates.
	ctx := context.Background()
	for _, p := range n.live() {
		for i := range 3 {
			if _, err := p.Allocate(ctx, fmt.Sprintf("c-%s-%d", p.cfg.Name, i), "eth0", ""); err != nil {
				t.Fatalf("%s allocate: %v", p.cfg.Name, err)
			}
		}
	}
	checkSafety(t, n.live())

	// One peer needs more than its share: donations.
	hungry := n.peers["p007"]
	share := (1 << 16) / 100
	donatedStart := time.Now()
	for i := range share + 100 {
		if _, err := n.allocatePumping(t, hungry, fmt.Sprintf("big-%d", i)); err != nil {
			t.Fatalf("allocation %d beyond the share: %v", i, err)
		}
	}
	t.Logf("p007 allocated %d addresses (share %d) with donations in %v", share+103, share, time.Since(donatedStart))
	checkSafety(t, n.live())

	// Random partitions into 2-4 groups, healed after a while; every peer
	// keeps allocating, one hungry peer per group needs donations.
	for cycle := range 4 {
		groups := make([][]string, 2+n.rng.IntN(3))
		for _, name := range all {
			g := n.rng.IntN(len(groups))
			groups[g] = append(groups[g], name)
		}
		n.partition(groups...)
		for r := range 5 {
			for _, p := range n.live() {
				if _, err := p.Allocate(ctx, fmt.Sprintf("part%d-%s-%d", cycle, p.cfg.Name, r), "eth0", ""); err != nil {
					t.Fatalf("%s allocate in partition: %v", p.cfg.Name, err)
				}
			}
			n.round(true)
			checkSafety(t, n.live())
		}
		for g, members := range groups {
			if len(members) < 2 {
				continue
			}
			p := n.peers[members[0]]
			for i := range 150 {
				if _, err := n.allocatePumping(t, p, fmt.Sprintf("hungry%d-%d-%d", cycle, g, i)); err != nil {
					t.Fatalf("%s allocate in partition (donation): %v", p.cfg.Name, err)
				}
			}
			checkSafety(t, n.live())
		}
		n.heal()
		owners := roundsUntil(t, n, 200, "heal (owners)", func() bool { return sameOwners(n.live()) })
		healed := owners + roundsUntil(t, n, 200, "heal", func() bool { return converged(n.live()) })
		t.Logf("100 peers, cycle %d: %d groups; after the heal every peer agrees on every owner in %d rounds, rings (free counts too) identical in %d",
			cycle, len(groups), owners, healed)
	}

	// A peer dies; rmpeer takes its range over.
	dead := "p050"
	deadRanges := n.peers[dead].OwnedPrefixes()
	n.mu.Lock()
	n.down[dead] = true
	n.mu.Unlock()
	rescuer := n.peers["p000"]
	if _, err := n.peers["p001"].RemovePeer("p002"); !errors.Is(err, ErrPeerAlive) {
		t.Fatalf("rmpeer of a live peer: %v, want ErrPeerAlive", err)
	}
	got, err := rescuer.RemovePeer(dead)
	if err != nil || got == 0 {
		t.Fatalf("rmpeer %s: %d, %v", dead, got, err)
	}
	if again, err := rescuer.RemovePeer(dead); again != 0 || err != nil {
		t.Fatalf("second rmpeer: %d, %v, want 0, nil", again, err)
	}
	roundsUntil(t, n, 200, "rmpeer spread", func() bool { return converged(n.live()) })
	for _, pf := range deadRanges {
		for _, p := range n.live() {
			if o, ok := p.Owner(pf.Addr()); !ok || o != rescuer.cfg.Name {
				t.Fatalf("%s sees %s owned by %q, want %s", p.cfg.Name, pf, o, rescuer.cfg.Name)
			}
		}
	}
	t.Logf("reclaimed %d addresses of %s; sim wall time %v", got, dead, time.Since(start))
}

// The acceptance scenario: consensus=3 started as a 1|2 partition.
func TestConsensusMinorityDoesNotAllocate(t *testing.T) {
	n := newFakeNet(t, 7)
	a := n.add("a", simRange, Init{Mode: ModeConsensus, Quorum: 3}, "")
	b := n.add("b", simRange, Init{Mode: ModeConsensus, Quorum: 3}, "")
	c := n.add("c", simRange, Init{Mode: ModeConsensus, Quorum: 3}, "")
	n.partition([]string{"a"}, []string{"b", "c"})
	roundsUntil(t, n, 100, "pair bootstrap", func() bool { return converged([]*IPAM{b, c}) })
	for range 30 {
		n.round(true)
	}
	if a.Ready() {
		t.Fatal("lone peer is ready without a quorum")
	}
	if st := a.Status().State; !strings.HasPrefix(st, "awaiting consensus (1 of 3 known, quorum 2)") {
		t.Fatalf("lone peer state %q", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := a.Allocate(ctx, "x", "eth0", ""); !errors.Is(err, ErrNotReady) {
		t.Fatalf("lone peer allocate: %v, want ErrNotReady", err)
	}
	if _, err := b.Allocate(context.Background(), "y", "eth0", ""); err != nil {
		t.Fatalf("pair allocate: %v", err)
	}
	n.heal()
	roundsUntil(t, n, 100, "heal", func() bool { return converged([]*IPAM{a, b, c}) })
	if addr, err := n.allocatePumping(t, a, "x"); err != nil || !addr.IsValid() {
		t.Fatalf("formerly lone peer allocate after heal (donation): %v %v", addr, err)
	}
	checkSafety(t, []*IPAM{a, b, c})
}

func TestSeedRingsMismatchRefuse(t *testing.T) {
	n := newFakeNet(t, 3)
	a := n.add("a", simRange, Init{Mode: ModeSeed, Seeds: []string{"a"}}, "")
	b := n.add("b", simRange, Init{Mode: ModeSeed, Seeds: []string{"b"}}, "")
	err := a.MergeState(b.LocalState())
	if !errors.Is(err, ErrRingMismatch) || !strings.Contains(err.Error(), "weft reset") {
		t.Fatalf("merge of a differently seeded ring: %v", err)
	}
	if o, _ := a.Owner(netip.MustParseAddr("10.32.0.1")); o != "a" {
		t.Fatalf("mismatch changed ownership: %q", o)
	}
	// Same seeds, no talking: identical rings.
	c := n.add("c", simRange, Init{Mode: ModeSeed, Seeds: []string{"c", "d"}}, "")
	d := n.add("d", simRange, Init{Mode: ModeSeed, Seeds: []string{"d", "c"}}, "")
	if !converged([]*IPAM{c, d}) {
		t.Fatal("same seed lists gave different rings")
	}
}

func TestObserverGetsRingAndDonation(t *testing.T) {
	n := newFakeNet(t, 5)
	n.add("a", simRange, Init{Mode: ModeSeed, Seeds: []string{"a", "b"}}, "")
	n.add("b", simRange, Init{Mode: ModeSeed, Seeds: []string{"a", "b"}}, "")
	o := n.add("o", simRange, Init{Mode: ModeObserver}, "")
	if o.Ready() || !strings.HasPrefix(o.Status().State, "observer") {
		t.Fatalf("observer before ring: ready=%v %q", o.Ready(), o.Status().State)
	}
	roundsUntil(t, n, 50, "observer learns ring", func() bool { return o.Ready() })
	if len(o.OwnedPrefixes()) != 0 {
		t.Fatal("observer owns space without asking")
	}
	addr, err := n.allocatePumping(t, o, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if owner, _ := o.Owner(addr); owner != "o" {
		t.Fatalf("observer allocated %s owned by %q", addr, owner)
	}
	// The donation was at most half of the donor's free space, one aligned block.
	pf := o.OwnedPrefixes()
	if len(pf) != 1 || pf[0].Bits() != 19 {
		t.Fatalf("observer got %v, want one /19 (half of a /17 donor's free space, rounded down to a power of two)", pf)
	}
	checkSafety(t, n.live())
}

// Ten peers, random operations, lossy/duplicating/reordering network,
// partitions: no address ever has two owners or two containers.
func TestRandomOpsTenPeers(t *testing.T) {
	for seed := range uint64(6) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			n := newFakeNet(t, seed)
			n.loss, n.dup = 0.3, 0.1
			ns := names(10)
			for i, name := range ns {
				init := Init{Mode: ModeSeed, Seeds: ns[:4]}
				if i == 9 {
					init = Init{Mode: ModeObserver}
				}
				n.add(name, netip.MustParsePrefix("10.40.0.0/24"), init, "")
			}
			cancelled, cancel := context.WithCancel(context.Background())
			cancel()
			rng := n.rng
			ids := 0
			for step := range 400 {
				p := n.peers[ns[rng.IntN(len(ns))]]
				switch op := rng.IntN(10); {
				case op < 5:
					ids++
					p.Allocate(cancelled, fmt.Sprintf("c%d", ids), "eth0", "")
				case op < 7:
					if as := p.Allocations(); len(as) > 0 {
						a := as[rng.IntN(len(as))]
						if err := p.Release(a.ContainerID, a.IfName); err != nil {
							t.Fatal(err)
						}
					}
				case op == 7:
					n.pushPull()
				case op == 8:
					if step%50 == 0 {
						n.partition(ns[:5], ns[5:])
					} else if step%50 == 25 {
						n.heal()
					}
				}
				// Deliver only part of the queue sometimes: reordering across steps.
				if rng.IntN(3) > 0 {
					n.pump()
				}
				n.advance(tickInterval)
				p.tick()
				checkSafety(t, n.live())
			}
			n.heal()
			n.loss, n.dup = 0, 0
			roundsUntil(t, n, 50, "final convergence", func() bool { return converged(n.live()) })
		})
	}
}

func TestBroadcastsFitUDP(t *testing.T) {
	n := newFakeNet(t, 1)
	long := strings.Repeat("h", 200)
	var seeds []string
	for i := range 50 {
		seeds = append(seeds, fmt.Sprintf("%s%02d", long, i))
	}
	p := n.add(seeds[0], simRange, Init{Mode: ModeSeed, Seeds: seeds}, "")
	p.mu.Lock()
	p.broadcastEntriesLocked(p.ring.entries)
	out := p.outbox
	p.outbox = nil
	p.mu.Unlock()
	entries := 0
	for _, o := range out {
		if len(o.msg) > 1000 {
			t.Fatalf("broadcast of %d bytes", len(o.msg))
		}
		m, err := decodeMessage(o.msg)
		if err != nil {
			t.Fatal(err)
		}
		entries += len(m.Entries)
	}
	if entries != 50 {
		t.Fatalf("%d entries broadcast, want 50", entries)
	}
}

// Run drives consensus on real time: two peers agree within a few ticks.
func TestRunBootstrapsOnRealTime(t *testing.T) {
	n := newFakeNet(t, 9)
	var peers []*IPAM
	for _, name := range []string{"a", "b"} {
		cfg := n.config(name, simRange, Init{Mode: ModeConsensus, Quorum: 2}, "")
		cfg.Clock = nil // real time
		p, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		n.mu.Lock()
		n.peers[name] = p
		n.names = append(n.names, name)
		n.mu.Unlock()
		peers = append(peers, p)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, p := range peers {
		go p.Run(ctx)
		p.PeersChanged()
	}
	deadline := time.Now().Add(10 * time.Second)
	for !(peers[0].Ready() && peers[1].Ready() && converged(peers)) {
		if time.Now().After(deadline) {
			t.Fatalf("no ring after 10 s: %q, %q", peers[0].Status().State, peers[1].Status().State)
		}
		if n.pump() == 0 {
			<-time.After(5 * time.Millisecond) // poll interval while Run's ticker works
		}
	}
}
