package policy

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ForgetFlows deletes the conntrack entries of flows from or to addrs in
// the Engine's network namespace, and reports how many went. Call it when a
// pod's address is released: `ct state established,related accept` comes
// before every policy rule, so a new pod given the address would otherwise
// inherit the old pod's established flows whatever its own policies say.
// It dumps the whole conntrack table: call it off the CNI ADD path.
func (e *Engine) ForgetFlows(addrs ...netip.Addr) (int, error) {
	f := flowFilter{}
	for _, a := range addrs {
		f[a.Unmap()] = true
	}
	if len(f) == 0 {
		return 0, nil
	}
	return e.kern.forgetFlows(f)
}

// flowFilter matches flows with any of its addresses at either end, before
// or after NAT.
type flowFilter map[netip.Addr]bool

func (f flowFilter) has(ip net.IP) bool {
	a, ok := netip.AddrFromSlice(ip)
	return ok && f[a.Unmap()]
}

func (f flowFilter) MatchConntrackFlow(fl *netlink.ConntrackFlow) bool {
	return f.has(fl.Forward.SrcIP) || f.has(fl.Forward.DstIP) || f.has(fl.Reverse.SrcIP) || f.has(fl.Reverse.DstIP)
}

func forgetFlows(cfg Config, f flowFilter) (int, error) {
	h, err := netlinkHandle(cfg.NetNS, unix.NETLINK_NETFILTER)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	n, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f)
	if err != nil {
		return int(n), fmt.Errorf("policy: delete conntrack entries: %w", err)
	}
	return int(n), nil
}

// netlinkHandle opens a netlink handle for proto in namespace ns (a name or
// a path; "" is the current one). Only proto may be used on it: the library
// would open any other protocol's socket in the calling thread's namespace.
func netlinkHandle(ns string, proto int) (*netlink.Handle, error) {
	if ns == "" {
		h, err := netlink.NewHandle(proto)
		if err != nil {
			return nil, fmt.Errorf("policy: netlink: %w", err)
		}
		return h, nil
	}
	var nh netns.NsHandle
	var err error
	if strings.Contains(ns, "/") {
		nh, err = netns.GetFromPath(ns)
	} else {
		nh, err = netns.GetFromName(ns)
	}
	if err != nil {
		return nil, fmt.Errorf("policy: network namespace %s: %w", ns, err)
	}
	defer nh.Close()
	h, err := netlink.NewHandleAt(nh, proto)
	if err != nil {
		return nil, fmt.Errorf("policy: netlink in %s: %w", ns, err)
	}
	return h, nil
}
