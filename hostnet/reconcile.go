package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/nlconv"
)

// The reconcile loop: after Setup nothing stops an operator, a cleanup
// script or another network tool from deleting the bridge, flushing a
// route or the nftables table, or resetting a sysctl. Check compares the
// host with what Setup, RouteOverlay, SyncLocalRanges and SetPeers made;
// Repair puts back what differs. The agent runs Repair on netlink events
// and on a timer.

// Part names a part of the host network that Repair can fix; it is the
// label of the agent's weft_repairs_total{what}.
type Part string

// The parts, in the order Repair fixes them: a re-created bridge needs its
// address, sysctls and routes again.
const (
	PartBridge     Part = "bridge"      // the bridge exists, is up, has the MTU, holds the pods' veths
	PartBridgeAddr Part = "bridge_addr" // HostAddr/32 on the bridge, no stale weft address
	PartSysctl     Part = "sysctl"      // forwarding and the tuning that could be set
	PartTUN        Part = "tun"         // the TUN is up with the MTU
	PartRoute      Part = "route"       // fail-closed, overlay and local range routes
	PartNftables   Part = "nftables"    // table ip weft: chains, rules, sets
)

// Parts lists every Part in repair order.
func Parts() []Part {
	return []Part{PartBridge, PartBridgeAddr, PartSysctl, PartTUN, PartRoute, PartNftables}
}

// Fault is one difference between the host network and what it should be.
type Fault struct {
	Part Part
	What string // e.g. "bridge weft is missing"
}

func (f Fault) String() string { return string(f.Part) + ": " + f.What }

// ErrTUNGone says the TUN device is missing. Only the data plane can
// re-create it (it holds the device open), so Repair cannot.
var ErrTUNGone = errors.New("hostnet: the TUN device is gone")

// PodVethAlias starts the alias weft-cni gives every pod's host veth (see
// plugin.HostVethOwner): it is how a re-created bridge finds its pods.
const PodVethAlias = "weft-cni:"

// Check reports every difference between the host and what it should be;
// none is a healthy host. An error means the check itself failed.
func (h *Host) Check() ([]Fault, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.check()
}

// Repair checks the host and puts back what differs. It returns the faults
// it found and repaired, each once, and an error naming what it could not
// repair (ErrTUNGone among them when the TUN is missing).
func (h *Host) Repair() ([]Fault, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var repaired []Fault
	seen := map[Fault]bool{}
	// One part per round, first in repair order, then look again: a repair
	// can uncover or cure more (a re-created bridge has no address yet, and
	// the TUN's route needs that address as its source).
	for range 2 * len(Parts()) {
		faults, err := h.check()
		if err != nil {
			return repaired, err
		}
		if len(faults) == 0 {
			return repaired, nil
		}
		part := faults[0].Part
		for _, f := range faults {
			if slices.Index(Parts(), f.Part) < slices.Index(Parts(), part) {
				part = f.Part
			}
		}
		if err := h.repair(part); err != nil {
			return repaired, fmt.Errorf("hostnet: repair %s: %w", part, err)
		}
		for _, f := range faults {
			if f.Part == part && !seen[f] {
				seen[f] = true
				repaired = append(repaired, f)
				h.log.Warn("repaired the host network", "what", string(f.Part), "fault", f.What)
			}
		}
	}
	faults, err := h.check()
	if err == nil && len(faults) > 0 {
		err = fmt.Errorf("hostnet: still broken after repair: %s", faults[0])
	}
	return repaired, err
}

func (h *Host) repair(part Part) error {
	switch part {
	case PartBridge:
		br, err := h.ensureBridge()
		if err != nil {
			return err
		}
		return h.attachPods(br)
	case PartBridgeAddr:
		br, err := netlink.LinkByName(h.cfg.Bridge)
		if err != nil {
			return fmt.Errorf("look up bridge %s: %w", h.cfg.Bridge, err)
		}
		return h.ensureHostAddr(br)
	case PartSysctl:
		for path, value := range h.tuned {
			if err := writeSysctl(path, value); err != nil {
				return err
			}
		}
		return nil
	case PartTUN:
		tun, err := netlink.LinkByName(h.cfg.TUN)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrTUNGone, err)
		}
		if h.cfg.MTU != 0 && tun.Attrs().MTU != h.cfg.MTU {
			if err := netlink.LinkSetMTU(tun, h.cfg.MTU); err != nil {
				return fmt.Errorf("set MTU %d on %s: %w", h.cfg.MTU, h.cfg.TUN, err)
			}
		}
		if err := netlink.LinkSetUp(tun); err != nil {
			return fmt.Errorf("set %s up: %w", h.cfg.TUN, err)
		}
		// A link that was down lost its routes.
		return h.routeOverlay()
	case PartRoute:
		if err := h.ensureFailClosed(); err != nil {
			return err
		}
		if h.overlay {
			if err := h.routeOverlay(); err != nil {
				return err
			}
		}
		return h.syncLocalRanges()
	case PartNftables:
		return installTable(h.cfg, h.guard)
	}
	return fmt.Errorf("unknown part %q", part)
}

