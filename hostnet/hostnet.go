// Package hostnet sets up the host side of weft: the bridge pods attach to,
// the routes that send this host's ranges to the bridge and the rest of the
// overlay to the TUN, the sysctls forwarding needs, the masquerade of
// pod traffic leaving the overlay, and the filter that keeps pods away from
// the agents' ports.
//
// Everything is idempotent and works in the network namespace of the calling
// thread, so an agent relaunched over running pods converges to the same
// state without disturbing them.
package hostnet

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/logx"
	"github.com/weftnet/weft/internal/nlconv"
	"golang.org/x/sys/unix"
)

// RouteProtocol marks the routes weft owns ("proto 87" in `ip route`), so
// they can be told from everyone else's and removed on reset. 87 is 'W'; it
// is not among the numbers iproute2 and the common routing daemons use.
const RouteProtocol netlink.RouteProtocol = 87

// OverlayMetric is the metric of the whole-range route to the TUN. It loses
// to the bridge route of a local range with the same prefix (metric 0).
const OverlayMetric = 1000

// FailClosedMetric is the metric of the "unreachable" route for the whole
// overlay range. It loses to the TUN route while the data plane runs, and
// outlives the agent: when the TUN goes away (stop, kill -9, restart, crash
// loop) pod traffic to other hosts meets "unreachable" instead of falling
// through to the default route and leaving the host unencrypted. Only
// `weft reset` (Teardown) removes it.
const FailClosedMetric = 4000

// Config is the host network weft sets up.
type Config struct {
	Bridge string // bridge pods attach to, e.g. "weft"
	TUN    string // TUN device of the data plane, e.g. "weft-tun"; created by the data plane
	// Tunnels are other links on which packets of remote pods arrive (the
	// kernel fast path's VXLAN device); the host filter covers them as it
	// covers the TUN.
	Tunnels []string
	// VXLANPort, when not 0, is the kernel fast path's UDP port: only the
	// peers' underlay addresses may send to it (see filter.go).
	VXLANPort uint16
	Range     netip.Prefix // the whole overlay range
	HostAddr  netip.Addr   // this host's overlay address: /32 on the bridge, the pods' gateway
	MTU       int          // bridge MTU (overlay MTU); 0 leaves it
	// Ports are the agent's ports (gossip, data, metrics, health) that pods
	// may not reach on this host or on a peer (see filter.go); required.
	Ports []uint16
	// Peers are the peers' underlay addresses known at Setup; SetPeers
	// keeps them current.
	Peers  []netip.Addr
	Logger *slog.Logger
}

func (c *Config) validate() error {
	if err := checkLinkName("Bridge", c.Bridge); err != nil {
		return err
	}
	if err := checkLinkName("TUN", c.TUN); err != nil {
		return err
	}
	if !c.Range.IsValid() || !c.Range.Addr().Is4() {
		return fmt.Errorf("hostnet: Range %v is not an IPv4 prefix", c.Range)
	}
	c.Range = c.Range.Masked()
	if !c.HostAddr.Is4() || !c.Range.Contains(c.HostAddr) {
		return fmt.Errorf("hostnet: HostAddr %v is not inside Range %v", c.HostAddr, c.Range)
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return fmt.Errorf("hostnet: MTU %d is outside 68..65535", c.MTU)
	}
	if len(c.Ports) == 0 {
		return errors.New("hostnet: no agent ports for the host filter")
	}
	return nil
}

func checkLinkName(field, name string) error {
	if name == "" || len(name) >= unix.IFNAMSIZ {
		return fmt.Errorf("hostnet: %s name %q must have 1..%d characters", field, name, unix.IFNAMSIZ-1)
	}
	return nil
}

// Host is the set-up host network; its methods keep it in step.
type Host struct {
	cfg Config
	log *slog.Logger

	// mu serialises every change of the host network: the agent changes
	// routes, the filter and repairs from different goroutines.
	mu    sync.Mutex
	guard guard        // what the filter's sets hold
	kept  []netip.Addr // peers of a previous run's filter, kept as peers (SetPeers)

	// What the reconcile loop (Check, Repair) compares the host with.
	local     []netip.Prefix    // last SyncLocalRanges
	overlay   bool              // RouteOverlay succeeded: the TUN and its route must exist
	tuned     map[string]string // sysctls set (or found set): path -> value
	bridgeMAC net.HardwareAddr  // last seen; a re-created bridge gets it back
	// tableGen: the nftables generation when a check last found table ip
	// weft whole (tableGenOK); tableReads counts the checks that read it.
	tableGen   uint32
	tableGenOK bool
	tableReads int
}

