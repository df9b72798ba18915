package fastdp

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/weftnet/weft/mesh"
)

// Self is this host's side of the per-pair choice.
type Self struct {
	// Enabled: this host offers the fast path (--datapath, no password, the
	// kernel made the device). Reason says why not otherwise.
	Enabled     bool
	Reason      string
	VNI         uint32
	Port        uint16
	UnderlayMTU int
	Range       netip.Prefix // the overlay range: nothing outside it is routed
	Src         netip.Addr   // this host's overlay address, source of its own packets
}

// ProbeState is what the probe across VXLAN says about a peer.
type ProbeState int

// Probe states.
const (
	ProbePending ProbeState = iota // no answer yet, not yet given up
	ProbeUp                        // answered recently
	ProbeDown                      // no answer for the probe timeout
)

func (s ProbeState) String() string {
	switch s {
	case ProbeUp:
		return "up"
	case ProbeDown:
		return "down"
	}
	return "pending"
}

// PeerView is what Plan needs to know of one remote peer.
type PeerView struct {
	Name      string
	Underlay  netip.Addr
	Encrypted bool
	VXLAN     *mesh.VXLAN    // nil: the peer offers no fast path
	Ranges    []netip.Prefix // what it owns in the ring, as CIDR prefixes
	Probe     ProbeState
	// Routed: the kernel routes this peer through the fast path now. A
	// pending peer keeps that, so a restarted agent changes nothing before
	// its first probe round.
	Routed bool
}

// Decision is the datapath of one pair and, off the fast path, why.
type Decision struct {
	Peer   string
	Fast   bool
	Reason string // "" when Fast
}

// Desired is the kernel state Sync converges to.
type Desired struct {
	Src   netip.Addr // source hint of the routes (this host's overlay address)
	Peers []PeerEntry
	// Prune removes entries of peers not in Peers. Off while the picture is
	// incomplete (an agent just restarted and has not heard of every ring
	// owner), so that nothing still in use is torn down.
	Prune bool
}

// Equal reports whether d and o ask for the same kernel state.
func (d Desired) Equal(o Desired) bool {
	return d.Src == o.Src && d.Prune == o.Prune && slices.EqualFunc(d.Peers, o.Peers, PeerEntry.Equal)
}

// PeerEntry is one peer's neighbour and FDB entries and, on the fast path,
// its routes. Every candidate gets the first two, so that it can be probed.
type PeerEntry struct {
	Name     string
	Underlay netip.Addr
	MAC      net.HardwareAddr
	MTU      int            // route MTU: the smaller underlay minus Overhead
	Prefixes []netip.Prefix // routed through the device; empty off the fast path
}

// Equal reports whether e and o are the same entries.
func (e PeerEntry) Equal(o PeerEntry) bool {
	return e.Name == o.Name && e.Underlay == o.Underlay && e.MTU == o.MTU &&
		slices.Equal(e.MAC, o.MAC) && slices.Equal(e.Prefixes, o.Prefixes)
}

// Reasons a pair is not on the fast path, as shown by `weft status connections`.
const (
	ReasonNoVXLAN    = "peer offers no fast path (it runs --datapath userspace, has a password, or its kernel has no VXLAN)"
	ReasonEncrypted  = "encrypted pairs stay in userspace"
	ReasonNoAddress  = "peer's underlay address unknown"
	ReasonProbing    = "probing the VXLAN path"
	ReasonProbeDown  = "no answer across VXLAN (is UDP port %d blocked between the hosts?)"
	reasonMismatch   = "peer's VXLAN VNI/port %d/%d differ from this host's %d/%d"
	ReasonNoFastPath = "this host runs the userspace path only"
)

// Plan decides the datapath of every pair and the kernel state that goes
// with it. It is a pure function of its inputs; peers are taken in order.
func Plan(self Self, peers []PeerView) (Desired, []Decision) {
	want := Desired{Src: self.Src}
	decisions := make([]Decision, 0, len(peers))
	for _, p := range peers {
		d := Decision{Peer: p.Name}
		reason := ""
		switch {
		case !self.Enabled:
			reason = self.Reason
			if reason == "" {
				reason = ReasonNoFastPath
			}
		case p.Encrypted:
			reason = ReasonEncrypted
		case p.VXLAN == nil:
			reason = ReasonNoVXLAN
		case p.VXLAN.VNI != self.VNI || p.VXLAN.Port != self.Port:
			reason = fmt.Sprintf(reasonMismatch, p.VXLAN.VNI, p.VXLAN.Port, self.VNI, self.Port)
		case !p.Underlay.Is4():
			reason = ReasonNoAddress
		}
		if reason != "" {
			d.Reason = reason
			decisions = append(decisions, d)
			continue
		}
		e := PeerEntry{
			Name: p.Name, Underlay: p.Underlay, MAC: net.HardwareAddr(p.VXLAN.MAC[:]),
			MTU: min(self.UnderlayMTU, int(p.VXLAN.UnderlayMTU)) - Overhead,
		}
		switch {
		case p.Probe == ProbeUp, p.Probe == ProbePending && p.Routed:
			d.Fast = true
			e.Prefixes = routable(self, p.Ranges)
		case p.Probe == ProbePending:
			d.Reason = ReasonProbing
		default:
			d.Reason = fmt.Sprintf(ReasonProbeDown, self.Port)
		}
		want.Peers = append(want.Peers, e)
		decisions = append(decisions, d)
	}
	return want, decisions
}

// routable keeps the valid IPv4 prefixes inside the overlay range that do
// not hold this host's own address, masked, sorted and without duplicates.
func routable(self Self, ranges []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ranges))
	for _, r := range ranges {
		if !r.IsValid() || !r.Addr().Is4() {
			continue
		}
		r = r.Masked()
		if self.Range.IsValid() && (r.Bits() < self.Range.Bits() || !self.Range.Contains(r.Addr())) {
			continue
		}
		if self.Src.IsValid() && r.Contains(self.Src) {
			continue // a stale ring view; this host's range is on its bridge
		}
		out = append(out, r)
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
