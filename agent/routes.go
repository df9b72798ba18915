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

// update replaces the endpoint snapshot with the alive and suspect members.
// A suspect peer keeps its traffic: it is often just slow to answer probes.
func (r *routes) update(members []mesh.PeerInfo) {
	e := &endpoints{byName: map[string]netip.AddrPort{}, byAddr: map[netip.AddrPort]string{}}
	for _, m := range members {
		if m.Name == r.self || !m.Addr.IsValid() || m.Meta.DataPort == 0 {
			continue
		}
		if !m.State.Reachable() {
			continue
		}
		ep := netip.AddrPortFrom(m.Addr, m.Meta.DataPort)
		e.byName[m.Name] = ep
		e.byAddr[ep] = m.Name
	}
	r.eps.Store(e)
}

func (r *routes) Lookup(dst netip.Addr) (string, netip.AddrPort, bool) {
	owner, ok := r.ring.Owner(dst)
	if !ok || owner == r.self {
		return owner, netip.AddrPort{}, false
	}
	ep, ok := r.eps.Load().byName[owner]
	return owner, ep, ok
}

func (r *routes) IsLocal(dst netip.Addr) bool {
	owner, ok := r.ring.Owner(dst)
	return ok && owner == r.self
}

func (r *routes) Owner(addr netip.Addr) (string, bool) { return r.ring.Owner(addr) }

func (r *routes) PeerAt(src netip.AddrPort) (string, bool) {
	name, ok := r.eps.Load().byAddr[src]
	return name, ok
}

// endpoint returns a peer's data endpoint, if it is reachable.
func (r *routes) endpoint(name string) (netip.AddrPort, bool) {
	ep, ok := r.eps.Load().byName[name]
	return ep, ok
}
