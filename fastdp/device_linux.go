package fastdp

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/hostnet"
	"github.com/weftnet/weft/internal/logx"
	"github.com/weftnet/weft/internal/nlconv"
)

// Config is the VXLAN device of this host.
type Config struct {
	Device string           // link name, DefaultDevice
	VNI    uint32           // 24 bits
	Port   uint16           // UDP port the device sends to and listens on
	Local  netip.Addr       // this host's underlay address, the outer source
	MAC    net.HardwareAddr // the device's MAC, see MAC
	MTU    int              // underlay MTU minus Overhead
	Logger *slog.Logger
}

func (c *Config) validate() error {
	switch {
	case c.Device == "" || len(c.Device) >= unix.IFNAMSIZ:
		return fmt.Errorf("%w: device name %q", ErrInvalid, c.Device)
	case c.VNI == 0 || c.VNI >= 1<<24:
		return fmt.Errorf("%w: VNI %d, want 1..%d", ErrInvalid, c.VNI, 1<<24-1)
	case c.Port == 0:
		return fmt.Errorf("%w: UDP port 0", ErrInvalid)
	case !c.Local.Is4():
		return fmt.Errorf("%w: local address %v is not IPv4", ErrInvalid, c.Local)
	case len(c.MAC) != 6 || c.MAC[0]&1 != 0:
		return fmt.Errorf("%w: MAC %v", ErrInvalid, c.MAC)
	case c.MTU < 576 || c.MTU > 65535:
		return fmt.Errorf("%w: MTU %d", ErrInvalid, c.MTU)
	}
	return nil
}

// Device is this host's VXLAN device, made or adopted by Ensure.
type Device struct {
	cfg Config
	log *slog.Logger

	mu    sync.Mutex // serialises Sync
	index int
	dumps atomic.Uint64 // listings of the kernel's entries (Sync's), for tests
}

// Ensure makes the VXLAN device as cfg describes it, or adopts the one a
// previous run left (the usual case after a restart: nothing changes for the
// traffic on it). A device with another VNI, port or local address cannot
// be changed in place and is re-created. ErrUnsupported when the kernel
// refuses VXLAN devices.
func Ensure(cfg Config) (*Device, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	d := &Device{cfg: cfg, log: logx.OrDiscard(cfg.Logger)}
	link, err := netlink.LinkByName(cfg.Device)
	switch {
	case err == nil:
		vx, ok := link.(*netlink.Vxlan)
		if !ok {
			return nil, fmt.Errorf("%w: link %s is a %s, not VXLAN; not touching it", ErrInvalid, cfg.Device, link.Type())
		}
		if d.matches(vx) {
			break
		}
		d.log.Info("re-creating the VXLAN device: its VNI, port or local address changed",
			"device", cfg.Device, "vni", vx.VxlanId, "port", vx.Port, "local", vx.SrcAddr)
		if err := netlink.LinkDel(link); err != nil {
			return nil, fmt.Errorf("fastdp: delete %s: %w", cfg.Device, err)
		}
		if link, err = d.create(); err != nil {
			return nil, err
		}
	case isNotFound(err):
		if link, err = d.create(); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("fastdp: look up %s: %w", cfg.Device, err)
	}
	if err := d.tune(link); err != nil {
		return nil, err
	}
	d.index = link.Attrs().Index
	return d, nil
}

func (d *Device) matches(vx *netlink.Vxlan) bool {
	return vx.VxlanId == int(d.cfg.VNI) && vx.Port == int(d.cfg.Port) && !vx.Learning &&
		vx.SrcAddr.Equal(net.IP(d.cfg.Local.AsSlice()))
}

