// Package nlconv converts between net/netip and the net types that
// vishvananda/netlink speaks, for the packages that program routes.
package nlconv

import (
	"errors"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// IPNet is p as a *net.IPNet.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Prefix is n as a netip.Prefix; the zero Prefix for nil or a bad address.
func Prefix(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

// RouteDst is the route's destination; the kernel reports a default route
// with no destination.
func RouteDst(r netlink.Route) netip.Prefix {
	if r.Dst == nil {
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	return Prefix(r.Dst)
}

// RetryDump repeats a netlink dump the kernel reported as interrupted by a
// concurrent change (netlink.ErrDumpInterrupted): a partial result must not
// be trusted. It gives up after a few tries and returns the last error.
func RetryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var err error
	for range 5 {
		var out []T
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return nil, err
}
