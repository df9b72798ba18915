package hostnet

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/google/nftables/expr"
)

func TestNewGuardSortsAndDedups(t *testing.T) {
	g, err := newGuard([]netip.Addr{netip.MustParseAddr("198.18.0.3"), netip.MustParseAddr("::ffff:198.18.0.2"), netip.MustParseAddr("198.18.0.3")},
		[]uint16{6783, 6784, 6782}, []uint16{6784, 7000, 6783})
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Addr{netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.3")}; !slices.Equal(g.peers, want) {
		t.Errorf("peers %v, want %v", g.peers, want)
	}
	if want := []uint16{6782, 6783, 6784, 7000}; !slices.Equal(g.ports, want) {
		t.Errorf("ports %v, want %v", g.ports, want)
	}
	if e := g.portElems(); len(e) != 4 || !slices.Equal(e[3].Key, []byte{0x1b, 0x58}) {
		t.Errorf("port elements %v: want big-endian 7000 last", e)
	}
	if _, err := newGuard([]netip.Addr{netip.MustParseAddr("2001:db8::1")}, []uint16{6783}); err == nil {
		t.Error("an IPv6 peer address was accepted into an IPv4 set")
	}
	if _, err := newGuard(nil, []uint16{0}); err == nil {
		t.Error("port 0 was accepted")
	}
	c := testConfig()
	c.Ports = nil
	if err := c.validate(); err == nil {
		t.Error("a Config without ports to filter was accepted")
	}
}

// The forward rule matches the peer set, the input rules do not: a pod's
// traffic to the outside world on these ports must pass.
// The fast path's rule drops UDP to the VXLAN port from sources outside the
// peer set: an inverted lookup of the source address.
func TestVXLANExprsShape(t *testing.T) {
	e := vxlanExprs(6786, peerSet(weftTable))
	var inverted, port bool
	for _, x := range e {
		switch x := x.(type) {
		case *expr.Lookup:
			inverted = x.SetName == nftSetPeers && x.Invert
		case *expr.Cmp:
			port = port || slices.Equal(x.Data, []byte{0x1a, 0x82})
		}
	}
	if !inverted || !port {
		t.Fatalf("rule %#v: want port 6786 and source not in @peers", e)
	}
	if v, ok := e[len(e)-1].(*expr.Verdict); !ok || v.Kind != expr.VerdictDrop {
		t.Fatalf("rule ends in %#v, want drop", e[len(e)-1])
	}
}

func TestFilterExprsShape(t *testing.T) {
	lookups := func(e []expr.Any) []string {
		var out []string
		for _, x := range e {
			if l, ok := x.(*expr.Lookup); ok {
				out = append(out, l.SetName)
			}
		}
		return out
	}
	ports, peers := portSet(weftTable), peerSet(weftTable)
	if got := lookups(filterExprs("weft", 6, nil, ports)); !slices.Equal(got, []string{nftSetPorts}) {
		t.Errorf("input rule looks up %v, want only the ports", got)
	}
	fwd := filterExprs("weft", 17, peers, ports)
	if got := lookups(fwd); !slices.Equal(got, []string{nftSetPeers, nftSetPorts}) {
		t.Errorf("forward rule looks up %v, want peers then ports", got)
	}
	if v, ok := fwd[len(fwd)-1].(*expr.Verdict); !ok || v.Kind != expr.VerdictDrop {
		t.Errorf("forward rule ends in %#v, want drop", fwd[len(fwd)-1])
	}
}