func (d *Device) create() (netlink.Link, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = d.cfg.Device
	attrs.MTU = d.cfg.MTU
	attrs.HardwareAddr = d.cfg.MAC
	vx := &netlink.Vxlan{
		LinkAttrs: attrs,
		VxlanId:   int(d.cfg.VNI),
		SrcAddr:   net.IP(d.cfg.Local.AsSlice()),
		Port:      int(d.cfg.Port),
		// Peers are known from gossip: no flooding, no learning from
		// received frames (which anyone who can reach the port could spoof).
		Learning: false,
	}
	if err := netlink.LinkAdd(vx); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOTSUP) {
			return nil, fmt.Errorf("%w: %s: %v", ErrUnsupported, d.cfg.Device, err)
		}
		return nil, fmt.Errorf("fastdp: create VXLAN device %s: %w", d.cfg.Device, err)
	}
	d.log.Info("created VXLAN device", "device", d.cfg.Device, "vni", d.cfg.VNI, "port", d.cfg.Port, "local", d.cfg.Local, "mtu", d.cfg.MTU)
	link, err := netlink.LinkByName(d.cfg.Device)
	if err != nil {
		return nil, fmt.Errorf("fastdp: look up new device %s: %w", d.cfg.Device, err)
	}
	return link, nil
}

// tune brings MAC, MTU, sysctls and state in line; each step is skipped when
// it is already so.
func (d *Device) tune(link netlink.Link) error {
	name := d.cfg.Device
	if !bytes.Equal(link.Attrs().HardwareAddr, d.cfg.MAC) {
		if err := netlink.LinkSetHardwareAddr(link, d.cfg.MAC); err != nil {
			return fmt.Errorf("fastdp: set MAC of %s: %w", name, err)
		}
	}
	if link.Attrs().MTU != d.cfg.MTU {
		if err := netlink.LinkSetMTU(link, d.cfg.MTU); err != nil {
			return fmt.Errorf("fastdp: set MTU %d on %s: %w", d.cfg.MTU, name, err)
		}
	}
	// Packets from remote pods arrive here, but their reverse route may be
	// the TUN (a pair that fell back one way only): loose filtering. Probes
	// arrive here with the prober's underlay address as source.
	if err := writeSysctl("/proc/sys/net/ipv4/conf/"+name+"/rp_filter", "2"); err != nil {
		d.log.Warn("kernel setting left as it is", "err", err)
	}
	if err := writeSysctl("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", "1"); err != nil {
		d.log.Debug("kernel setting left as it is", "err", err)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("fastdp: set %s up: %w", name, err)
		}
	}
	return nil
}

// Index is the device's interface index.
func (d *Device) Index() int { return d.index }

// Name is the device's link name.
func (d *Device) Name() string { return d.cfg.Device }

// SyncResult counts what one Sync changed.
type SyncResult struct {
	Added, Removed int
}

// Sync converges the device's FDB, neighbours and routes to want: missing
// entries are added, differing ones replaced, and with want.Prune entries
// of peers not in want removed. Running it again changes nothing.
func (d *Device) Sync(want Desired) (SyncResult, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var res SyncResult
	if err := d.syncAddr(want.Src, &res); err != nil {
		return res, err
	}
	if err := d.syncFDB(want, &res); err != nil {
		return res, err
	}
	if err := d.syncNeighbours(want, &res); err != nil {
		return res, err
	}
	if err := d.syncRoutes(want, &res); err != nil {
		return res, err
	}
	return res, nil
}

