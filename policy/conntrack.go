package policy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	mdnetlink "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netnstest"
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

// ctnetlink constants not in x/sys/unix or vishvananda/netlink/nl
// (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const (
	ctaFilter            = 25 // CTA_FILTER
	ctaStatusMask        = 26 // CTA_STATUS_MASK
	ctaFilterOrigFlags   = 1  // CTA_FILTER_ORIG_FLAGS
	ctaFilterReplyFlags  = 2  // CTA_FILTER_REPLY_FLAGS
	ctaFilterFlagIPSrc   = 1 << 0
	ctaFilterFlagIPDst   = 1 << 1
	ipsSeenReply         = 1 << 1 // IPS_SEEN_REPLY
	ipctnlMsgCtDelete    = 2      // IPCTNL_MSG_CT_DELETE
	nfnetlinkVersionFlag = 1      // nfgenmsg.version != 0: the flush is per family
)

// ErrNoCtFilter means the kernel refused the filtered delete (CTA_FILTER
// and CTA_STATUS_MASK on IPCTNL_MSG_CT_DELETE, which older kernels do not
// take): the caller falls back to ForgetFlows, off the ADD path.
var ErrNoCtFilter = errors.New("policy: the kernel does not delete conntrack entries by filter")

// ForgetUnreplied deletes the conntrack entries that never saw a reply and
// whose original direction goes to or comes from addr, in the Engine's
// network namespace. The kernel does the filtering (one netlink request
// per direction, no dump of the table), so it is cheap enough for the CNI
// ADD path. Why: packets sent to an address before its pod existed left
// unreplied entries (a SYN, a ping, a UDP datagram) that the policy did not
// judge as the pod's; once the pod answers, the flow would be established
// past its rules. Entries with a reply belong to flows someone already let
// through and are left alone. On a kernel without the filter it answers
// ErrNoCtFilter (wrapped) and deletes nothing.
func (e *Engine) ForgetUnreplied(addr netip.Addr) error {
	addr = addr.Unmap()
	if !addr.Is4() {
		return nil // the policy is IPv4 only
	}
	return e.kern.forgetUnreplied(addr)
}

func forgetUnreplied(cfg Config, addr netip.Addr) error {
	var c *mdnetlink.Conn
	err := netnstest.Do(cfg.NetNS, func() (err error) {
		// The socket belongs to the namespace it is made in.
		c, err = mdnetlink.Dial(unix.NETLINK_NETFILTER, nil)
		return err
	})
	if err != nil {
		return fmt.Errorf("policy: conntrack netlink: %w", err)
	}
	defer c.Close()
	for _, dir := range []struct {
		ip   uint16
		flag uint32
	}{{nl.CTA_IP_V4_DST, ctaFilterFlagIPDst}, {nl.CTA_IP_V4_SRC, ctaFilterFlagIPSrc}} {
		data, err := unrepliedFilter(addr, dir.ip, dir.flag)
		if err != nil {
			return err
		}
		msg := mdnetlink.Message{
			Header: mdnetlink.Header{
				Type:  mdnetlink.HeaderType(unix.NFNL_SUBSYS_CTNETLINK<<8 | ipctnlMsgCtDelete),
				Flags: mdnetlink.Request | mdnetlink.Acknowledge,
			},
			Data: data,
		}
		if _, err := c.Execute(msg); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("%w: %w", ErrNoCtFilter, err)
			}
			return fmt.Errorf("policy: delete unreplied conntrack entries of %s: %w", addr, err)
		}
	}
	return nil
}

// unrepliedFilter is the body of a ctnetlink delete of the IPv4 entries
// whose original tuple has addr as ipAttr (source or destination) and
// whose status lacks IPS_SEEN_REPLY.
func unrepliedFilter(addr netip.Addr, ipAttr uint16, flag uint32) ([]byte, error) {
	ae := mdnetlink.NewAttributeEncoder()
	ae.Nested(nl.CTA_TUPLE_ORIG, func(ae *mdnetlink.AttributeEncoder) error {
		ae.Nested(nl.CTA_TUPLE_IP, func(ae *mdnetlink.AttributeEncoder) error {
			a := addr.As4()
			ae.Bytes(ipAttr, a[:])
			return nil
		})
		return nil
	})
	ae.Bytes(nl.CTA_STATUS, binary.BigEndian.AppendUint32(nil, 0))
	ae.Bytes(ctaStatusMask, binary.BigEndian.AppendUint32(nil, ipsSeenReply))
	ae.Nested(ctaFilter, func(ae *mdnetlink.AttributeEncoder) error {
		ae.Bytes(ctaFilterOrigFlags, binary.NativeEndian.AppendUint32(nil, flag))
		ae.Bytes(ctaFilterReplyFlags, binary.NativeEndian.AppendUint32(nil, 0))
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		return nil, fmt.Errorf("policy: conntrack filter: %w", err)
	}
	// struct nfgenmsg: family, version, resource id (big endian).
	return append([]byte{unix.AF_INET, nfnetlinkVersionFlag, 0, 0}, attrs...), nil
}
