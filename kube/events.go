package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/weftnet/weft/internal/logx"
)

// Reasons of the Events weft writes on its Node. They are part of the
// operator's interface (alerts and `kubectl get events --field-selector
// reason=...` name them): keep them stable.
const (
	ReasonReady            = "WeftReady"
	ReasonNotReady         = "WeftNotReady"
	ReasonRangeReclaimed   = "WeftRangeReclaimed"
	ReasonPasswordMismatch = "WeftPasswordMismatch"
	ReasonUnderlayChanged  = "WeftUnderlayChanged"
)

// ReportingController is the reportingController of weft's Events.
const ReportingController = "weft"

// Defaults of EventsConfig.
const (
	DefaultEventQueue    = 64
	DefaultPasswordEvery = 10 * time.Minute
	eventWriteTimeout    = 10 * time.Second
	eventWriteAttempts   = 3
	maxPasswordPeers     = 1024 // bounds the rate limiter's memory against a flood of addresses
)

// EventsConfig is what NewEvents needs.
type EventsConfig struct {
	Client   Client
	NodeName string
	Logger   *slog.Logger
	// QueueSize bounds the Events waiting for the API server; more are
	// dropped and counted (default DefaultEventQueue).
	QueueSize int
	// PasswordEvery is the least time between two password Events about
	// one peer address (default DefaultPasswordEvery).
	PasswordEvery time.Duration
	// RetryBackoff is the first wait before retrying a failed write; it
	// doubles per attempt (default 1s). Tests shorten it.
	RetryBackoff time.Duration
	// Clock returns the current time (default time.Now).
	Clock func() time.Time
}

// Events writes Kubernetes Events on this agent's Node for the state
// changes an operator must see. Every method returns at once: the Event
// goes into a bounded queue that one goroutine (Run) writes to the API
// server, so a slow or absent API server never holds the agent up; what
// does not fit, or cannot be written after a few attempts, is dropped and
// counted (Dropped).
//
// It writes events.k8s.io/v1 Events with the typed client rather than
// through client-go's tools/events recorder: that recorder reports as
// "weft-<pod hostname>" instead of the node, merges Events that differ only
// in their note (two peers with the wrong password would become one Event
// naming the first), and retries each Event in its own goroutine for
// minutes without counting what it gives up. Repeats are bounded here
// instead: readiness Events are transitions only, password Events are
// rate-limited per peer.
type Events struct {
	client        Client
	node          string
	log           *slog.Logger
	queue         chan *eventsv1.Event
	passwordEvery time.Duration
	backoff       time.Duration
	now           func() time.Time

	dropped atomic.Uint64
	written atomic.Uint64
	seq     atomic.Uint64 // makes Event names unique even at one clock reading
	pending atomic.Int64  // queued or being written (tests wait for 0)

	mu           sync.Mutex
	ready        bool                     // last readiness reported
	passwordSeen map[netip.Addr]time.Time // peer address -> its last password Event
}

// NewEvents checks cfg and fills in defaults; Run writes the Events.
func NewEvents(cfg EventsConfig) (*Events, error) {
	if cfg.Client == nil {
		return nil, fmt.Errorf("kube events: Config.Client is nil")
	}
	if err := validPeerName(cfg.NodeName); err != nil {
		return nil, fmt.Errorf("kube events: node name: %w", err)
	}
	e := &Events{
		client:        cfg.Client,
		node:          cfg.NodeName,
		log:           logx.OrDiscard(cfg.Logger),
		queue:         make(chan *eventsv1.Event, orDefaultInt(cfg.QueueSize, DefaultEventQueue)),
		passwordEvery: orDefault(cfg.PasswordEvery, DefaultPasswordEvery),
		backoff:       orDefault(cfg.RetryBackoff, time.Second),
		now:           cfg.Clock,
		passwordSeen:  map[netip.Addr]time.Time{},
	}
	if e.now == nil {
		e.now = time.Now
	}
	return e, nil
}

func orDefaultInt(n, def int) int {
	if n > 0 {
		return n
	}
	return def
}

// Dropped is the number of Events lost: queue full, or the API server did
// not take them.
func (e *Events) Dropped() uint64 { return e.dropped.Load() }

// Written is the number of Events the API server accepted.
func (e *Events) Written() uint64 { return e.written.Load() }

// Readiness tells whether this host can network pods now (why: what it
// waits for when not). Only transitions become Events: not ready -> ready
// is WeftReady, ready -> not ready is WeftNotReady. The agent starts not
// ready without an Event; the first Ready of each start is one.
func (e *Events) Readiness(ready bool, why string) {
	e.mu.Lock()
	changed := e.ready != ready
	e.ready = ready
	e.mu.Unlock()
	if !changed {
		return
	}
	if ready {
		e.emit(corev1.EventTypeNormal, ReasonReady, "BecameReady", "weft is ready: pods on this node can be networked")
		return
	}
	e.emit(corev1.EventTypeWarning, ReasonNotReady, "BecameNotReady", "weft is not ready: "+why)
}