// SyncChange applies the difference from prev, a state Sync or SyncChange
// applied last, to want, without listing what the kernel holds: while a
// mesh forms, the desired state changes at most rounds (a peer appears, a
// range moves), and a full Sync lists every address, FDB entry, neighbour
// and route of the device for each change. It handles new peers and
// changed routes or MTUs of known ones; anything else (a peer gone or with
// another address or MAC, another Src or Prune) is left to Sync, and
// handled reports false with nothing done. Entries changed by hand are
// Sync's business too: the agent runs it every fullSyncEvery.
func (d *Device) SyncChange(prev, want Desired) (res SyncResult, handled bool, err error) {
	if prev.Src != want.Src || prev.Prune != want.Prune {
		return res, false, nil
	}
	old := make(map[string]*PeerEntry, len(prev.Peers))
	for i := range prev.Peers {
		old[prev.Peers[i].Name] = &prev.Peers[i]
	}
	kept := 0
	for _, p := range want.Peers {
		if o := old[p.Name]; o != nil {
			if o.Underlay != p.Underlay || !bytes.Equal(o.MAC, p.MAC) {
				return res, false, nil
			}
			kept++
		}
	}
	if kept != len(prev.Peers) {
		return res, false, nil // a peer left: Sync decides what goes with it
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range want.Peers {
		o := old[p.Name]
		if o == nil {
			if err := d.addPeer(p, &res); err != nil {
				return res, true, err
			}
		}
		var had []netip.Prefix
		if o != nil {
			if o.Equal(p) {
				continue
			}
			had = o.Prefixes
		}
		for _, pfx := range had {
			if !slices.Contains(p.Prefixes, pfx) {
				if err := d.delRoute(d.routeTo(pfx, *o, want.Src), &res); err != nil {
					return res, true, err
				}
			}
		}
		for _, pfx := range p.Prefixes {
			if o != nil && o.MTU == p.MTU && slices.Contains(had, pfx) {
				continue
			}
			if err := d.replaceRoute(pfx, p.Underlay, want.Src, p.MTU, p.Name, &res); err != nil {
				return res, true, err
			}
		}
	}
	return res, true, nil
}

// addPeer writes a new peer's FDB and neighbour entries.
func (d *Device) addPeer(p PeerEntry, res *SyncResult) error {
	fdb := &netlink.Neigh{
		LinkIndex: d.index, Family: unix.AF_BRIDGE, State: unix.NUD_PERMANENT, Flags: netlink.NTF_SELF,
		IP: net.IP(p.Underlay.AsSlice()), HardwareAddr: p.MAC,
	}
	if err := netlink.NeighAppend(fdb); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("fastdp: FDB entry %s dst %s for %s: %w", p.MAC, p.Underlay, p.Name, err)
	}
	neigh := &netlink.Neigh{
		LinkIndex: d.index, Family: unix.AF_INET, State: unix.NUD_PERMANENT,
		IP: net.IP(p.Underlay.AsSlice()), HardwareAddr: p.MAC,
	}
	if err := netlink.NeighSet(neigh); err != nil {
		return fmt.Errorf("fastdp: neighbour %s lladdr %s for %s: %w", p.Underlay, p.MAC, p.Name, err)
	}
	res.Added += 2
	return nil
}

// routeTo is the kernel route of prefix dst through peer p.
func (d *Device) routeTo(dst netip.Prefix, p PeerEntry, src netip.Addr) netlink.Route {
	r := netlink.Route{
		LinkIndex: d.index,
		Dst:       nlconv.IPNet(dst),
		Gw:        net.IP(p.Underlay.AsSlice()),
		Flags:     int(netlink.FLAG_ONLINK),
		Priority:  RouteMetric,
		Protocol:  hostnet.RouteProtocol,
		Table:     unix.RT_TABLE_MAIN,
		MTU:       p.MTU,
	}
	if src.IsValid() {
		r.Src = net.IP(src.AsSlice())
	}
	return r
}

func (d *Device) replaceRoute(dst netip.Prefix, gw, src netip.Addr, mtu int, name string, res *SyncResult) error {
	r := d.routeTo(dst, PeerEntry{Underlay: gw, MTU: mtu}, src)
	if err := netlink.RouteReplace(&r); err != nil {
		return fmt.Errorf("fastdp: route %s via %s dev %s onlink (peer %s): %w", dst, gw, d.cfg.Device, name, err)
	}
	res.Added++
	return nil
}

// syncAddr puts src/32 on the device, replacing any other address. Without
// an address of its own the kernel's reverse-path check drops (rp_filter 1
// or 2) every packet arriving on the device whose source is routed
// elsewhere: a probe from a peer's underlay address, or a packet from a
// peer that sends through VXLAN while this host answers through the TUN.
// The address is this host's overlay address, also on the bridge.
func (d *Device) syncAddr(src netip.Addr, res *SyncResult) error {
	if !src.Is4() {
		return nil // not known yet; Sync is called again once it is
	}
	link, err := netlink.LinkByIndex(d.index)
	if err != nil {
		return fmt.Errorf("fastdp: look up %s: %w", d.cfg.Device, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("fastdp: list addresses of %s: %w", d.cfg.Device, err)
	}
	want := netip.PrefixFrom(src, 32)
	have := false
	for _, a := range addrs {
		if nlconv.Prefix(a.IPNet) == want {
			have = true
			continue
		}
		if err := netlink.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("fastdp: remove address %s from %s: %w", a.IPNet, d.cfg.Device, err)
		}
		res.Removed++
	}
	if have {
		return nil
	}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: nlconv.IPNet(want)}); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("fastdp: add %s to %s: %w", want, d.cfg.Device, err)
	}
	res.Added++
	return nil
}

