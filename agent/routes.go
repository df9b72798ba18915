package agent

import (
	"net/netip"
	"sync/atomic"

	"github.com/weftnet/weft/ipam"
	"github.com/weftnet/weft/mesh"
)

// routes answers the data plane's per-packet questions from the IPAM ring
// (who owns an address) and the membership (where that peer's data plane
// listens). Endpoints are an immutable snapshot swapped on membership
// changes, so the hot path never locks.
type routes struct {
	self string
	ring *ipam.IPAM
	eps  atomic.Pointer[endpoints]
}

type endpoints struct {
	byName map[string]netip.AddrPort
	byAddr map[netip.AddrPort]string
}

func newRoutes(self string, ring *ipam.IPAM) *routes {
	r := &routes{self: self, ring: ring}
	r.eps.Store(&endpoints{byName: map[string]netip.AddrPort{}, byAddr: map[netip.AddrPort]string{}})
	return r
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
}

// Lookup answers the data plane from one search of the ring.
func (r *routes) Lookup(addr netip.Addr) (owner string, ep netip.AddrPort, local bool) {
	owner, ok := r.ring.Owner(addr)
	switch {
	case !ok:
		return "", netip.AddrPort{}, false
	case owner == r.self:
		return owner, netip.AddrPort{}, true
	}
	return owner, r.eps.Load().byName[owner], false
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