// Setup brings the host network to the state cfg describes: bridge up with
// HostAddr/32 (replacing a stale weft address), IPv4 forwarding on, loose
// reverse-path filtering and no ICMP redirects on the bridge, and the
// nftables table (masquerade and host filter). Running it
// again with pods attached changes nothing they depend on.
func Setup(cfg Config) (*Host, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	// A relaunched agent learns its peers by gossip only after Setup; the
	// peers of the filter it replaces stay until then, so that the VXLAN
	// rule does not drop their fast-path traffic meanwhile.
	kept := keptPeers()
	g, err := newGuard(append(slices.Clone(cfg.Peers), kept...), cfg.Ports)
	if err != nil {
		return nil, err
	}
	h := &Host{cfg: cfg, log: logx.OrDiscard(cfg.Logger), guard: g, tuned: map[string]string{}, kept: kept}
	br, err := h.ensureBridge()
	if err != nil {
		return nil, err
	}
	if err := h.ensureHostAddr(br); err != nil {
		return nil, err
	}
	if err := h.bridgeSysctls(); err != nil {
		return nil, err
	}
	if err := h.ensureFailClosed(); err != nil {
		return nil, err
	}
	if err := installTable(cfg, g); err != nil {
		return nil, err
	}
	h.log.Info("host network ready", "bridge", cfg.Bridge, "host_addr", cfg.HostAddr, "range", cfg.Range, "mtu", cfg.MTU,
		"filtered_ports", g.ports, "peers", len(g.peers))
	return h, nil
}

// bridgeSysctls turns forwarding on and tunes the bridge's kernel settings.
func (h *Host) bridgeSysctls() error {
	if err := writeSysctl(sysctlForward, "1"); err != nil {
		return err
	}
	h.tuned[sysctlForward] = "1"
	// The rest is tuning, not correctness: in an unprivileged container
	// /proc/sys is read-only, and weft still works with the defaults.
	h.tune(rpFilterPath(h.cfg.Bridge), "2")
	// Pod to pod on this host goes in and out of the bridge through the
	// host's routing; a redirect would teach pods to bypass the gateway.
	h.tune("/proc/sys/net/ipv4/conf/"+h.cfg.Bridge+"/send_redirects", "0")
	return nil
}

func (h *Host) ensureBridge() (netlink.Link, error) {
	name := h.cfg.Bridge
	link, err := netlink.LinkByName(name)
	if err != nil {
		if !isNotFound(err) {
			return nil, fmt.Errorf("hostnet: look up bridge %s: %w", name, err)
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		attrs.MTU = h.cfg.MTU
		// A re-created bridge keeps the MAC address its pods have in their
		// neighbour tables: with a new one they could not reach their
		// gateway until those entries expire.
		attrs.HardwareAddr = h.bridgeMAC
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("hostnet: create bridge %s: %w", name, err)
		}
		h.log.Info("created bridge", "bridge", name)
		if link, err = netlink.LinkByName(name); err != nil {
			return nil, fmt.Errorf("hostnet: look up new bridge %s: %w", name, err)
		}
	}
	if link.Type() != "bridge" {
		return nil, fmt.Errorf("hostnet: link %s is a %s, not a bridge", name, link.Type())
	}
	if h.cfg.MTU != 0 && link.Attrs().MTU != h.cfg.MTU {
		if err := netlink.LinkSetMTU(link, h.cfg.MTU); err != nil {
			return nil, fmt.Errorf("hostnet: set MTU %d on %s: %w", h.cfg.MTU, name, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("hostnet: set %s up: %w", name, err)
		}
	}
	h.bridgeMAC = slices.Clone(link.Attrs().HardwareAddr)
	return link, nil
}

// bridgeAddrs reads the bridge's IPv4 addresses in Range: whether
// HostAddr/32 is among them, and the stale others. An address outside Range
// is someone else's and is not reported.
func (h *Host) bridgeAddrs(br netlink.Link) (have bool, stale []netlink.Addr, err error) {
	want := netip.PrefixFrom(h.cfg.HostAddr, 32)
	addrs, err := netlink.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		return false, nil, fmt.Errorf("hostnet: list addresses of %s: %w", h.cfg.Bridge, err)
	}
	for _, a := range addrs {
		p := nlconv.Prefix(a.IPNet)
		switch {
		case p == want:
			have = true
		case h.cfg.Range.Contains(p.Addr()):
			stale = append(stale, a)
		}
	}
	return have, stale, nil
}

