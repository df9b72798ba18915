package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/fastdp"
	"github.com/weftnet/weft/mesh"
)

// Datapath choices of --datapath.
const (
	DatapathAuto      = "auto"      // the kernel fast path where a pair can use it, else userspace
	DatapathKernel    = "kernel"    // as auto, but a host whose kernel cannot make the device fails to start
	DatapathUserspace = "userspace" // the TUN and the agent only
	DatapathWater     = "water"     // userspace through the portable water TUN (no offloads)
)

// Datapath names of a pair in `weft status connections` and the metrics.
const (
	pairFastdp    = "fastdp"
	pairUserspace = "userspace"
)

// Timing of the fast path's control loop. A peer that answers is probed
// every probeSlowEvery rounds, or every peers/probePerRound rounds when
// there are more than 30; one with a request unanswered (and a new one)
// every round. A pair whose request goes unanswered for probeTimeout falls
// back: with up to 30 peers at most probeSlowEvery*fastdpTick+probeTimeout+
// fastdpTick (3.5 s) after the path broke, inside 5 s; 5 s at 50 peers.
// Probing every peer every round was 98 requests a second per agent at 50
// agents, each a VXLAN round trip in the kernel, and a quarter of the
// agents' CPU while they started (issue 21).
const (
	fastdpTick     = 500 * time.Millisecond
	probeTimeout   = 2 * time.Second
	probeSlowEvery = 3
	probePerRound  = 10
	// fullSyncEvery re-applies the desired state even when it did not
	// change, so that entries removed by hand come back.
	fullSyncEvery = 10 * time.Second
	// pruneAfter: a restarted agent removes kernel entries of peers it does
	// not know only once it knows every ring owner, or after this long.
	pruneAfter = 30 * time.Second
)

// fastPath is the kernel VXLAN datapath of this host (package fastdp): the
// device, the probes, and the loop that keeps the kernel's entries in step
// with membership, the ring and the probes.
type fastPath struct {
	a      *Agent
	self   fastdp.Self // static part; Src is filled in per round
	cfg    fastdp.Config
	dev    atomic.Pointer[fastdp.Device] // nil when off; replaced if the device vanishes
	prober *fastdp.Prober
	meta   *mesh.VXLAN // what this host announces; nil when off

	mu        sync.Mutex
	decisions map[string]fastdp.Decision
	fallbacks map[string]uint64
	lastWant  fastdp.Desired
	synced    bool // lastWant was applied; resync clears it
	lastSync  time.Time
	// ranges: every ring owner's prefixes, kept while the ring's owner
	// generation stays rangesGen.
	ranges    map[string][]netip.Prefix
	rangesGen uint64
}

// startFastPath decides whether this host offers the fast path and, if so,
// makes (or adopts) the VXLAN device. It runs before gossip starts, since
// the metadata announces the result. When the fast path is off, a device
// left by an earlier run is removed: with a password or --datapath
// userspace, nothing may go through it.
func (a *Agent) startFastPath() (*fastPath, error) {
	fp := &fastPath{a: a, decisions: map[string]fastdp.Decision{}, fallbacks: map[string]uint64{}}
	fp.self = fastdp.Self{VNI: uint32(a.cfg.VNI), Port: uint16(a.cfg.VXLANPort), Range: a.cfg.Range}
	off := func(reason string) (*fastPath, error) {
		fp.self.Reason = reason
		if a.dev.realHost {
			if err := fastdp.Remove(fastdp.DefaultDevice, a.log); err != nil {
				a.log.Warn("removing the VXLAN device of an earlier run", "err", err)
			}
		}
		a.log.Info("kernel fast path off", "reason", reason)
		return fp, nil
	}
	switch {
	case a.cfg.Datapath == DatapathUserspace || a.cfg.Datapath == DatapathWater:
		return off("this host runs --datapath " + a.cfg.Datapath)
	case a.keys != nil:
		return off("encrypted: traffic with a password stays in userspace")
	case !a.dev.realHost:
		return off("no kernel fast path with these devices")
	}
	fail := func(err error) (*fastPath, error) {
		if a.cfg.Datapath == DatapathKernel {
			return nil, fmt.Errorf("--datapath kernel: %w", err)
		}
		a.log.Warn("kernel fast path unavailable; userspace only", "err", err)
		return off("this host's kernel fast path is unavailable: " + err.Error())
	}
	underlayMTU, err := a.dev.HostNet.UnderlayMTU(a.cfg.Host)
	if err != nil {
		return fail(fmt.Errorf("find the underlay MTU: %w", err))
	}
	if underlayMTU-fastdp.Overhead < 576 {
		return fail(fmt.Errorf("underlay MTU %d leaves less than 576 bytes inside VXLAN", underlayMTU))
	}
	fp.self.UnderlayMTU = underlayMTU
	prober, err := fastdp.NewProber(fastdp.ProberConfig{Timeout: probeTimeout, SlowEvery: probeSlowEvery, PerSend: probePerRound,
		Logger: a.log.With("component", "fastdp")})
	if err != nil {
		return fail(err)
	}
	fp.cfg = fastdp.Config{
		Device: fastdp.DefaultDevice, VNI: uint32(a.cfg.VNI), Port: uint16(a.cfg.VXLANPort), Local: a.cfg.Host,
		MAC: fastdp.MAC(a.cfg.Name), MTU: underlayMTU - fastdp.Overhead, Logger: a.log.With("component", "fastdp"),
	}
	dev, err := fastdp.Ensure(fp.cfg)
	if err != nil {
		prober.Close()
		if errors.Is(err, fastdp.ErrUnsupported) || a.cfg.Datapath != DatapathKernel {
			return fail(err)
		}
		return nil, err
	}
	fp.dev.Store(dev)
	fp.prober, fp.self.Enabled = prober, true
	fp.meta = &mesh.VXLAN{VNI: uint32(a.cfg.VNI), Port: uint16(a.cfg.VXLANPort), UnderlayMTU: uint16(min(underlayMTU, 65535))}
	copy(fp.meta.MAC[:], fp.cfg.MAC)
	a.log.Info("kernel fast path on", "device", dev.Name(), "vni", a.cfg.VNI, "port", a.cfg.VXLANPort)
	return fp, nil
}

