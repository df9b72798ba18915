package agent

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/hostnet"
)

// ReconcileInterval is how often the host network is checked when no
// netlink event came: events can be lost (a full socket buffer), and a
// sysctl changes without one.
const ReconcileInterval = 10 * time.Second

// repairCounts counts the repairs of the host network by part, for
// weft_repairs_total{what}. The parts are a fixed set, so the counters are
// too.
type repairCounts struct {
	n [6]atomic.Uint64 // by index in hostnet.Parts()
}

func (r *repairCounts) add(p hostnet.Part) {
	for i, q := range hostnet.Parts() {
		if q == p {
			r.n[i].Add(1)
			return
		}
	}
}

// each calls f with every part and its count.
func (r *repairCounts) each(f func(what string, n uint64)) {
	for i, p := range hostnet.Parts() {
		f(string(p), r.n[i].Load())
	}
}

// keepHost runs once the host network is set up, until ctx ends: it keeps
// the routes of this host's ranges in step with the ring, and repairs the
// host network on every netlink change and every ReconcileInterval. It
// also follows a change of the underlay address (see followUnderlay).
func (a *Agent) keepHost(ctx context.Context) {
	events, err := a.dev.HostNet.Watch(ctx, a.log.With("component", "hostnet"))
	if err != nil {
		a.log.Warn("cannot watch the host network for changes; checking it every interval only",
			"interval", ReconcileInterval, "err", err)
	}
	tick, stop := a.dev.NewTicker(ReconcileInterval)
	defer stop()
	u := a.newUnderlayWatch()
	var pace checkPacer
	check := func() {
		pace.checked(time.Now())
		a.reconcileHost()
		a.fp.resync() // the fast path's routes and neighbours, within a round
		u.follow(ctx)
	}
	check()
	var settle <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.ipam.Changes():
			if err := a.dp.hostRoutes().SyncLocalRanges(a.ipam.OwnedPrefixes()); err != nil {
				a.log.Warn("routing this host's ranges to the bridge", "err", err)
			}
		case <-events:
			// One change comes as a burst of events (a deleted bridge takes
			// its addresses and routes with it; a pod's ADD makes a veth,
			// addresses and routes): look once the burst is over.
			if settle == nil {
				settle = time.After(pace.wait(time.Now()))
			}
		case <-settle:
			settle = nil
			check()
		case <-tick:
			check()
		}
	}
}

// eventSettle is how long the reconcile loop lets a burst of netlink events
// settle before it looks at the host; eventCheckGap the least time between
// two checks on events. Pods coming and going, peers joining and fast-path
// routes moving make events for seconds on end while a mesh forms: one
// check (a dozen netlink dumps, and a fast-path resync after it) every
// 50 ms of them was a tenth of a starting agent's CPU at 50 agents
// (issue 21). A repair waits at most eventCheckGap.
const (
	eventSettle   = 50 * time.Millisecond
	eventCheckGap = time.Second
)

// checkPacer spaces the checks the reconcile loop makes on events.
type checkPacer struct{ last time.Time }

// wait is how long after an event at now its check should come: once the
// burst settled, and not within eventCheckGap of the last check.
func (p *checkPacer) wait(now time.Time) time.Duration {
	return max(eventSettle, eventCheckGap-now.Sub(p.last))
}

// checked records a check at now.
func (p *checkPacer) checked(now time.Time) { p.last = now }

// reconcileHost repairs the host network once. A failed repair makes this
// host not ready (CNI ADD answers "try again") until a later one succeeds;
// a missing TUN is fatal: only a new data plane can make it again.
func (a *Agent) reconcileHost() {
	a.reconcileMu.Lock()
	defer a.reconcileMu.Unlock()
	if a.tornDown {
		return // weft reset removed it on purpose
	}
	faults, err := a.dp.hostRoutes().Repair()
	for _, f := range faults {
		a.repairs.add(f.Part)
	}
	if errors.Is(err, hostnet.ErrTUNGone) {
		a.log.Error("data plane failed: its TUN device is gone; stopping the agent so that it is restarted", "err", err)
		a.setHostBroken(err.Error())
		a.fail(fmt.Errorf("host network: %w", err))
		return
	}
	if err != nil {
		if a.setHostBroken(err.Error()) {
			a.log.Error("the host network is broken and could not be repaired; not ready until it is", "err", err)
		}
		return
	}
	if a.setHostBroken("") {
		a.log.Info("host network repaired; ready again")
	}
}

// teardownHost removes the host network for `weft reset`, so that the
// reconcile loop does not put it back.
func (a *Agent) teardownHost() error {
	a.reconcileMu.Lock()
	defer a.reconcileMu.Unlock()
	a.tornDown = true
	return a.dev.HostNet.Teardown(a.cfg.Bridge, a.log)
}

// setHostBroken records why the host network is broken ("" for healthy)
// and reports whether that changed.
func (a *Agent) setHostBroken(why string) bool {
	a.mu.Lock()
	changed := (a.hostBroken == "") != (why == "")
	a.hostBroken = why
	a.mu.Unlock()
	a.noteReadiness()
	return changed
}