func (d *Device) syncFDB(want Desired, res *SyncResult) error {
	d.dumps.Add(1)
	have, err := nlconv.RetryDump(func() ([]netlink.Neigh, error) { return netlink.NeighList(d.index, unix.AF_BRIDGE) })
	if err != nil {
		return fmt.Errorf("fastdp: list FDB of %s: %w", d.cfg.Device, err)
	}
	wantMAC := map[string]netip.Addr{}
	for _, p := range want.Peers {
		wantMAC[p.MAC.String()] = p.Underlay
	}
	ok := map[string]bool{}
	for _, n := range have {
		dst, _ := netip.AddrFromSlice(n.IP)
		mac := n.HardwareAddr.String()
		w, wanted := wantMAC[mac]
		if wanted && w == dst.Unmap() && n.State&unix.NUD_PERMANENT != 0 {
			ok[mac] = true
			continue
		}
		if wanted || want.Prune {
			if err := netlink.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("fastdp: remove FDB entry %s dst %s: %w", mac, n.IP, err)
			}
			res.Removed++
		}
	}
	for _, p := range want.Peers {
		if ok[p.MAC.String()] {
			continue
		}
		n := &netlink.Neigh{
			LinkIndex: d.index, Family: unix.AF_BRIDGE, State: unix.NUD_PERMANENT, Flags: netlink.NTF_SELF,
			IP: net.IP(p.Underlay.AsSlice()), HardwareAddr: p.MAC,
		}
		if err := netlink.NeighAppend(n); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("fastdp: FDB entry %s dst %s for %s: %w", p.MAC, p.Underlay, p.Name, err)
		}
		res.Added++
	}
	return nil
}

func (d *Device) syncNeighbours(want Desired, res *SyncResult) error {
	d.dumps.Add(1)
	have, err := nlconv.RetryDump(func() ([]netlink.Neigh, error) { return netlink.NeighList(d.index, unix.AF_INET) })
	if err != nil {
		return fmt.Errorf("fastdp: list neighbours of %s: %w", d.cfg.Device, err)
	}
	wantIP := map[netip.Addr]net.HardwareAddr{}
	for _, p := range want.Peers {
		wantIP[p.Underlay] = p.MAC
	}
	ok := map[netip.Addr]bool{}
	for _, n := range have {
		ip, _ := netip.AddrFromSlice(n.IP)
		ip = ip.Unmap()
		mac, wanted := wantIP[ip]
		if wanted && bytes.Equal(mac, n.HardwareAddr) && n.State&unix.NUD_PERMANENT != 0 {
			ok[ip] = true
			continue
		}
		if wanted || !want.Prune {
			continue // NeighSet below replaces a wanted one
		}
		if err := netlink.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("fastdp: remove neighbour %s: %w", ip, err)
		}
		res.Removed++
	}
	for _, p := range want.Peers {
		if ok[p.Underlay] {
			continue
		}
		n := &netlink.Neigh{
			LinkIndex: d.index, Family: unix.AF_INET, State: unix.NUD_PERMANENT,
			IP: net.IP(p.Underlay.AsSlice()), HardwareAddr: p.MAC,
		}
		if err := netlink.NeighSet(n); err != nil {
			return fmt.Errorf("fastdp: neighbour %s lladdr %s for %s: %w", p.Underlay, p.MAC, p.Name, err)
		}
		res.Added++
	}
	return nil
}

// route is the part of a route Sync compares.
type route struct {
	gw  netip.Addr
	src netip.Addr
	mtu int
}

