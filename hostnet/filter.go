package hostnet

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The host filter keeps pods away from the agents' ports. Without it a pod
// can send gossip to 6783, forge data-plane datagrams to 6784 (and, once
// masqueraded, they leave with its host's underlay address, which peers
// trust), and read /metrics on 6782. Two chains in table "ip weft":
//
//	input   (filter): iifname { Bridge, TUN, Tunnels... } meta l4proto { tcp, udp } th dport @ports counter drop
//	forward (filter): iifname Bridge ip daddr @peers meta l4proto { tcp, udp } th dport @ports counter drop
//	input   (filter): meta l4proto udp udp dport VXLANPort ip saddr != @peers counter drop   (with VXLANPort)
//
// The input chain covers every address of this host, whatever it is (the
// bridge gateway, the underlay address, any other): traffic from a local
// pod arrives on the bridge, and from a pod on another host on the TUN.
// Agents never talk to each other through the overlay, so nothing of weft's
// own is lost.
//
// The forward chain covers the peers' underlay addresses. It matches those
// addresses only, not every destination on these ports: a pod talking to a
// service in the outside world that happens to use port 6783 is none of
// weft's business, and pod-to-pod traffic never matches since peers'
// underlay addresses are outside the overlay range. The peer set follows
// membership (SetPeers).
//
// The last rule guards the kernel fast path. The VXLAN device learns
// nothing and accepts a frame from any source with the right VNI, so
// without it anyone who can reach the port could put packets with any
// source address into this host's pods. The userspace path refuses
// datagrams from unknown endpoints ("unknown-peer"); this is the same for
// VXLAN.
//
// Drop rather than reject: a pod learns nothing, and a refused probe costs
// the host no ICMP.

// Names of the filter's sets and chains in table "ip weft".
const (
	nftSetPeers     = "peers"
	nftSetPorts     = "ports"
	nftChainInput   = "input"
	nftChainForward = "forward"
)

// guard is the content of the filter's sets.
type guard struct {
	peers []netip.Addr // sorted, unique
	ports []uint16     // sorted, unique
}

func newGuard(peers []netip.Addr, ports ...[]uint16) (guard, error) {
	var g guard
	for _, a := range peers {
		if !a.Unmap().Is4() {
			return g, fmt.Errorf("hostnet: peer address %v is not IPv4", a)
		}
		g.peers = append(g.peers, a.Unmap())
	}
	for _, ps := range ports {
		for _, p := range ps {
			if p == 0 {
				return g, fmt.Errorf("hostnet: port 0 in the host filter")
			}
			g.ports = append(g.ports, p)
		}
	}
	slices.SortFunc(g.peers, netip.Addr.Compare)
	g.peers = slices.Compact(g.peers)
	slices.Sort(g.ports)
	g.ports = slices.Compact(g.ports)
	return g, nil
}

func (g guard) equal(o guard) bool {
	return slices.Equal(g.peers, o.peers) && slices.Equal(g.ports, o.ports)
}

func peerSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: nftSetPeers, KeyType: nftables.TypeIPAddr}
}

func portSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: nftSetPorts, KeyType: nftables.TypeInetService}
}

func (g guard) peerElems() []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(g.peers))
	for _, a := range g.peers {
		b := a.As4()
		out = append(out, nftables.SetElement{Key: b[:]})
	}
	return out
}

func (g guard) portElems() []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(g.ports))
	for _, p := range g.ports {
		out = append(out, nftables.SetElement{Key: binary.BigEndian.AppendUint16(nil, p)})
	}
	return out
}

