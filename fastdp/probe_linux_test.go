package fastdp

import (
	"net/netip"
	"testing"
	"time"
)

// fakeProbes is a Prober without a socket whose peers answer (or not) at
// once, on a clock the test moves.
type fakeProbes struct {
	p      *Prober
	now    time.Time
	silent map[netip.Addr]bool // requests to these go unanswered
	sent   map[netip.Addr]int
}

func newFakeProbes(cfg ProberConfig) *fakeProbes {
	f := &fakeProbes{now: time.Unix(1_000_000, 0), silent: map[netip.Addr]bool{}, sent: map[netip.Addr]int{}}
	f.p = newProber(cfg)
	f.p.now = func() time.Time { return f.now }
	f.p.write = func(msg []byte, _ int, _, dst netip.Addr) error {
		f.sent[dst]++
		if f.silent[dst] {
			return nil
		}
		reply := append([]byte(nil), msg...)
		reply[0] = 0 // the peer's kernel answers with the request's type 0 (checksum not checked)
		f.p.answer(dst, reply)
		return nil
	}
	return f
}

// round is one fast-path round: Send, then the clock moves by tick.
func (f *fakeProbes) round(targets []netip.Addr, tick time.Duration) {
	f.p.Send(0, netip.MustParseAddr("198.18.0.1"), targets)
	f.now = f.now.Add(tick)
}

func peersN(n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range out {
		out[i] = netip.AddrFrom4([4]byte{198, 18, 1, byte(i + 1)})
	}
	return out
}

// Peers that answer are probed every SlowEvery rounds, not every round:
// at 49 peers and two rounds a second that was 98 requests a second per
// agent, and as many replies read (issue 21). Probing every round (the old
// behaviour, SlowEvery 1) sends three times what this test allows.
func TestProberBacksOffWhileAnswered(t *testing.T) {
	const tick = 500 * time.Millisecond
	peers := peersN(49)
	f := newFakeProbes(ProberConfig{Timeout: 2 * time.Second, SlowEvery: 3})
	for range 120 { // one minute
		f.round(peers, tick)
	}
	for _, a := range peers {
		if got := f.sent[a]; got > 41 {
			t.Fatalf("peer %v answering every probe got %d requests in a minute of 120 rounds, want at most 41 (one every third round)", a, got)
		}
		if st := f.p.State(a); st != ProbeUp {
			t.Fatalf("peer %v is %v, want up", a, st)
		}
	}
	if got, want := f.p.Sent(), uint64(49*40+49); got > want {
		t.Fatalf("%d requests in all, want at most %d", got, want)
	}
}

