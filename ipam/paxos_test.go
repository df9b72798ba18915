package ipam

import (
	"fmt"
	"testing"
)

// No split brain: five consensus peers, every one proposing at once, under
// changing partitions and lossy broadcasts, never end up with two rings.
func TestConsensusNoSplitBrain(t *testing.T) {
	for seed := range uint64(100) {
		n := newFakeNet(t, seed)
		n.loss = 0.3
		ns := names(5)
		for _, name := range ns {
			n.add(name, simRange, Init{Mode: ModeConsensus, Quorum: 5}, "")
		}
		repartition := func() {
			// Sometimes a majority side exists, sometimes not.
			groups := make([][]string, 2+n.rng.IntN(2))
			for _, name := range ns {
				g := n.rng.IntN(len(groups))
				groups[g] = append(groups[g], name)
			}
			n.partition(groups...)
		}
		for r := range 150 {
			if r == 100 {
				n.heal()
			}
			n.advance(tickInterval)
			for _, p := range n.live() {
				p.mu.Lock()
				if p.proposal == nil && n.rng.IntN(4) == 0 {
					p.nextTry = n.now() // duel: propose regardless of rank
				}
				p.mu.Unlock()
				p.tick()
			}
			// Messages in flight meet a changing partition: a Paxos round is
			// cut at any step, e.g. after the value is chosen but before
			// every acceptor heard.
			for n.pumpSome(1+n.rng.IntN(4)) > 0 {
				if r < 100 && n.rng.IntN(3) == 0 {
					repartition()
				}
			}
			if n.rng.IntN(3) == 0 {
				n.pushPull()
			}
			ids := map[string]bool{}
			for _, p := range n.live() {
				p.mu.Lock()
				if p.ring != nil {
					ids[p.ring.ID] = true
				}
				p.mu.Unlock()
			}
			if len(ids) > 1 {
				t.Fatalf("seed %d round %d: two rings chosen: %v", seed, r, ids)
			}
			checkSafety(t, n.live())
		}
		if !converged(n.live()) {
			for _, p := range n.live() {
				t.Logf("%s: %s", p.cfg.Name, p.Status().State)
			}
			t.Fatalf("seed %d: no single ring 50 rounds after the heal", seed)
		}
	}
}

// An acceptor's promise survives a restart, so it cannot vote for a lower
// ballot afterwards.
func TestAcceptorPromisePersists(t *testing.T) {
	dir := t.TempDir()
	n := newFakeNet(t, 1)
	a := n.add("a", simRange, Init{Mode: ModeConsensus, Quorum: 3}, dir)
	n.add("b", simRange, Init{Mode: ModeConsensus, Quorum: 3}, "")
	high := ballot{Round: 9, Proposer: "b"}
	a.HandleMessage(n.from(&message{Type: msgPrepare, From: "b", Ballot: &high}))

	n2 := newFakeNet(t, 2)
	a2 := n2.add("a", simRange, Init{Mode: ModeConsensus, Quorum: 3}, dir)
	n2.add("c", simRange, Init{Mode: ModeConsensus, Quorum: 3}, "")
	low := ballot{Round: 3, Proposer: "c"}
	a2.HandleMessage(n2.from(&message{Type: msgAccept, From: "c", Ballot: &low, Value: []string{"a", "c"}}))
	n2.mu.Lock()
	q := n2.queue
	n2.mu.Unlock()
	if len(q) != 1 {
		t.Fatalf("want one reply, got %d", len(q))
	}
	m, err := decodeMessage(q[0].msg)
	if err != nil {
		t.Fatal(err)
	}
	if m.Type != msgAccepted || m.OK || m.Promised == nil || *m.Promised != high {
		t.Fatalf("restarted acceptor answered %+v, want a nack naming ballot %v", m, high)
	}
}

func ExampleParseInit() {
	in, _ := ParseInit("seed=host2,host1", 1)
	fmt.Println(in.Mode, in.Seeds)
	in, _ = ParseInit("", 3)
	fmt.Println(in.Mode, in.Quorum, majority(in.Quorum))
	// Output:
	// seed [host1 host2]
	// consensus 3 2
}
