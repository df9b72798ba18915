package agent

import (
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/weftnet/weft/ipam"
	"github.com/weftnet/weft/mesh"
	"github.com/weftnet/weft/router/lookup"
)

// routes answers the data plane's per-packet questions from the IPAM ring
// (who owns an address) and the membership (where that peer's data plane
// listens). Both are joined in one immutable lookup table, rebuilt when
// either changes and swapped atomically, so the hot path never locks and
// asks no map.
type routes struct {
	self   string
	prefix netip.Prefix
	ring   *ipam.IPAM // nil in tests of endpoints alone
	log    *slog.Logger
	eps    atomic.Pointer[endpoints]
	table  atomic.Pointer[lookup.Table]
	mu     sync.Mutex // serialises rebuilds of table
	// stale: the endpoints changed since table was built; the next Lookup
	// rebuilds it. onDemand: update leaves the rebuild to that Lookup. An
	// agent without a data plane never asks, and a rebuild is O(ring): a
	// thousand simulated agents, each rebuilding at every membership change
	// while their mesh formed, spent 14 % of their CPU on tables no one read.
	stale    atomic.Bool
	onDemand bool
}

type endpoints struct {
	byName map[string]netip.AddrPort
	byAddr map[netip.AddrPort]string
}

func newRoutes(self string, prefix netip.Prefix, ring *ipam.IPAM, log *slog.Logger) *routes {
	r := &routes{self: self, prefix: prefix, ring: ring, log: log}
	r.eps.Store(&endpoints{byName: map[string]netip.AddrPort{}, byAddr: map[netip.AddrPort]string{}})
	// Built by the first update or Lookup.
	r.table.Store(&lookup.Table{})
	r.stale.Store(true)
	return r
}

func (r *routes) ringGen() uint64 {
	if r.ring == nil {
		return 0
	}
	return r.ring.OwnerGen()
}

// rebuild makes a new lookup table from the ring and the endpoints, unless
// (force false) another caller already made one for the current ring.
func (r *routes) rebuild(force bool) *lookup.Table {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t := r.table.Load(); !force && t != nil && t.Gen == r.ringGen() && !r.stale.Load() {
		return t
	}
	// Before the endpoints are read: an update after it marks it again.
	r.stale.Store(false)
	var gen uint64
	var spans []lookup.Span
	if r.ring != nil {
		var owned []ipam.OwnerSpan
		gen, owned = r.ring.OwnerSpans()
		spans = make([]lookup.Span, len(owned))
		for i, s := range owned {
			spans[i] = lookup.Span(s)
		}
	}
	eps := r.eps.Load()
	t, err := lookup.New(r.prefix, spans, r.self, func(name string) (netip.AddrPort, bool) {
		ep, ok := eps.byName[name]
		return ep, ok
	})
	if err != nil {
		// The ring's spans are sorted and inside the range by
		// construction; should that break, route nothing rather than
		// rebuild on every packet.
		if r.log != nil {
			r.log.Error("cannot build the data plane's lookup table; no traffic to peers until the ring changes", "err", err)
		}
		t = &lookup.Table{}
	}
	t.Gen = gen
	r.table.Store(t)
	return t
}

// update replaces the endpoint snapshot with every member's last known
// endpoint, whatever its state: the ring, not membership, says who owns an
// address. A suspect peer is often just slow to answer probes; a peer that
// left or died is most often restarting, and its packets flow again the
// moment its new agent listens, without waiting for gossip to say so; a
// peer known only from the last run (state unknown) is reachable before
// gossip has spoken. Traffic for a peer that is really gone is lost either
// way until its ranges are taken over.
func (r *routes) update(members []mesh.PeerInfo) {
	e := &endpoints{byName: map[string]netip.AddrPort{}, byAddr: map[netip.AddrPort]string{}}
	reachable := map[string]bool{}
	for _, m := range members {
		reachable[m.Name] = m.State.Reachable()
	}
	for _, m := range members {
		if m.Name == r.self || !m.Addr.IsValid() || m.Meta.DataPort == 0 {
			continue
		}
		ep := netip.AddrPortFrom(m.Addr, m.Meta.DataPort)
		e.byName[m.Name] = ep
		if other, taken := e.byAddr[ep]; !taken || m.State.Reachable() && !reachable[other] {
			// An address reused by another host (a replaced node) is
			// the live peer's, not the remembered one's.
			e.byAddr[ep] = m.Name
		}
	}
	r.eps.Store(e)
	r.stale.Store(true)
	if !r.onDemand {
		r.rebuild(true)
	}
}

// Lookup answers the data plane from one search of the lookup table. The
// first packet after a ring change (or, on demand, an endpoint change)
// rebuilds it, so an answer is never older than the ring (an atomic load
// each to know).
func (r *routes) Lookup(addr netip.Addr) (owner string, ep netip.AddrPort, local bool) {
	t := r.table.Load()
	if t.Gen != r.ringGen() || r.stale.Load() {
		t = r.rebuild(false)
	}
	return t.Lookup(addr)
}

func (r *routes) PeerAt(src netip.AddrPort) (string, bool) {
	name, ok := r.eps.Load().byAddr[src]
	return name, ok
}

// endpoint returns a peer's data endpoint, if it is reachable.
func (r *routes) endpoint(name string) (netip.AddrPort, bool) {
	ep, ok := r.eps.Load().byName[name]
	return ep, ok
}