// attachPods puts the pods' host veths (found by their alias) back on the
// bridge, e.g. after the bridge was deleted and made again.
func (h *Host) attachPods(br netlink.Link) error {
	veths, err := h.detachedPodVeths(br.Attrs().Index)
	if err != nil {
		return err
	}
	for _, l := range veths {
		if err := netlink.LinkSetMasterByIndex(l, br.Attrs().Index); err != nil {
			if isNotFound(err) {
				continue // the pod went away meanwhile
			}
			return fmt.Errorf("attach %s to %s: %w", l.Attrs().Name, h.cfg.Bridge, err)
		}
		if err := netlink.LinkSetUp(l); err != nil && !isNotFound(err) {
			return fmt.Errorf("set %s up: %w", l.Attrs().Name, err)
		}
		h.log.Info("re-attached a pod's veth to the bridge", "veth", l.Attrs().Name, "bridge", h.cfg.Bridge)
	}
	return nil
}

// detachedPodVeths lists the pods' host veths that are not ports of the
// bridge with index brIndex.
func (h *Host) detachedPodVeths(brIndex int) ([]netlink.Link, error) {
	links, err := nlconv.RetryDump(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []netlink.Link
	for _, l := range links {
		if l.Type() == "veth" && strings.HasPrefix(l.Attrs().Alias, PodVethAlias) && l.Attrs().MasterIndex != brIndex {
			out = append(out, l)
		}
	}
	return out, nil
}

// check is Check with h.mu held.
func (h *Host) check() ([]Fault, error) {
	var faults []Fault
	add := func(p Part, format string, args ...any) {
		faults = append(faults, Fault{Part: p, What: fmt.Sprintf(format, args...)})
	}
	br, err := netlink.LinkByName(h.cfg.Bridge)
	switch {
	case err != nil && isNotFound(err):
		// Its address, sysctls and routes went with it; the next round of
		// Repair sees to them.
		add(PartBridge, "bridge %s is missing", h.cfg.Bridge)
		br = nil
	case err != nil:
		return nil, fmt.Errorf("hostnet: look up bridge %s: %w", h.cfg.Bridge, err)
	case br.Type() != "bridge":
		return nil, fmt.Errorf("hostnet: link %s is a %s, not a bridge", h.cfg.Bridge, br.Type())
	}
	if br != nil {
		h.bridgeMAC = slices.Clone(br.Attrs().HardwareAddr)
		if br.Attrs().Flags&net.FlagUp == 0 {
			add(PartBridge, "bridge %s is down", h.cfg.Bridge)
		}
		if h.cfg.MTU != 0 && br.Attrs().MTU != h.cfg.MTU {
			add(PartBridge, "bridge %s has MTU %d, want %d", h.cfg.Bridge, br.Attrs().MTU, h.cfg.MTU)
		}
		veths, err := h.detachedPodVeths(br.Attrs().Index)
		if err != nil {
			return nil, err
		}
		for _, l := range veths {
			add(PartBridge, "pod veth %s is not on bridge %s", l.Attrs().Name, h.cfg.Bridge)
		}
		if err := h.checkHostAddr(br, add); err != nil {
			return nil, err
		}
	}
	for path, want := range h.tuned {
		if br == nil && strings.Contains(path, "/"+h.cfg.Bridge+"/") {
			continue
		}
		got, err := sysctlValue(path)
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // the link is gone; its own check says so
			}
			return nil, err
		}
		if got != want {
			add(PartSysctl, "%s is %s, want %s", strings.TrimPrefix(path, "/proc/sys/"), got, want)
		}
	}
	var tun netlink.Link
	if h.overlay {
		if tun, err = netlink.LinkByName(h.cfg.TUN); err != nil {
			if isNotFound(err) {
				return nil, fmt.Errorf("%w: %s: %w", ErrTUNGone, h.cfg.TUN, err)
			}
			return nil, fmt.Errorf("hostnet: look up TUN %s: %w", h.cfg.TUN, err)
		}
		if tun.Attrs().Flags&net.FlagUp == 0 {
			add(PartTUN, "TUN %s is down", h.cfg.TUN)
		}
		if h.cfg.MTU != 0 && tun.Attrs().MTU != h.cfg.MTU {
			add(PartTUN, "TUN %s has MTU %d, want %d", h.cfg.TUN, tun.Attrs().MTU, h.cfg.MTU)
		}
	}
	if err := h.checkRoutes(br, tun, add); err != nil {
		return nil, err
	}
	if err := h.checkTable(add); err != nil {
		return nil, err
	}
	return faults, nil
}

type addFault func(p Part, format string, args ...any)

func (h *Host) checkHostAddr(br netlink.Link, add addFault) error {
	have, stale, err := h.bridgeAddrs(br)
	if err != nil {
		return err
	}
	for _, a := range stale {
		add(PartBridgeAddr, "bridge %s has the stale address %s", h.cfg.Bridge, nlconv.Prefix(a.IPNet))
	}
	if !have {
		add(PartBridgeAddr, "bridge %s lacks its address %s", h.cfg.Bridge, netip.PrefixFrom(h.cfg.HostAddr, 32))
	}
	return nil
}