func (d *Device) syncRoutes(want Desired, res *SyncResult) error {
	have, err := d.routes()
	if err != nil {
		return err
	}
	wantR := map[netip.Prefix]route{}
	gateways := map[netip.Addr]bool{}
	for _, p := range want.Peers {
		gateways[p.Underlay] = true
		for _, pfx := range p.Prefixes {
			wantR[pfx] = route{gw: p.Underlay, src: want.Src, mtu: p.MTU}
		}
	}
	ok := map[netip.Prefix]bool{}
	for _, r := range have {
		dst := nlconv.RouteDst(r)
		got := routeOf(r)
		if w, wanted := wantR[dst]; wanted {
			if w == got && r.Priority == RouteMetric {
				ok[dst] = true
			} else if r.Priority != RouteMetric {
				// Another metric is another route: the new one is added below.
				if err := d.delRoute(r, res); err != nil {
					return err
				}
			}
			continue // a differing route of the same metric is replaced below
		}
		// Not wanted: a peer that left the fast path (known gateway), or
		// one nobody knows of (only when pruning).
		if gateways[got.gw] || want.Prune {
			if err := d.delRoute(r, res); err != nil {
				return err
			}
		}
	}
	for dst, w := range wantR {
		if ok[dst] {
			continue
		}
		if err := d.replaceRoute(dst, w.gw, w.src, w.mtu, "", res); err != nil {
			return err
		}
	}
	return nil
}

func (d *Device) delRoute(r netlink.Route, res *SyncResult) error {
	if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("fastdp: remove route %s dev %s: %w", nlconv.RouteDst(r), d.cfg.Device, err)
	}
	res.Removed++
	return nil
}

func routeOf(r netlink.Route) route {
	gw, _ := netip.AddrFromSlice(r.Gw)
	src, _ := netip.AddrFromSlice(r.Src)
	return route{gw: gw.Unmap(), src: src.Unmap(), mtu: r.MTU}
}

// routes lists weft's routes through the device.
func (d *Device) routes() ([]netlink.Route, error) {
	d.dumps.Add(1)
	filter := &netlink.Route{Protocol: hostnet.RouteProtocol, Table: unix.RT_TABLE_MAIN, LinkIndex: d.index}
	rs, err := nlconv.RetryDump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
	})
	if err != nil {
		return nil, fmt.Errorf("fastdp: list routes of %s: %w", d.cfg.Device, err)
	}
	return slices.DeleteFunc(rs, func(r netlink.Route) bool {
		return r.Protocol != hostnet.RouteProtocol || r.LinkIndex != d.index
	}), nil
}

// Routed returns the next hops (peers' underlay addresses) the device routes
// some range to now, and how many ranges each.
func (d *Device) Routed() (map[netip.Addr]int, error) {
	rs, err := d.routes()
	if err != nil {
		return nil, err
	}
	out := map[netip.Addr]int{}
	for _, r := range rs {
		out[routeOf(r).gw]++
	}
	return out, nil
}

// Stats are the device's own counters.
type Stats struct {
	RxPackets, TxPackets, RxBytes, TxBytes   uint64
	RxDropped, TxDropped, RxErrors, TxErrors uint64
}

// Stats reads the device's counters from the kernel.
func (d *Device) Stats() (Stats, error) {
	link, err := netlink.LinkByIndex(d.index)
	if err != nil {
		return Stats{}, fmt.Errorf("fastdp: read counters of %s: %w", d.cfg.Device, err)
	}
	s := link.Attrs().Statistics
	if s == nil {
		return Stats{}, nil
	}
	return Stats{
		RxPackets: s.RxPackets, TxPackets: s.TxPackets, RxBytes: s.RxBytes, TxBytes: s.TxBytes,
		RxDropped: s.RxDropped, TxDropped: s.TxDropped, RxErrors: s.RxErrors, TxErrors: s.TxErrors,
	}, nil
}

// Remove deletes the VXLAN device named name; its routes, neighbours and
// FDB entries go with it. A link of another type is left alone. Nothing to
// remove is success.
func Remove(name string, log *slog.Logger) error {
	link, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("fastdp: look up %s: %w", name, err)
	}
	if link.Type() != "vxlan" {
		return fmt.Errorf("%w: link %s is a %s, not VXLAN; not deleting it", ErrInvalid, name, link.Type())
	}
	if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("fastdp: delete %s: %w", name, err)
	}
	logx.OrDiscard(log).Info("deleted VXLAN device", "device", name)
	return nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

func writeSysctl(path, value string) error {
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("fastdp: write %s: %w", path, err)
	}
	return nil
}