// ensureHostAddr leaves exactly HostAddr/32 among the bridge's addresses in
// Range. An address outside Range is someone else's and stays.
func (h *Host) ensureHostAddr(br netlink.Link) error {
	have, stale, err := h.bridgeAddrs(br)
	if err != nil {
		return err
	}
	for _, a := range stale {
		p := nlconv.Prefix(a.IPNet)
		if err := netlink.AddrDel(br, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("hostnet: remove stale address %s from %s: %w", p, h.cfg.Bridge, err)
		}
		h.log.Info("removed stale bridge address", "bridge", h.cfg.Bridge, "addr", p)
	}
	if have {
		return nil
	}
	want := netip.PrefixFrom(h.cfg.HostAddr, 32)
	if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: nlconv.IPNet(want)}); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("hostnet: add %s to %s: %w", want, h.cfg.Bridge, err)
	}
	return nil
}

// SyncLocalRanges makes the routes "prefix dev <bridge> scope link proto 87"
// exactly prefixes: missing ones are added, weft routes on the bridge not in
// the list are removed; routes of anyone else are left alone.
func (h *Host) SyncLocalRanges(prefixes []netip.Prefix) error {
	local := make([]netip.Prefix, 0, len(prefixes))
	for _, p := range prefixes {
		if !p.IsValid() || !p.Addr().Is4() {
			return fmt.Errorf("hostnet: local range %v is not an IPv4 prefix", p)
		}
		local = append(local, p.Masked())
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.local = local
	return h.syncLocalRanges()
}

func (h *Host) syncLocalRanges() error {
	want := make(map[netip.Prefix]bool, len(h.local))
	for _, p := range h.local {
		want[p] = true
	}
	br, err := netlink.LinkByName(h.cfg.Bridge)
	if err != nil {
		return fmt.Errorf("hostnet: look up bridge %s: %w", h.cfg.Bridge, err)
	}
	routes, err := weftRoutes(br.Attrs().Index)
	if err != nil {
		return err
	}
	have := make(map[netip.Prefix]bool, len(routes))
	for _, r := range routes {
		dst := nlconv.RouteDst(r)
		if want[dst] && r.Scope == netlink.SCOPE_LINK {
			have[dst] = true
			continue
		}
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("hostnet: remove stale route %s dev %s: %w", dst, h.cfg.Bridge, err)
		}
		h.log.Info("removed local range route", "prefix", dst)
	}
	for p := range want {
		if have[p] {
			continue
		}
		r := &netlink.Route{
			LinkIndex: br.Attrs().Index,
			Dst:       nlconv.IPNet(p),
			Scope:     netlink.SCOPE_LINK,
			Protocol:  RouteProtocol,
			Table:     unix.RT_TABLE_MAIN,
		}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("hostnet: route %s dev %s: %w", p, h.cfg.Bridge, err)
		}
		h.log.Info("added local range route", "prefix", p)
	}
	return nil
}

// ensureFailClosed installs the unreachable route for the overlay range (see
// FailClosedMetric).
func (h *Host) ensureFailClosed() error {
	r := &netlink.Route{
		Dst:      nlconv.IPNet(h.cfg.Range),
		Type:     unix.RTN_UNREACHABLE,
		Priority: FailClosedMetric,
		Protocol: RouteProtocol,
		Table:    unix.RT_TABLE_MAIN,
	}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("hostnet: fail-closed route unreachable %s metric %d: %w", h.cfg.Range, FailClosedMetric, err)
	}
	return nil
}

// RouteOverlay routes the whole overlay range to the TUN ("Range dev <TUN>
// src HostAddr metric 1000 proto 87") and loosens reverse-path filtering on
// it, since packets from remote pods arrive there. Call it once the data
// plane has created the TUN; calling it again changes nothing.
func (h *Host) RouteOverlay() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.routeOverlay(); err != nil {
		return err
	}
	h.overlay = true
	return nil
}