// enabled says whether this host offers the fast path.
func (fp *fastPath) enabled() bool { return fp != nil && fp.self.Enabled }

// run keeps the kernel in step until ctx is done. The kernel state stays
// when it returns: fast-path traffic does not notice the agent going.
func (fp *fastPath) run(ctx context.Context) {
	if !fp.enabled() {
		return
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() { defer wg.Done(); fp.prober.Run(ctx) }()
	start := time.Now()
	tick := time.NewTicker(fastdpTick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if err := fp.round(time.Since(start) > pruneAfter); err != nil {
			fp.a.log.Warn("kernel fast path: syncing the VXLAN device", "err", err)
		}
	}
}

// resync makes the next round apply the desired state even if it has not
// changed: the reconcile loop calls it when the host network changed under
// the agent, since a flushed route takes the fast path's routes with it.
func (fp *fastPath) resync() {
	if !fp.enabled() {
		return
	}
	fp.mu.Lock()
	fp.synced = false
	fp.mu.Unlock()
}

// round computes the desired state, applies it when it changed (or every
// fullSyncEvery), and sends the next probes.
func (fp *fastPath) round(late bool) error {
	a := fp.a
	src := a.HostAddr()
	if !src.IsValid() || !a.running() {
		return nil // not ready: touch nothing (a restart keeps what is there)
	}
	members := a.mesh.Members()
	known := map[string]bool{}
	ranges := fp.ownerRanges()
	owners := len(ranges)
	if _, ok := ranges[a.cfg.Name]; ok {
		owners--
	}
	views := make([]fastdp.PeerView, 0, len(members))
	pending := false
	for _, m := range members {
		if m.Name == a.cfg.Name {
			continue
		}
		if _, ok := ranges[m.Name]; ok && m.Addr.IsValid() {
			known[m.Name] = true
		}
		v := fastdp.PeerView{Name: m.Name, Underlay: m.Addr, Encrypted: m.Meta.Encrypted, VXLAN: m.Meta.VXLAN, Ranges: ranges[m.Name]}
		if m.Addr.IsValid() {
			v.Probe = fp.prober.State(m.Addr)
			pending = pending || v.Probe == fastdp.ProbePending
		}
		views = append(views, v)
	}
	dev := fp.dev.Load()
	if pending {
		routed, err := dev.Routed()
		if err != nil {
			return err
		}
		for i := range views {
			views[i].Routed = routed[views[i].Underlay] > 0
		}
	}
	self := fp.self
	self.Src = src
	want, decisions := fastdp.Plan(self, views)
	want.Prune = late || len(known) == owners
	fp.record(decisions)
	// The probes go out whatever the sync does: a peer is down only once a
	// request of its went unanswered, so a round that sent none (a failing
	// Sync, say) would keep every peer up.
	targets := make([]netip.Addr, 0, len(want.Peers))
	for _, p := range want.Peers {
		targets = append(targets, p.Underlay)
	}
	defer func() { fp.prober.Send(fp.dev.Load().Index(), a.cfg.Host, targets) }()

	fp.mu.Lock()
	full := !fp.synced || time.Since(fp.lastSync) > fullSyncEvery
	due := full || !want.Equal(fp.lastWant)
	prev := fp.lastWant
	fp.mu.Unlock()
	if due {
		// Between full Syncs, a change is applied as a difference from the
		// last state applied, without listing the kernel's entries.
		var res fastdp.SyncResult
		var err error
		handled := false
		if !full {
			res, handled, err = dev.SyncChange(prev, want)
		}
		if !handled && err == nil {
			full = true
			res, err = dev.Sync(want)
		}
		if err != nil {
			fp.mu.Lock()
			fp.synced = false // the next round applies everything
			fp.mu.Unlock()
			// The device may have been deleted under us: make it again,
			// the next round fills it.
			if again, eerr := fastdp.Ensure(fp.cfg); eerr == nil {
				fp.dev.Store(again)
			}
			return err
		}
		if res.Added+res.Removed > 0 {
			a.log.Debug("kernel fast path synced", "added", res.Added, "removed", res.Removed, "full", full)
		}
		fp.mu.Lock()
		fp.lastWant, fp.synced = want, true
		if full {
			fp.lastSync = time.Now()
		}
		fp.mu.Unlock()
	}
	return nil
}

// ownerRanges is every ring owner's prefixes (this host's among them),
// worked out again only when ownership changed: at 50 peers and two rounds
// a second, the ring's full status each round was a visible share of an
// agent's CPU.
func (fp *fastPath) ownerRanges() map[string][]netip.Prefix {
	if gen := fp.a.ipam.OwnerGen(); gen != fp.rangesGen || fp.ranges == nil {
		fp.rangesGen, fp.ranges = fp.a.ipam.OwnerPrefixes()
	}
	return fp.ranges
}

// record keeps the decisions for status and metrics, and logs and counts
// every pair that leaves or joins the fast path.
func (fp *fastPath) record(ds []fastdp.Decision) {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	next := make(map[string]fastdp.Decision, len(ds))
	for _, d := range ds {
		prev, seen := fp.decisions[d.Peer]
		switch {
		case d.Fast && !prev.Fast:
			fp.a.log.Info("pair on the kernel fast path", "peer", d.Peer)
		case !d.Fast && prev.Fast:
			fp.fallbacks[d.Peer]++
			fp.a.log.Warn("pair falls back to the userspace path", "peer", d.Peer, "reason", d.Reason)
		case !d.Fast && seen && prev.Reason != d.Reason && d.Reason != fastdp.ReasonProbing:
			fp.a.log.Info("pair stays on the userspace path", "peer", d.Peer, "reason", d.Reason)
		}
		next[d.Peer] = d
	}
	fp.decisions = next
}

// decision is the datapath of the pair with peer: fast, or why not.
func (fp *fastPath) decision(peer string) (fast bool, reason string) {
	if fp == nil {
		return false, ""
	}
	fp.mu.Lock()
	defer fp.mu.Unlock()
	d, ok := fp.decisions[peer]
	switch {
	case ok:
		return d.Fast, d.Reason
	case !fp.self.Enabled:
		return false, fp.self.Reason
	}
	return false, "not decided yet (this host is not ready)"
}

// fallbackCounts copies the per-peer fall-back counters.
func (fp *fastPath) fallbackCounts() map[string]uint64 {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	out := make(map[string]uint64, len(fp.fallbacks))
	for k, v := range fp.fallbacks {
		out[k] = v
	}
	return out
}

// tunnels names the VXLAN device for the host filter, when there is one.
func (fp *fastPath) tunnels() []string {
	if !fp.enabled() {
		return nil
	}
	return []string{fp.cfg.Device}
}

// port is the VXLAN port for the host filter, 0 when off.
func (fp *fastPath) port() uint16 {
	if !fp.enabled() {
		return 0
	}
	return fp.cfg.Port
}

// stats reads the VXLAN device's counters; false when off or unreadable.
func (fp *fastPath) stats() (fastdp.Stats, bool) {
	if !fp.enabled() {
		return fastdp.Stats{}, false
	}
	st, err := fp.dev.Load().Stats()
	return st, err == nil
}

// removeFastPath deletes the VXLAN device (weft reset).
func (a *Agent) removeFastPath() {
	if !a.dev.realHost {
		return
	}
	if err := fastdp.Remove(fastdp.DefaultDevice, a.log); err != nil {
		a.log.Warn("removing the VXLAN device", "err", err)
	}
}
