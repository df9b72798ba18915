package mesh

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/weftnet/weft/mesh/meshtest"
)

// verifyTiming probes so rarely that memberlist's own probes (one member
// per interval, in turn) take no part in a test, and rejoins (which join
// a suspect peer too) and push/pulls no more often than once a minute:
// what clears a mark is what this member does about it.
func verifyTiming() Timing {
	t := LocalTiming()
	t.ProbeInterval = time.Minute
	t.ProbeTimeout = 100 * time.Millisecond
	t.PushPullInterval = time.Minute
	t.RejoinInterval, t.RejoinMaxBackoff = time.Minute, time.Minute
	return t
}

func simAddr(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(i)}), 6783)
}

// startSimMember starts member i on an in-memory network, joining member
// peer when peer > 0, and stops it when the test ends.
func startSimMember(t *testing.T, net *meshtest.Network, i, peer int, timing Timing) *Mesh {
	t.Helper()
	tr, err := net.Listen(simAddr(i))
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{
		Name: fmt.Sprintf("m%d", i), Bind: simAddr(i).Addr(), Port: int(simAddr(i).Port()),
		Meta:   Meta{Protocol: ProtocolMax, DataPort: 6784, Version: "test"},
		Timing: timing, Transport: tr, Logger: newTestLogger(&logSink{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if peer > 0 {
		if err := m.Connect([]string{simAddr(peer).String()}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// startSim starts members 1..n on an in-memory network, 2..n joining 1
// (given before Run, which joins them at once), and waits until each sees
// all.
func startSim(t *testing.T, net *meshtest.Network, n int, timing Timing) []*Mesh {
	t.Helper()
	var ms []*Mesh
	for i := 1; i <= n; i++ {
		peer := 0
		if i > 1 {
			peer = 1
		}
		ms = append(ms, startSimMember(t, net, i, peer, timing))
	}
	for i, m := range ms {
		waitFor(t, fmt.Sprintf("m%d to see %d", i+1, n), 10*time.Second, func() bool { return len(m.AliveNames()) == n })
	}
	return ms
}

// waitQuiet waits until tr has received no packet for a while: the
// alive messages of the joins have been gossiped out (each of them, heard
// again, is a sign of life that would clear a mark by itself).
func waitQuiet(t *testing.T, tr *meshtest.Transport, quiet time.Duration) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	last, since := tr.Stats().PacketsIn, time.Now()
	for time.Since(since) < quiet {
		if time.Now().After(deadline) {
			t.Fatal("gossip never went quiet")
		}
		time.Sleep(10 * time.Millisecond)
		if n := tr.Stats().PacketsIn; n != last {
			last, since = n, time.Now()
		}
	}
}

// A probe that failed while its peer refuted another member's suspicion:
// memberlist logs "Suspect ... has failed" (which marks the peer suspect
// here) but ignores the suspicion, as it has heard a newer incarnation;
// nothing is gossiped, and no refutation will come. The mark must still
// go once the peer answers: before verifySuspects it stayed until this
// member's next probe of that peer, N probe intervals later (a 100-agent
// mesh stayed "not whole" for minutes after a partition healed).
func TestStaleSuspectCleared(t *testing.T) {
	var net meshtest.Network
	timing := verifyTiming()
	ms := startSim(t, &net, 3, timing)
	a := ms[0]
	waitQuiet(t, a.cfg.Transport.(*meshtest.Transport), 20*timing.GossipInterval)

	// memberlist's log line, as its probe writes it.
	lg := newMemberlistLogger(a.log, a.suspected, nil)
	lg.Printf("[INFO] memberlist: Suspect %s has failed, no acks received", "m2")
	if st := a.stateOf("m2"); st != StateSuspect {
		t.Fatalf("m2 is %s after the failed probe, want suspect", st)
	}
	waitFor(t, "m2 alive again at m1", 3*time.Second, func() bool { return a.stateOf("m2") == StateAlive })
	if a.verifyPings.Load() == 0 {
		t.Fatal("cleared without a verification ping")
	}
}

// A peer that does not answer stays suspect: verification clears only
// what answers.
func TestUnreachableSuspectStays(t *testing.T) {
	var net meshtest.Network
	timing := verifyTiming()
	ms := startSim(t, &net, 3, timing)
	a := ms[0]
	waitQuiet(t, a.cfg.Transport.(*meshtest.Transport), 20*timing.GossipInterval)
	net.Block(simAddr(1).Addr(), simAddr(3).Addr())
	lg := newMemberlistLogger(a.log, a.suspected, nil)
	lg.Printf("[INFO] memberlist: Suspect %s has failed, no acks received", "m3")
	if st := a.stateOf("m3"); st != StateSuspect {
		t.Fatalf("m3 is %s after the failed probe, want suspect", st)
	}
	waitFor(t, "a verification ping of m3 to end", 3*time.Second, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.verifyPings.Load() > 0 && a.verifying == 0
	})
	if st := a.stateOf("m3"); st != StateSuspect {
		t.Fatalf("m3 is %s, unreachable; want suspect", st)
	}
	// It does not ping again before a probe interval has passed.
	sent := a.verifyPings.Load()
	a.verifySuspects(context.Background())
	if a.verifyPings.Load() != sent {
		t.Fatal("pinged again at once")
	}
}

// A member that joined early learns of the members that joined the same
// peer after it from its follow-up push/pulls, without gossip: here
// gossip, probes and periodic push/pulls are all an hour apart, so before
// the follow-ups m2 never heard of m3.
func TestFollowUpsAfterJoin(t *testing.T) {
	timing := joinsOnlyTiming()
	var net meshtest.Network
	start := func(i, peer int) *Mesh { return startSimMember(t, &net, i, peer, timing) }
	m1 := start(1, 0)
	m2 := start(2, 1)
	waitFor(t, "m2 to join m1", 5*time.Second, func() bool { return len(m2.AliveNames()) == 2 })
	m3 := start(3, 1)
	waitFor(t, "m3 to join m1", 5*time.Second, func() bool { return len(m3.AliveNames()) == 3 && len(m1.AliveNames()) == 3 })
	waitFor(t, "m2 to learn of m3", 10*time.Second, func() bool { return len(m2.AliveNames()) == 3 })
	waitFor(t, "m2's three follow-ups", 10*time.Second, func() bool { return m2.followUpsDone.Load() == followUps })
}

// A join that brings no member this one did not know (a rejoin of a peer
// it already has) starts no follow-ups: in a big mesh, rejoins of peers
// marked suspect kept restarting them, three exchanges of the whole member
// list each time.
func TestNoFollowUpsForJoinBringingNothing(t *testing.T) {
	timing := joinsOnlyTiming()
	var net meshtest.Network
	m1 := startSimMember(t, &net, 1, 0, timing)
	m2 := startSimMember(t, &net, 2, 1, timing)
	waitFor(t, "m2 to join m1", 5*time.Second, func() bool { return len(m2.AliveNames()) == 2 && len(m1.AliveNames()) == 2 })
	waitFor(t, "m2's three follow-ups", 10*time.Second, func() bool { return m2.FollowUpsPending() == 0 })
	m2.joinOne(context.Background(), &target{addr: simAddr(1).String()})
	if n := m2.FollowUpsPending(); n != 0 {
		t.Fatalf("a join of a member already known scheduled %d follow-ups", n)
	}
}

// joinsOnlyTiming is LocalTiming with gossip, probes and periodic
// push/pulls an hour apart: members learn of each other only from joins
// and their follow-ups.
func joinsOnlyTiming() Timing {
	t := LocalTiming()
	t.GossipInterval = time.Hour
	t.PushPullInterval = time.Hour
	t.ProbeInterval = time.Hour
	return t
}