// RangeReclaimed says that this node took over the address ranges of a
// dead node (one that left the cluster without handing them over).
func (e *Events) RangeReclaimed(deadNode string, ranges []netip.Prefix, addresses uint64) {
	rs := make([]string, len(ranges))
	for i, r := range ranges {
		rs[i] = r.String()
	}
	e.emit(corev1.EventTypeNormal, ReasonRangeReclaimed, "Reclaim",
		fmt.Sprintf("took over %d addresses (%s) of deleted node %s", addresses, strings.Join(rs, ", "), deadNode))
}

// PasswordMismatch says that a host at from tried to talk to this one with
// another password (or with none, or this one has none: why says which).
// At most one Event per address every PasswordEvery: such a host retries
// every few seconds.
func (e *Events) PasswordMismatch(from netip.Addr, why string) {
	from = from.Unmap()
	now := e.now()
	e.mu.Lock()
	last, seen := e.passwordSeen[from]
	due := !seen || now.Sub(last) >= e.passwordEvery
	if due {
		if !seen && len(e.passwordSeen) >= maxPasswordPeers {
			for a, t := range e.passwordSeen {
				if now.Sub(t) >= e.passwordEvery {
					delete(e.passwordSeen, a)
				}
			}
		}
		if seen || len(e.passwordSeen) < maxPasswordPeers {
			e.passwordSeen[from] = now
		} else {
			due = false // a flood of addresses: the log line and metrics still say it
		}
	}
	e.mu.Unlock()
	if !due {
		return
	}
	addr := "an unknown address"
	if from.IsValid() {
		addr = from.String()
	}
	e.emit(corev1.EventTypeWarning, ReasonPasswordMismatch, "RefusePeer",
		fmt.Sprintf("refused the host at %s: %s (repeats about this address are not reported for %s)", addr, why, e.passwordEvery))
}

// UnderlayChanged says that this host's underlay address changed and weft
// moved its gossip and data plane to the new one.
func (e *Events) UnderlayChanged(old, new netip.Addr) {
	e.emit(corev1.EventTypeNormal, ReasonUnderlayChanged, "Rebind",
		fmt.Sprintf("the node's underlay address changed from %s to %s; gossip and data plane moved to it", old, new))
}

// noteMax is the API server's limit on an Event's note.
const noteMax = 1024

// emit queues one Event without blocking.
func (e *Events) emit(typ, reason, action, note string) {
	if len(note) > noteMax {
		note = note[:noteMax-3] + "..."
	}
	now := e.now()
	ev := &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{
			// Unique per Event: node.<time>, as kubelet and the recorder
			// name them, and a sequence number.
			Name:      fmt.Sprintf("%s.%x.%d", e.node, now.UnixNano(), e.seq.Add(1)),
			Namespace: metav1.NamespaceDefault, // a cluster-scoped object's Events live in "default"
		},
		EventTime:           metav1.NewMicroTime(now),
		ReportingController: ReportingController,
		ReportingInstance:   e.node,
		Action:              action,
		Reason:              reason,
		// UID = node name, as kubelet writes its Node Events: `kubectl
		// describe node` finds Events by either UID, and this way no
		// API call is needed before the first Event.
		Regarding: corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: e.node, UID: types.UID(e.node)},
		Note:      note,
		Type:      typ,
	}
	e.pending.Add(1)
	select {
	case e.queue <- ev:
		e.log.Debug("event queued", "reason", reason, "note", note)
	default:
		e.pending.Add(-1)
		e.dropped.Add(1)
		e.log.Warn("dropped a Kubernetes Event: too many waiting for the API server", "reason", reason, "note", note)
	}
}

// Run writes queued Events until ctx is done. One writer: the API server
// sees at most one request from here at a time.
func (e *Events) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-e.queue:
			e.write(ctx, ev)
			e.pending.Add(-1)
		}
	}
}

// write creates ev, retrying failures that may pass (the API server
// unreachable or overloaded) a few times with a growing pause.
func (e *Events) write(ctx context.Context, ev *eventsv1.Event) {
	wait := e.backoff
	for attempt := 1; ; attempt++ {
		wctx, cancel := context.WithTimeout(ctx, eventWriteTimeout)
		_, err := e.client.Events(ev.Namespace).Create(wctx, ev, metav1.CreateOptions{})
		cancel()
		if err == nil {
			e.written.Add(1)
			return
		}
		retry := !(apierrors.IsInvalid(err) || apierrors.IsForbidden(err) || apierrors.IsAlreadyExists(err) || apierrors.IsBadRequest(err))
		if !retry || attempt >= eventWriteAttempts || ctx.Err() != nil {
			e.dropped.Add(1)
			e.log.Warn("dropped a Kubernetes Event: the API server did not take it", "reason", ev.Reason,
				"attempts", attempt, "err", err)
			return
		}
		select {
		case <-ctx.Done():
			e.dropped.Add(1)
			return
		case <-time.After(wait):
		}
		wait *= 2
	}
}