// addFilter queues the sets, chains and rules of the host filter on conn,
// inside table t that the same transaction creates.
func addFilter(conn *nftables.Conn, t *nftables.Table, cfg Config, g guard) error {
	peers, ports := peerSet(t), portSet(t)
	if err := conn.AddSet(peers, g.peerElems()); err != nil {
		return fmt.Errorf("hostnet: nftables set %s: %w", nftSetPeers, err)
	}
	if err := conn.AddSet(ports, g.portElems()); err != nil {
		return fmt.Errorf("hostnet: nftables set %s: %w", nftSetPorts, err)
	}
	accept := nftables.ChainPolicyAccept
	input := conn.AddChain(&nftables.Chain{
		Name: nftChainInput, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	forward := conn.AddChain(&nftables.Chain{
		Name: nftChainForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	for _, proto := range []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
		for _, iif := range append([]string{cfg.Bridge, cfg.TUN}, cfg.Tunnels...) {
			conn.AddRule(&nftables.Rule{Table: t, Chain: input, Exprs: filterExprs(iif, proto, nil, ports)})
		}
		conn.AddRule(&nftables.Rule{Table: t, Chain: forward, Exprs: filterExprs(cfg.Bridge, proto, peers, ports)})
	}
	if cfg.VXLANPort != 0 {
		conn.AddRule(&nftables.Rule{Table: t, Chain: input, Exprs: vxlanExprs(cfg.VXLANPort, peers)})
	}
	return nil
}

// vxlanExprs is the rule: meta l4proto udp, udp dport port, ip saddr not in
// @peers, counter, drop.
func vxlanExprs(port uint16, peers *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: peers.Name, SetID: peers.ID, Invert: true},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// filterExprs is one drop rule: iifname iif, meta l4proto proto, ip daddr
// @peers (unless peers is nil), th dport @ports, counter, drop.
func filterExprs(iif string, proto byte, peers, ports *nftables.Set) []expr.Any {
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameBytes(iif)},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
	if peers != nil {
		e = append(e,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Lookup{SourceRegister: 1, SetName: peers.Name, SetID: peers.ID},
		)
	}
	return append(e,
		// The destination port is at offset 2 of both the TCP and UDP header.
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: ports.Name, SetID: ports.ID},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	)
}

// keptPeers reads the peer set of the filter a previous run left, if any.
// Every peer ever seen stays in the set (see the agent), and one seen by
// the previous run is no exception.
func keptPeers() []netip.Addr {
	conn, err := nftables.New()
	if err != nil {
		return nil
	}
	set, err := conn.GetSetByName(weftTable, nftSetPeers)
	if err != nil {
		return nil // no table yet: nothing to keep
	}
	elems, err := conn.GetSetElements(set)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, e := range elems {
		if a, ok := netip.AddrFromSlice(e.Key); ok && a.Is4() {
			out = append(out, a)
		}
	}
	return out
}

// updateGuard replaces the contents of both sets in one transaction, so no
// packet sees a half-updated filter.
func updateGuard(g guard) error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("hostnet: nftables: %w", err)
	}
	peers, ports := peerSet(weftTable), portSet(weftTable)
	conn.FlushSet(peers)
	conn.FlushSet(ports)
	// An empty element list is refused by the kernel; a flushed set is empty.
	if e := g.peerElems(); len(e) > 0 {
		if err := conn.SetAddElements(peers, e); err != nil {
			return fmt.Errorf("hostnet: nftables set %s: %w", nftSetPeers, err)
		}
	}
	if e := g.portElems(); len(e) > 0 {
		if err := conn.SetAddElements(ports, e); err != nil {
			return fmt.Errorf("hostnet: nftables set %s: %w", nftSetPorts, err)
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("hostnet: update the host filter of table ip %s: %w", NftTable, err)
	}
	return nil
}

// SetPeers points the host filter at the current peers: pods may not reach
// ports (beside the agent's own Config.Ports) on any of the peers' underlay
// addresses. Call it on every membership change; an unchanged set costs no
// netlink round trip.
func (h *Host) SetPeers(peers []netip.Addr, ports []uint16) error {
	g, err := newGuard(append(slices.Clone(peers), h.kept...), h.cfg.Ports, ports)
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if g.equal(h.guard) {
		return nil
	}
	if err := updateGuard(g); err != nil {
		return err
	}
	h.guard = g
	h.log.Info("host filter updated", "peers", len(g.peers), "ports", g.ports)
	return nil
}
