package hostnet

import (
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// The leak guard is the second layer of failing closed. The first is the
// unreachable route at FailClosedMetric, which catches pod traffic when the
// TUN is gone. Routes can be flushed, though (`ip route flush`, a cleanup
// script, another network agent), and then traffic for other hosts' pods
// follows the default route and leaves by the underlay unencrypted until
// the reconcile loop puts the routes back. The guard drops that traffic
// whatever the routing table says:
//
//	failclosed (filter, postrouting): ip daddr Range oifname != { Bridge, TUN, Tunnels..., lo } counter drop
//
// Packets for the overlay range leave only towards local pods (the bridge),
// through the data plane (the TUN, the fast path's VXLAN device), or are
// delivered locally (lo). It lives in table ip weft, which outlives the
// agent like the route; `weft reset` removes both.

// nftChainFailClosed is the leak guard's chain in table ip weft.
const nftChainFailClosed = "failclosed"

// addLeakGuard queues the leak guard's chain and rule on conn, inside table
// t that the same transaction creates.
func addLeakGuard(conn *nftables.Conn, t *nftables.Table, cfg Config) {
	accept := nftables.ChainPolicyAccept
	chain := conn.AddChain(&nftables.Chain{
		Name: nftChainFailClosed, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	conn.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: leakGuardExprs(cfg)})
}

// leakGuardOutputs are the links that overlay traffic may leave by.
func leakGuardOutputs(cfg Config) []string {
	return append([]string{cfg.Bridge, cfg.TUN, "lo"}, cfg.Tunnels...)
}

// leakGuardExprs is the guard's rule body; kept apart so a test can check it.
func leakGuardExprs(cfg Config) []expr.Any {
	addr := cfg.Range.Masked().Addr().As4()
	mask := prefixMask(cfg.Range.Bits())
	e := []expr.Any{
		// ip daddr Range
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask[:], Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:]},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
	}
	// oifname != each allowed link: every comparison must hold to reach
	// the drop, and comparing leaves the register as it was.
	for _, name := range leakGuardOutputs(cfg) {
		if name == "" {
			continue
		}
		e = append(e, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifnameBytes(name)})
	}
	return append(e, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
}
