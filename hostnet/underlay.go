package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/nlconv"
)

// UnderlayMTU is the MTU of the link that carries host: the link holding host
// as a local address, else the link the kernel routes host through (with the
// route's own MTU if it sets a smaller one).
func UnderlayMTU(host netip.Addr) (int, error) {
	host = host.Unmap()
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return 0, fmt.Errorf("hostnet: list addresses: %w", err)
	}
	for _, a := range addrs {
		if nlconv.Prefix(a.IPNet).Addr() != host {
			continue
		}
		link, err := netlink.LinkByIndex(a.LinkIndex)
		if err != nil {
			return 0, fmt.Errorf("hostnet: link of %s: %w", host, err)
		}
		return link.Attrs().MTU, nil
	}
	routes, err := netlink.RouteGet(net.IP(host.AsSlice()))
	if err != nil || len(routes) == 0 {
		return 0, fmt.Errorf("hostnet: %s is not a local address and has no route: %v", host, err)
	}
	link, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return 0, fmt.Errorf("hostnet: link routing %s: %w", host, err)
	}
	mtu := link.Attrs().MTU
	if routes[0].MTU > 0 && routes[0].MTU < mtu {
		mtu = routes[0].MTU
	}
	return mtu, nil
}

// ErrNoDefaultRoute says there is no IPv4 default route to take an address from.
var ErrNoDefaultRoute = errors.New("no IPv4 default route")

// DefaultRouteAddr is the IPv4 address weft advertises by default: the
// preferred source of the main table's best default route, else the first
// global address of its link.
func DefaultRouteAddr() (netip.Addr, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("hostnet: list routes: %w", err)
	}
	var best *netlink.Route
	for i, r := range routes {
		if nlconv.RouteDst(r).Bits() != 0 || r.LinkIndex == 0 {
			continue
		}
		if best == nil || r.Priority < best.Priority {
			best = &routes[i]
		}
	}
	if best == nil {
		return netip.Addr{}, ErrNoDefaultRoute
	}
	if src, ok := netip.AddrFromSlice(best.Src); ok && src.Unmap().Is4() {
		return src.Unmap(), nil
	}
	link, err := netlink.LinkByIndex(best.LinkIndex)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("hostnet: link of default route: %w", err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("hostnet: addresses of %s: %w", link.Attrs().Name, err)
	}
	for _, a := range addrs {
		if a.Scope == unix.RT_SCOPE_UNIVERSE {
			return nlconv.Prefix(a.IPNet).Addr(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("hostnet: default route's link %s has no global IPv4 address", link.Attrs().Name)
}

// UnderlayLink names the link that holds host as a local address.
func UnderlayLink(host netip.Addr) (string, error) {
	host = host.Unmap()
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return "", fmt.Errorf("hostnet: list addresses: %w", err)
	}
	for _, a := range addrs {
		if nlconv.Prefix(a.IPNet).Addr() != host {
			continue
		}
		link, err := netlink.LinkByIndex(a.LinkIndex)
		if err != nil {
			return "", fmt.Errorf("hostnet: link of %s: %w", host, err)
		}
		return link.Attrs().Name, nil
	}
	return "", fmt.Errorf("hostnet: no link holds %s", host)
}

// LinkAddrs lists the global IPv4 addresses of a link, primary ones first
// (as the kernel lists them).
func LinkAddrs(name string) ([]netip.Addr, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("hostnet: look up %s: %w", name, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("hostnet: addresses of %s: %w", name, err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if a.Scope == unix.RT_SCOPE_UNIVERSE {
			out = append(out, nlconv.Prefix(a.IPNet).Addr())
		}
	}
	return out, nil
}
