package mesh

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// newLoneMesh is a mesh that joins no one, with its clock set before Run.
func newLoneMesh(t *testing.T, maxBroadcasts int, now func() time.Time) (*Mesh, context.Context) {
	t.Helper()
	port := freePort(t)
	m, err := New(Config{
		Name: fmt.Sprintf("lone%d", port), Bind: netip.MustParseAddr("127.0.0.1"), Port: port,
		Meta:   Meta{Protocol: ProtocolMin, DataPort: uint16(port + 1), Version: "test"},
		Timing: LocalTiming(), MaxBroadcasts: maxBroadcasts,
	})
	if err != nil {
		t.Fatal(err)
	}
	if now != nil {
		m.now = now
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m, ctx
}

// queued returns the messages waiting in m's broadcast queue.
func queued(m *Mesh) []string {
	var out []string
	for _, b := range m.queue.get(0, 1<<20) {
		out = append(out, string(b))
	}
	return out
}

// A keyed broadcast replaces the queued one of the same channel and key;
// other keys, other channels and unkeyed broadcasts stay.
func TestBroadcastKeyedSupersedes(t *testing.T) {
	m, _ := newLoneMesh(t, 0, nil)
	for i := range 50 {
		m.BroadcastKeyed(ChannelIPAM, "10.32.0.0", fmt.Appendf(nil, "entry v%02d", i))
	}
	m.BroadcastKeyed(ChannelIPAM, "10.40.0.0", []byte("other key"))
	m.BroadcastKeyed(Channel(7), "10.32.0.0", []byte("other channel"))
	m.Broadcast(ChannelIPAM, []byte("unkeyed 1"))
	m.Broadcast(ChannelIPAM, []byte("unkeyed 2"))
	if st := m.BroadcastStats(); st.Queued != 5 || st.Dropped != 0 {
		t.Fatalf("queue %+v, want 5 queued and none dropped: %q", st, queued(m))
	}
	got := strings.Join(queued(m), "|")
	for _, want := range []string{"entry v49", "other key", "other channel", "unkeyed 1", "unkeyed 2"} {
		if !strings.Contains(got, want) {
			t.Errorf("queue %q lacks %q", got, want)
		}
	}
	if strings.Contains(got, "entry v48") {
		t.Errorf("queue %q still holds a superseded broadcast", got)
	}
}

// The queue never holds more than the cap; the oldest go first, counted.
func TestBroadcastQueueCap(t *testing.T) {
	m, _ := newLoneMesh(t, 16, nil)
	for i := range 100 {
		m.Broadcast(ChannelIPAM, fmt.Appendf(nil, "change %03d", i))
	}
	if st := m.BroadcastStats(); st.Queued != 16 || st.Dropped != 84 {
		t.Fatalf("queue %+v, want 16 queued and 84 dropped", st)
	}
	got := strings.Join(queued(m), "|")
	if !strings.Contains(got, "change 099") || !strings.Contains(got, "change 084") || strings.Contains(got, "change 083") {
		t.Errorf("queue %q: want the newest 16 (084..099)", got)
	}
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (m *Mesh) hasTarget(addr string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.targets[addr]
	return ok
}

// A learnt join target dead for longer than TargetExpiry is dropped; one the
// operator gave is kept, and so is a learnt one whose peer is alive.
func TestJoinTargetsExpire(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	a, ctx := newLoneMesh(t, 0, clock.Now)
	b, pb := startMesh(t, "b", nil, nil)
	if err := b.Connect([]string{fmt.Sprintf("127.0.0.1:%d", a.cfg.Port)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "join", 5*time.Second, func() bool { return len(a.AliveNames()) == 2 })
	alive := fmt.Sprintf("127.0.0.1:%d", pb)
	if !a.hasTarget(alive) {
		t.Fatalf("a did not learn b's address %s as a join target", alive)
	}
	// A peer a once saw alive (as record does), and one the operator named;
	// nothing listens on either.
	dead, given := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	a.mu.Lock()
	a.targets[dead] = &target{addr: dead, lastAlive: clock.Now()}
	a.mu.Unlock()
	if err := a.Connect([]string{given}); err != nil {
		t.Fatal(err)
	}

	clock.Advance(DefaultTargetExpiry - time.Minute)
	a.rejoin(ctx)
	if !a.hasTarget(dead) {
		t.Fatal("a learnt target was dropped before its expiry")
	}
	clock.Advance(time.Minute + time.Second)
	a.rejoin(ctx)
	if a.hasTarget(dead) {
		t.Error("a learnt target dead for longer than the expiry is still re-dialled")
	}
	if !a.hasTarget(given) {
		t.Error("a target the operator gave was dropped")
	}
	if !a.hasTarget(alive) {
		t.Error("the target of an alive peer was dropped")
	}
}

// Each message is sent retransmitLimit times, least-sent first, and one too
// big for the space left does not stop smaller ones.
func TestBroadcastQueueRetransmits(t *testing.T) {
	q := newBroadcastQueue(func() int { return 9 }, 2, 100) // limit 2 × ceil(log10 10) = 2
	q.add("", []byte("aaaaaaaaaa"))                         // 10 bytes
	q.add("k", []byte("bb"))
	if got := q.get(1, 5); len(got) != 1 || string(got[0]) != "bb" {
		t.Fatalf("get with room for 5: %q, want only the small one", got)
	}
	if got := q.get(1, 100); len(got) != 2 || string(got[0]) != "aaaaaaaaaa" {
		t.Fatalf("get: %q, want the least-sent first", got)
	}
	// "bb" has now been sent twice and is gone; "aaaaaaaaaa" once.
	if got := q.get(0, 100); len(got) != 1 || string(got[0]) != "aaaaaaaaaa" {
		t.Fatalf("get: %q, want the one not yet sent twice", got)
	}
	if n := q.len(); n != 0 {
		t.Fatalf("%d messages left after every one was sent twice", n)
	}
	// A key whose message left the queue starts afresh.
	q.add("k", []byte("cc"))
	if got := q.get(0, 100); len(got) != 1 || string(got[0]) != "cc" {
		t.Fatalf("get: %q", got)
	}
}

// A keyed broadcast reaches the other peers like any other.
func TestBroadcastKeyedIsDelivered(t *testing.T) {
	a, pa := startMesh(t, "a", nil, nil)
	b, _ := startMesh(t, "b", nil, nil)
	hb := &recorder{}
	b.Handle(ChannelIPAM, hb)
	if err := b.Connect([]string{fmt.Sprintf("127.0.0.1:%d", pa)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "join", 5*time.Second, func() bool { return len(a.AliveNames()) == 2 })
	a.BroadcastKeyed(ChannelIPAM, "10.32.0.0", []byte("entry v1"))
	a.BroadcastKeyed(ChannelIPAM, "10.32.0.0", []byte("entry v2"))
	waitFor(t, "keyed broadcast", 5*time.Second, func() bool { return hb.hasMsg("entry v2") })
}

// Random adds and gets keep the queue's invariants: never above the cap,
// one queued message per key, and every message accounted for (sent out,
// replaced, dropped or still queued).
func TestBroadcastQueueInvariants(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	q := newBroadcastQueue(func() int { return 1 + rng.IntN(50) }, 3, 32)
	added, replaced, retired := 0, 0, 0
	for step := range 20000 {
		if rng.IntN(3) > 0 {
			key := ""
			if rng.IntN(2) == 0 {
				key = fmt.Sprint("k", rng.IntN(40))
			}
			q.mu.Lock()
			_, present := q.byKey[key]
			q.mu.Unlock()
			if key != "" && present {
				replaced++
			}
			q.add(key, make([]byte, 1+rng.IntN(300)))
			added++
		} else {
			before := q.len()
			q.get(2, 1400)
			retired += before - q.len()
		}
		q.mu.Lock()
		if len(q.items) > q.max {
			t.Fatalf("step %d: %d queued, cap %d", step, len(q.items), q.max)
		}
		keyed := 0
		for _, it := range q.items {
			if it.key != "" {
				keyed++
				if q.byKey[it.key] != it {
					t.Fatalf("step %d: key %q maps to another message", step, it.key)
				}
			}
		}
		if keyed != len(q.byKey) {
			t.Fatalf("step %d: %d keyed messages, %d keys", step, keyed, len(q.byKey))
		}
		n, dropped := len(q.items), int(q.dropped)
		q.mu.Unlock()
		if added != replaced+retired+dropped+n {
			t.Fatalf("step %d: added %d != replaced %d + sent out %d + dropped %d + queued %d", step, added, replaced, retired, dropped, n)
		}
	}
	if q.droppedTotal() == 0 {
		t.Error("the cap never dropped anything: the test did not fill the queue")
	}
}

// Health summaries are sent memberlist's number of times, IPAM's three times
// as often: every retransmit is paid by every member, and summaries (one
// per agent, refreshed by their sender) were most of a big mesh's gossip.
func TestHealthBroadcastsSentLessOften(t *testing.T) {
	m, _ := newLoneMesh(t, 0, nil)
	m.BroadcastKeyed(ChannelHealth, "a", []byte("summary"))
	m.BroadcastKeyed(ChannelIPAM, "10.32.0.0", []byte("entry"))
	sent := map[byte]int{}
	for range 100 {
		for _, b := range m.queue.get(0, 1<<20) {
			sent[b[0]]++
		}
	}
	// A lone member: limit = mult × ceil(log10(1+1)) = mult.
	if want := m.baseMult; sent[byte(ChannelHealth)] != want {
		t.Errorf("health summary sent %d times, want %d", sent[byte(ChannelHealth)], want)
	}
	if want := 3 * m.baseMult; sent[byte(ChannelIPAM)] != want {
		t.Errorf("IPAM entry sent %d times, want %d", sent[byte(ChannelIPAM)], want)
	}
}