// A new peer is probed at every round until it answers, and a peer in doubt
// (a request unanswered) at every round until it answers or is down; a
// broken path is down within SlowEvery rounds plus the timeout.
func TestProberFastOnFirstContactAndDoubt(t *testing.T) {
	const tick = 500 * time.Millisecond
	a := netip.MustParseAddr("198.18.1.1")
	f := newFakeProbes(ProberConfig{Timeout: 2 * time.Second, SlowEvery: 3})
	f.silent[a] = true
	for range 3 {
		f.round([]netip.Addr{a}, tick)
	}
	if f.sent[a] != 3 || f.p.State(a) != ProbePending {
		t.Fatalf("a silent new peer: %d requests in 3 rounds, state %v; want 3, pending", f.sent[a], f.p.State(a))
	}
	f.round([]netip.Addr{a}, tick)
	if st := f.p.State(a); st != ProbeDown {
		t.Fatalf("a new peer silent for the timeout is %v, want down", st)
	}

	// It answers: up, then probed slowly.
	f.silent[a] = false
	f.round([]netip.Addr{a}, tick)
	if st := f.p.State(a); st != ProbeUp {
		t.Fatalf("after an answer: %v, want up", st)
	}
	before := f.sent[a]
	for range 12 {
		f.round([]netip.Addr{a}, tick)
	}
	// Every third round, the first one up to two rounds later (its phase).
	if d := f.sent[a] - before; d < 3 || d > 4 {
		t.Fatalf("%d requests in 12 rounds to a peer that answers, want 3 or 4", d)
	}

	// The path breaks: the next slow probe goes unanswered, and from then
	// on the peer is probed every round and down once the timeout passed.
	f.silent[a] = true
	broke := f.now
	before = f.sent[a]
	for f.p.State(a) != ProbeDown {
		if f.now.Sub(broke) > 3*tick+2*time.Second+tick {
			t.Fatalf("not down %v after the path broke, want within SlowEvery rounds and the timeout", f.now.Sub(broke))
		}
		f.round([]netip.Addr{a}, tick)
	}
	if d := f.sent[a] - before; d < 4 {
		t.Fatalf("%d requests while in doubt, want one every round (at least 4)", d)
	}

	// A single lost request does not take a peer down: the doubt is
	// settled by the next round's answer.
	f.silent[a] = false
	for f.p.State(a) != ProbeUp {
		f.round([]netip.Addr{a}, tick)
	}
	for range 2 {
		f.round([]netip.Addr{a}, tick)
	}
	f.silent[a] = true
	f.round([]netip.Addr{a}, tick) // the slow probe, lost
	f.silent[a] = false
	f.round([]netip.Addr{a}, tick) // in doubt: asked again, answered
	if st := f.p.State(a); st != ProbeUp {
		t.Fatalf("after one lost request: %v, want up", st)
	}
}

// Many peers: at most about PerSend answered peers are probed per round,
// spread over the rounds rather than all in the same one.
func TestProberBoundsRequestsPerRound(t *testing.T) {
	const tick = 500 * time.Millisecond
	peers := peersN(49)
	f := newFakeProbes(ProberConfig{Timeout: 2 * time.Second, SlowEvery: 3, PerSend: 10})
	f.round(peers, tick) // first contact: all of them
	most := 0
	for range 120 {
		before := f.p.Sent()
		f.round(peers, tick)
		most = max(most, int(f.p.Sent()-before))
	}
	// Each peer every ceil(49/10) = 5 rounds: 49*120/5 = 1,176 requests.
	if got := f.p.Sent() - 49; got > 1176+49 {
		t.Fatalf("%d requests in 120 rounds to 49 answering peers, want at most %d (each every 5th round)", got, 1176+49)
	}
	if most > 25 {
		t.Fatalf("%d requests in one round, want the peers spread over the rounds (about 10 a round)", most)
	}
	for _, a := range peers {
		if st := f.p.State(a); st != ProbeUp {
			t.Fatalf("peer %v is %v, want up", a, st)
		}
	}
}

// Peers that are no longer targets are forgotten.
func TestProberForgetsOldTargets(t *testing.T) {
	f := newFakeProbes(ProberConfig{Timeout: time.Second, SlowEvery: 3})
	ps := peersN(3)
	f.round(ps, time.Second)
	f.round(ps[:1], time.Second)
	if len(f.p.peers) != 1 || f.p.State(ps[1]) != ProbePending {
		t.Fatalf("kept %d peers, want 1", len(f.p.peers))
	}
}

// The request is a well-formed echo request: its checksum sums to zero.
func TestAppendEchoChecksum(t *testing.T) {
	msg := appendEcho(nil, 0x1234, 7, 0x0102030405060708)
	if len(msg) != 8+probeLen || msg[0] != 8 || checksum(msg) != 0 {
		t.Fatalf("request %x: checksum over it %#x, want 0", msg, checksum(msg))
	}
	reply := append([]byte(nil), msg...)
	reply[0] = 0
	if n, ok := parseReply(reply, 0x1234); !ok || n != 0x0102030405060708 {
		t.Fatalf("its reply parsed as %x %v", n, ok)
	}
}