func (h *Host) routeOverlay() error {
	tun, err := netlink.LinkByName(h.cfg.TUN)
	if err != nil {
		if isNotFound(err) {
			err = fmt.Errorf("%w: %w", ErrTUNGone, err)
		}
		return fmt.Errorf("hostnet: look up TUN %s (does the data plane run?): %w", h.cfg.TUN, err)
	}
	h.tune(rpFilterPath(h.cfg.TUN), "2")
	// weft carries IPv4 only; without this the kernel sends IPv6 router
	// solicitations into the TUN, which the data plane can only drop.
	h.tune("/proc/sys/net/ipv6/conf/"+h.cfg.TUN+"/disable_ipv6", "1")
	// The host's overlay address on the TUN too: without an address of its
	// own the kernel's reverse-path check (rp_filter 1 or 2) drops every
	// packet arriving on the TUN whose source is routed through another
	// link, which is the case while a pair uses the kernel fast path one
	// way and the userspace path the other.
	if err := netlink.AddrAdd(tun, &netlink.Addr{IPNet: nlconv.IPNet(netip.PrefixFrom(h.cfg.HostAddr, 32))}); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("hostnet: add %s/32 to %s: %w", h.cfg.HostAddr, h.cfg.TUN, err)
	}
	routes, err := weftRoutes(tun.Attrs().Index)
	if err != nil {
		return err
	}
	for _, r := range routes {
		if nlconv.RouteDst(r) != h.cfg.Range || r.Priority != OverlayMetric {
			if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("hostnet: remove stale overlay route %s: %w", nlconv.RouteDst(r), err)
			}
		}
	}
	r := &netlink.Route{
		LinkIndex: tun.Attrs().Index,
		Dst:       nlconv.IPNet(h.cfg.Range),
		Src:       net.IP(h.cfg.HostAddr.AsSlice()),
		Priority:  OverlayMetric,
		Protocol:  RouteProtocol,
		Table:     unix.RT_TABLE_MAIN,
	}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("hostnet: route %s dev %s: %w", h.cfg.Range, h.cfg.TUN, err)
	}
	return nil
}

// tune sets a sysctl that is tuning, not correctness; one that cannot be
// set is logged and left out of the reconcile loop's checks.
func (h *Host) tune(path, value string) {
	if err := writeSysctl(path, value); err != nil {
		h.log.Warn("kernel setting left as it is (read-only /proc/sys?)", "err", err)
		delete(h.tuned, path)
		return
	}
	h.tuned[path] = value
}

// SetMTU changes the bridge MTU, e.g. when the underlay's changes. Running
// pods keep theirs until they are re-created.
func (h *Host) SetMTU(mtu int) error {
	if mtu < 68 || mtu > 65535 {
		return fmt.Errorf("hostnet: MTU %d is outside 68..65535", mtu)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	br, err := netlink.LinkByName(h.cfg.Bridge)
	if err != nil {
		return fmt.Errorf("hostnet: look up bridge %s: %w", h.cfg.Bridge, err)
	}
	if br.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(br, mtu); err != nil {
			return fmt.Errorf("hostnet: set MTU %d on %s: %w", mtu, h.cfg.Bridge, err)
		}
	}
	h.cfg.MTU = mtu
	return nil
}

// Teardown removes what Setup and the route methods made: the bridge (with
// its address and local range routes), every route marked as weft's, and the
// masquerade table. Pods attached to the bridge lose their network. Nothing
// left to remove is success.
func Teardown(bridge string, log *slog.Logger) error {
	log = logx.OrDiscard(log)
	var errs []error
	if link, err := netlink.LinkByName(bridge); err == nil {
		if link.Type() != "bridge" {
			errs = append(errs, fmt.Errorf("hostnet: link %s is a %s, not a bridge: not deleting it", bridge, link.Type()))
		} else if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("hostnet: delete bridge %s: %w", bridge, err))
		} else {
			log.Info("deleted bridge", "bridge", bridge)
		}
	} else if !isNotFound(err) {
		errs = append(errs, fmt.Errorf("hostnet: look up bridge %s: %w", bridge, err))
	}
	routes, err := weftRoutes(0)
	if err != nil {
		errs = append(errs, err)
	}
	for _, r := range routes {
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("hostnet: delete route %s: %w", nlconv.RouteDst(r), err))
		}
	}
	if err := deleteMasquerade(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// weftRoutes lists the IPv4 routes of the main table marked as weft's,
// on one link (linkIndex > 0) or on all.
func weftRoutes(linkIndex int) ([]netlink.Route, error) {
	filter := &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN, LinkIndex: linkIndex}
	mask := netlink.RT_FILTER_PROTOCOL | netlink.RT_FILTER_TABLE
	if linkIndex > 0 {
		mask |= netlink.RT_FILTER_OIF
	}
	routes, err := nlconv.RetryDump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_V4, filter, mask)
	})
	if err != nil {
		return nil, fmt.Errorf("hostnet: list weft routes: %w", err)
	}
	return slices.DeleteFunc(routes, func(r netlink.Route) bool { return r.Protocol != RouteProtocol }), nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}