// checkRoutes looks for the fail-closed route, the overlay route to the TUN
// (once RouteOverlay ran) and the local ranges on the bridge (when it exists).
func (h *Host) checkRoutes(br, tun netlink.Link, add addFault) error {
	routes, err := weftRoutes(0)
	if err != nil {
		return err
	}
	failClosed, overlay := false, false
	onBridge := map[netip.Prefix]bool{}
	for _, r := range routes {
		dst := nlconv.RouteDst(r)
		switch {
		case r.Type == unix.RTN_UNREACHABLE && dst == h.cfg.Range && r.Priority == FailClosedMetric:
			failClosed = true
		case tun != nil && r.LinkIndex == tun.Attrs().Index && dst == h.cfg.Range && r.Priority == OverlayMetric:
			overlay = true
		case br != nil && r.LinkIndex == br.Attrs().Index && r.Scope == netlink.SCOPE_LINK:
			onBridge[dst] = true
		}
	}
	if !failClosed {
		add(PartRoute, "fail-closed route unreachable %s metric %d is missing", h.cfg.Range, FailClosedMetric)
	}
	// A TUN that is down has no routes: its own fault covers that.
	if tun != nil && !overlay && tun.Attrs().Flags&net.FlagUp != 0 {
		add(PartRoute, "route %s dev %s is missing", h.cfg.Range, h.cfg.TUN)
	}
	if br != nil {
		for _, p := range h.local {
			if !onBridge[p] {
				add(PartRoute, "route %s dev %s is missing", p, h.cfg.Bridge)
			}
		}
	}
	return nil
}

// nftRules is how many rules each chain of table ip weft holds for cfg
// (see installTable, addFilter and addLeakGuard).
func nftRules(cfg Config) map[string]int {
	input := 2 * (2 + len(cfg.Tunnels)) // tcp and udp, on the bridge, the TUN and each tunnel
	if cfg.VXLANPort != 0 {
		input++
	}
	return map[string]int{"postrouting": 1, nftChainInput: input, nftChainForward: 2, nftChainFailClosed: 1}
}

// checkTable compares table ip weft with what installTable makes: its
// chains with their number of rules, and the filter's sets with their
// elements. (An operator's `nft flush table ip weft` empties the chains.)
func (h *Host) checkTable(add addFault) (err error) {
	// The generation before the reads: a transaction during them moves it,
	// and the next check reads again.
	gen, genErr := nftGeneration()
	if genErr == nil && h.tableGenOK && gen == h.tableGen {
		return nil // no transaction since the table was found whole
	}
	h.tableGenOK = false
	h.tableReads++
	n, inner := 0, add // faults found in the table
	add = func(p Part, format string, args ...any) {
		n++
		inner(p, format, args...)
	}
	defer func() {
		if n == 0 && err == nil && genErr == nil {
			h.tableGen, h.tableGenOK = gen, true
		}
	}()
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("hostnet: nftables: %w", err)
	}
	if _, err := conn.ListTableOfFamily(NftTable, nftables.TableFamilyIPv4); err != nil {
		// Missing or unreadable: either way installing it afresh is the fix.
		add(PartNftables, "table ip %s is missing (%v)", NftTable, err)
		return nil
	}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return fmt.Errorf("hostnet: list nftables chains: %w", err)
	}
	have := map[string]*nftables.Chain{}
	for _, c := range chains {
		if c.Table != nil && c.Table.Name == NftTable {
			have[c.Name] = c
		}
	}
	for name, n := range nftRules(h.cfg) {
		c := have[name]
		if c == nil {
			add(PartNftables, "chain %s of table ip %s is missing", name, NftTable)
			continue
		}
		rules, err := conn.GetRules(weftTable, c)
		if err != nil {
			return fmt.Errorf("hostnet: list rules of chain %s: %w", name, err)
		}
		if len(rules) != n {
			add(PartNftables, "chain %s of table ip %s has %d rules, want %d", name, NftTable, len(rules), n)
		}
	}
	for _, s := range []struct {
		name string
		want []nftables.SetElement
	}{{nftSetPeers, h.guard.peerElems()}, {nftSetPorts, h.guard.portElems()}} {
		set, err := conn.GetSetByName(weftTable, s.name)
		if err != nil {
			add(PartNftables, "set %s of table ip %s is missing", s.name, NftTable)
			continue
		}
		elems, err := conn.GetSetElements(set)
		if err != nil {
			return fmt.Errorf("hostnet: list elements of set %s: %w", s.name, err)
		}
		if !sameElements(elems, s.want) {
			add(PartNftables, "set %s of table ip %s has %d elements, want %d", s.name, NftTable, len(elems), len(s.want))
		}
	}
	return nil
}

func sameElements(got, want []nftables.SetElement) bool {
	if len(got) != len(want) {
		return false
	}
	keys := map[string]bool{}
	for _, e := range want {
		keys[string(e.Key)] = true
	}
	for _, e := range got {
		if !keys[string(e.Key)] {
			return false
		}
	}
	return true
}
