package kube

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftnet/weft/kube/client/clientset"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// newTestEvents returns Events on a fake clientset, and a function that
// runs the writer until every queued Event is handled.
func newTestEvents(t *testing.T, cfg EventsConfig) (*Events, *fake.Clientset, func()) {
	t.Helper()
	client := fake.NewClientset()
	cfg.Client, cfg.NodeName, cfg.Logger = clientset.Wrap(client), "node-a", testLogger(t, "node-a")
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = time.Millisecond
	}
	e, err := NewEvents(cfg)
	if err != nil {
		t.Fatal(err)
	}
	drain := func() {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { e.Run(ctx); close(done) }()
		deadline := time.Now().Add(10 * time.Second)
		for e.pending.Load() > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("the writer did not drain the queue (%d left)", len(e.queue))
			}
			time.Sleep(time.Millisecond)
		}
		cancel()
		<-done
	}
	return e, client, drain
}

func listEvents(t *testing.T, client *fake.Clientset) []eventsv1.Event {
	t.Helper()
	l, err := client.EventsV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(l.Items, func(a, b eventsv1.Event) int { return a.EventTime.Compare(b.EventTime.Time) })
	return l.Items
}

func reasons(evs []eventsv1.Event) []string {
	var r []string
	for _, e := range evs {
		r = append(r, e.Reason)
	}
	return r
}

func TestEventsReadinessTransitionsOnly(t *testing.T) {
	e, client, drain := newTestEvents(t, EventsConfig{})
	e.Readiness(false, "starting") // the state an agent starts in: no Event
	e.Readiness(false, "waiting for the address ring")
	e.Readiness(true, "")
	e.Readiness(true, "")
	e.Readiness(false, "host network broken: bridge weft is gone")
	e.Readiness(false, "host network broken: still")
	e.Readiness(true, "")
	drain()
	evs := listEvents(t, client)
	if got, want := reasons(evs), []string{ReasonReady, ReasonNotReady, ReasonReady}; !slices.Equal(got, want) {
		t.Fatalf("reasons %v, want %v", got, want)
	}
	nr := evs[1]
	if nr.Type != corev1.EventTypeWarning || !strings.Contains(nr.Note, "bridge weft is gone") {
		t.Errorf("NotReady event: type %q note %q", nr.Type, nr.Note)
	}
	for _, ev := range evs {
		if ev.Regarding.Kind != "Node" || ev.Regarding.Name != "node-a" || ev.ReportingController != "weft" ||
			ev.ReportingInstance != "node-a" || ev.Action == "" || ev.EventTime.IsZero() {
			t.Errorf("event %s: regarding %+v controller %q instance %q action %q", ev.Reason, ev.Regarding,
				ev.ReportingController, ev.ReportingInstance, ev.Action)
		}
	}
	if evs[0].Type != corev1.EventTypeNormal {
		t.Errorf("Ready event type %q", evs[0].Type)
	}
	if e.Written() != 3 || e.Dropped() != 0 {
		t.Errorf("written %d dropped %d", e.Written(), e.Dropped())
	}
}

func TestEventsPasswordRateLimitedPerPeer(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	e, client, drain := newTestEvents(t, EventsConfig{PasswordEvery: 5 * time.Minute, Clock: clock.Now})
	p1, p2 := netip.MustParseAddr("198.18.0.7"), netip.MustParseAddr("198.18.0.8")
	e.PasswordMismatch(p1, "a peer uses a different password")
	clock.Advance(time.Second)
	e.PasswordMismatch(netip.AddrFrom16(p1.As16()), "again, as a mapped address") // same peer
	e.PasswordMismatch(p2, "a peer has no password but this one has")
	clock.Advance(4 * time.Minute)
	e.PasswordMismatch(p1, "still within five minutes")
	clock.Advance(time.Minute)
	e.PasswordMismatch(p1, "five minutes later")
	drain()
	evs := listEvents(t, client)
	var notes []string
	for _, ev := range evs {
		if ev.Reason != ReasonPasswordMismatch || ev.Type != corev1.EventTypeWarning {
			t.Errorf("event %s/%s", ev.Type, ev.Reason)
		}
		notes = append(notes, ev.Note)
	}
	if len(notes) != 3 || !strings.Contains(notes[0], "198.18.0.7") || !strings.Contains(notes[1], "198.18.0.8") ||
		!strings.Contains(notes[1], "no password") || !strings.Contains(notes[2], "198.18.0.7") {
		t.Fatalf("notes %q: want 198.18.0.7, 198.18.0.8, 198.18.0.7 again after the window", notes)
	}
}

// A flood of addresses cannot grow the limiter beyond its bound; once the
// window has passed, old entries make room again.
func TestEventsPasswordLimiterBounded(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	e, _, _ := newTestEvents(t, EventsConfig{PasswordEvery: time.Minute, Clock: clock.Now, QueueSize: 1})
	for i := range maxPasswordPeers + 10 {
		e.PasswordMismatch(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), "x")
	}
	if n := len(e.passwordSeen); n != maxPasswordPeers {
		t.Fatalf("limiter holds %d addresses, want %d", n, maxPasswordPeers)
	}
	clock.Advance(time.Minute)
	e.PasswordMismatch(netip.MustParseAddr("198.19.0.1"), "x")
	if n := len(e.passwordSeen); n != 1 {
		t.Fatalf("after the window the limiter holds %d addresses, want 1", n)
	}
}

func TestEventsRangeReclaimedAndUnderlay(t *testing.T) {
	e, client, drain := newTestEvents(t, EventsConfig{})
	e.RangeReclaimed("node-dead", []netip.Prefix{netip.MustParsePrefix("10.32.0.0/14"), netip.MustParsePrefix("10.36.0.0/15")}, 393216)
	e.UnderlayChanged(netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.9"))
	drain()
	evs := listEvents(t, client)
	if got, want := reasons(evs), []string{ReasonRangeReclaimed, ReasonUnderlayChanged}; !slices.Equal(got, want) {
		t.Fatalf("reasons %v, want %v", got, want)
	}
	if n := evs[0].Note; !strings.Contains(n, "node-dead") || !strings.Contains(n, "10.32.0.0/14, 10.36.0.0/15") || !strings.Contains(n, "393216") {
		t.Errorf("reclaim note %q", n)
	}
	if n := evs[1].Note; !strings.Contains(n, "198.18.0.1") || !strings.Contains(n, "198.18.0.9") {
		t.Errorf("underlay note %q", n)
	}
}

// While the API server is down, emitting never blocks: the queue holds
// what fits, the rest and what cannot be written are dropped and counted,
// and Events flow again once it is back.
func TestEventsDroppedWhileAPIDown(t *testing.T) {
	e, client, drain := newTestEvents(t, EventsConfig{QueueSize: 2})
	var down atomic.Bool
	down.Store(true)
	var attempts atomic.Int32
	client.PrependReactor("create", "events", func(k8stesting.Action) (bool, runtime.Object, error) {
		if down.Load() {
			attempts.Add(1)
			return true, nil, errors.New("dial tcp 10.96.0.1:443: connect: connection refused")
		}
		return false, nil, nil
	})
	start := time.Now()
	for i := range 10 {
		e.RangeReclaimed(fmt.Sprintf("dead-%d", i), nil, 1)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("10 Events with no writer took %s: emitting blocks", took)
	}
	if e.Dropped() != 8 {
		t.Fatalf("dropped %d with a queue of 2 and no writer, want 8", e.Dropped())
	}
	drain() // the two queued fail every attempt
	if e.Dropped() != 10 || e.Written() != 0 {
		t.Fatalf("after the writer: dropped %d written %d, want 10 and 0", e.Dropped(), e.Written())
	}
	if got := attempts.Load(); got != 2*eventWriteAttempts {
		t.Errorf("%d write attempts, want %d (each Event tried %d times)", got, 2*eventWriteAttempts, eventWriteAttempts)
	}
	down.Store(false)
	e.Readiness(true, "")
	drain()
	if e.Written() != 1 || len(listEvents(t, client)) != 1 {
		t.Fatalf("after the API server is back: written %d", e.Written())
	}
}

func TestNewEventsChecksConfig(t *testing.T) {
	if _, err := NewEvents(EventsConfig{NodeName: "a"}); err == nil {
		t.Error("nil client accepted")
	}
	if _, err := NewEvents(EventsConfig{Client: clientset.Wrap(fake.NewClientset()), NodeName: ""}); err == nil {
		t.Error("empty node name accepted")
	}
}
