package hostnet

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/nlconv"
	"github.com/weftnet/weft/internal/roottest"
	"github.com/weftnet/weft/test/cnitest"
)

// reconcileBed is a host namespace set up as the agent leaves it (bridge,
// local range, TUN with its route) with one pod attached the way weft-cni
// attaches it: a veth named vethwe… whose alias names its owner.
type reconcileBed struct {
	t      *testing.T
	name   string // host namespace
	ns     string // its path
	podNS  string
	h      *Host
	local  netip.Prefix
	podMAC string
}

func newReconcileBed(t *testing.T) *reconcileBed {
	t.Helper()
	roottest.Require(t)
	b := &reconcileBed{t: t, local: netip.MustParsePrefix("10.32.0.0/24")}
	b.name, b.ns = newNetns(t, "")
	podName, podNS := newNetns(t, "-pod")
	b.podNS = podNS
	cfg := testConfig()
	in(t, b.ns, func() (err error) {
		if b.h, err = Setup(cfg); err != nil {
			return err
		}
		if err := b.h.SyncLocalRanges([]netip.Prefix{b.local}); err != nil {
			return err
		}
		run(t, "ip", "tuntap", "add", "weft-tun", "mode", "tun")
		run(t, "ip", "link", "set", "weft-tun", "mtu", "1376", "up")
		return b.h.RouteOverlay()
	})
	run(t, "ip", "-n", b.name, "link", "add", "vethwetest", "type", "veth", "peer", "name", "eth0", "netns", podName)
	run(t, "ip", "-n", b.name, "link", "set", "vethwetest", "mtu", "1376", "alias", PodVethAlias+"0123abcd", "master", "weft", "up")
	run(t, "ip", "-n", podName, "addr", "add", "10.32.0.2/32", "dev", "eth0")
	run(t, "ip", "-n", podName, "link", "set", "eth0", "up")
	run(t, "ip", "-n", podName, "route", "add", "10.32.0.1", "dev", "eth0", "scope", "link")
	run(t, "ip", "-n", podName, "route", "add", "default", "via", "10.32.0.1", "dev", "eth0")
	b.ping()
	if faults := b.check(); len(faults) != 0 {
		t.Fatalf("a freshly set-up host has faults: %v", faults)
	}
	return b
}

func (b *reconcileBed) check() []Fault {
	b.t.Helper()
	var faults []Fault
	in(b.t, b.ns, func() (err error) { faults, err = b.h.Check(); return err })
	return faults
}

// repair runs Repair and checks that it repaired faults of part want, and
// that the host is healthy afterwards.
func (b *reconcileBed) repair(want Part) []Fault {
	b.t.Helper()
	var repaired []Fault
	in(b.t, b.ns, func() (err error) { repaired, err = b.h.Repair(); return err })
	if !slices.ContainsFunc(repaired, func(f Fault) bool { return f.Part == want }) {
		b.t.Fatalf("Repair repaired %v, want a fault of %s among them", repaired, want)
	}
	if faults := b.check(); len(faults) != 0 {
		b.t.Fatalf("after Repair: %v", faults)
	}
	return repaired
}

// ping checks that the pod reaches its gateway, the bridge address.
func (b *reconcileBed) ping() {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := cnitest.Ping(ctx, b.podNS, netip.MustParseAddr("10.32.0.1")); err != nil {
		b.t.Fatalf("pod to its gateway: %v", err)
	}
}

func (b *reconcileBed) link(name string) netlink.Link {
	b.t.Helper()
	var l netlink.Link
	in(b.t, b.ns, func() (err error) { l, err = netlink.LinkByName(name); return err })
	return l
}

func hasPart(faults []Fault, p Part) bool {
	return slices.ContainsFunc(faults, func(f Fault) bool { return f.Part == p })
}

// A deleted bridge comes back with its address, routes and sysctls, with
// the same MAC address, and the pod's veth is on it again: the pod reaches
// its gateway.
func TestRepairDeletedBridge(t *testing.T) {
	b := newReconcileBed(t)
	mac := b.link("weft").Attrs().HardwareAddr.String()
	run(t, "ip", "-n", b.name, "link", "del", "weft")
	if faults := b.check(); !hasPart(faults, PartBridge) {
		t.Fatalf("Check after deleting the bridge: %v", faults)
	}
	repaired := b.repair(PartBridge)
	t.Logf("repaired: %v", repaired)
	br := b.link("weft")
	if got := br.Attrs().HardwareAddr.String(); got != mac {
		t.Errorf("re-created bridge has MAC %s, want the old %s", got, mac)
	}
	if veth := b.link("vethwetest"); veth.Attrs().MasterIndex != br.Attrs().Index {
		t.Fatalf("pod veth not re-attached: master %d, bridge %d", veth.Attrs().MasterIndex, br.Attrs().Index)
	}
	in(t, b.ns, func() error {
		if got := bridgeAddrs(t, "weft"); !slices.Equal(got, []string{"10.32.0.1/32"}) {
			t.Errorf("bridge addresses %v", got)
		}
		if got := routesOn(t, "weft"); !slices.Contains(got, "10.32.0.0/24 weft") {
			t.Errorf("bridge routes %v", got)
		}
		return nil
	})
	b.ping()
}

// A veth taken off the bridge (and a bridge set down) is put back.
func TestRepairDetachedVethAndDownBridge(t *testing.T) {
	b := newReconcileBed(t)
	run(t, "ip", "-n", b.name, "link", "set", "vethwetest", "nomaster")
	run(t, "ip", "-n", b.name, "link", "set", "weft", "down")
	b.repair(PartBridge)
	b.ping()
}

func TestRepairFlushedRoutes(t *testing.T) {
	b := newReconcileBed(t)
	run(t, "ip", "-n", b.name, "route", "flush", "proto", "87")
	faults := b.check()
	if n := len(faults); n != 3 {
		t.Fatalf("Check after flushing weft's routes: %v, want 3 (fail-closed, overlay, local range)", faults)
	}
	b.repair(PartRoute)
	in(t, b.ns, func() error {
		if got := routesOn(t, "weft-tun"); !slices.Equal(got, []string{"10.32.0.0/12 weft"}) {
			t.Errorf("TUN routes %v", got)
		}
		return nil
	})
	b.ping()
}

func TestRepairNftables(t *testing.T) {
	b := newReconcileBed(t)
	for _, args := range [][]string{
		{"nft", "flush", "table", "ip", "weft"},
		{"nft", "delete", "table", "ip", "weft"},
		{"nft", "flush", "set", "ip", "weft", "ports"},
		{"nft", "flush", "chain", "ip", "weft", "postrouting"},
	} {
		run(t, append([]string{"ip", "netns", "exec", b.name}, args...)...)
		if faults := b.check(); !hasPart(faults, PartNftables) {
			t.Fatalf("Check after %v: %v", args, faults)
		}
		b.repair(PartNftables)
	}
}

func TestRepairSysctls(t *testing.T) {
	b := newReconcileBed(t)
	in(t, b.ns, func() error {
		for _, p := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv4/conf/weft/rp_filter"} {
			if err := os.WriteFile(p, []byte("0"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if faults := b.check(); len(faults) != 2 || !hasPart(faults, PartSysctl) {
		t.Fatalf("Check after resetting 2 sysctls: %v", faults)
	}
	b.repair(PartSysctl)
	in(t, b.ns, func() error {
		if v := readSysctl(t, "/proc/sys/net/ipv4/ip_forward"); v != "1" {
			t.Errorf("ip_forward=%s", v)
		}
		return nil
	})
}

// A TUN set down loses its route; both come back. A TUN deleted is for the
// data plane to re-create: Repair says ErrTUNGone.
func TestRepairTUN(t *testing.T) {
	b := newReconcileBed(t)
	run(t, "ip", "-n", b.name, "link", "set", "weft-tun", "down")
	b.repair(PartTUN)
	if l := b.link("weft-tun"); l.Attrs().OperState == netlink.OperDown && l.Attrs().RawFlags&1 == 0 {
		t.Fatal("TUN still down")
	}
	run(t, "ip", "-n", b.name, "link", "del", "weft-tun")
	in(t, b.ns, func() error {
		if _, err := b.h.Repair(); !errors.Is(err, ErrTUNGone) {
			t.Fatalf("Repair without the TUN: %v, want ErrTUNGone", err)
		}
		return nil
	})
}

// Watch signals a change made in the namespace.
func TestWatchSignalsChanges(t *testing.T) {
	roottest.Require(t)
	name, ns := newNetns(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ch <-chan struct{}
	in(t, ns, func() (err error) { ch, err = Watch(ctx, nil); return err })
	run(t, "ip", "-n", name, "link", "add", "d0", "type", "bridge")
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no signal within 5 s of a link change")
	}
}

// Watch signals a change of table ip weft, which makes no link, address or
// route event.
func TestWatchSignalsTableChanges(t *testing.T) {
	roottest.Require(t)
	name, ns := newNetns(t, "")
	in(t, ns, func() error { _, err := Setup(testConfig()); return err })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ch <-chan struct{}
	in(t, ns, func() (err error) { ch, err = Watch(ctx, nil); return err })
	run(t, "ip", "netns", "exec", name, "nft", "flush", "table", "ip", "weft")
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no signal within 5 s of nft flush table ip weft")
	}
}

// Watch does not signal weft's own writes: a route of weft's protocol
// added by the agent, and the host filter's set updated by this process
// (before, each was a signal, then a check of the whole host and a resync
// of the fast path, at every membership change: issue 21). The same
// changes made by another process, and a deletion of a weft route, are
// signalled.
func TestWatchIgnoresOwnWrites(t *testing.T) {
	roottest.Require(t)
	name, ns := newNetns(t, "")
	run(t, "ip", "-n", name, "link", "add", "d0", "type", "bridge")
	run(t, "ip", "-n", name, "link", "set", "d0", "up")
	var h *Host
	in(t, ns, func() (err error) { h, err = Setup(testConfig()); return err })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stats := &watchStats{}
	in(t, ns, func() (err error) { _, err = watch(ctx, nil, stats); return err })
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: own %d, signalled %d", what, stats.own.Load(), stats.signalled.Load())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// Own writes: a route of weft's protocol, and the filter's peers.
	in(t, ns, func() error {
		link, err := netlink.LinkByName("d0")
		if err != nil {
			return err
		}
		return netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: nlconv.IPNet(netip.MustParsePrefix("10.40.0.0/16")),
			Protocol: RouteProtocol, Scope: netlink.SCOPE_LINK})
	})
	in(t, ns, func() error { return h.SetPeers([]netip.Addr{netip.MustParseAddr("198.18.0.9")}, nil) })
	waitFor("both own writes seen", func() bool { return stats.own.Load() >= 2 })
	if n := stats.signalled.Load(); n != 0 {
		t.Fatalf("own writes gave %d signals, want none", n)
	}

	// Another process's writes, and the deletion of a weft route, signal.
	run(t, "ip", "netns", "exec", name, "nft", "add", "element", "ip", "weft", "peers", "{ 198.18.0.10 }")
	waitFor("another process's nftables change", func() bool { return stats.signalled.Load() >= 1 })
	run(t, "ip", "-n", name, "route", "del", "10.40.0.0/16", "dev", "d0")
	waitFor("a weft route deleted", func() bool { return stats.signalled.Load() >= 2 })
}

// ownRoute: additions of weft's protocol only.
func TestOwnRoute(t *testing.T) {
	for _, c := range []struct {
		typ   uint16
		proto netlink.RouteProtocol
		own   bool
	}{{unix.RTM_NEWROUTE, RouteProtocol, true}, {unix.RTM_DELROUTE, RouteProtocol, false}, {unix.RTM_NEWROUTE, unix.RTPROT_BOOT, false}} {
		u := netlink.RouteUpdate{Type: c.typ, Route: netlink.Route{Protocol: c.proto}}
		if got := ownRoute(u); got != c.own {
			t.Errorf("type %d proto %d: own %v, want %v", c.typ, c.proto, got, c.own)
		}
	}
}

// A check reads table ip weft only when an nftables transaction happened
// since the last check found it whole (before: every check, a dozen dumps,
// every 10 s and on every event: issue 21); a change by anyone is still
// found.
func TestCheckReadsTableOnlyAfterTransactions(t *testing.T) {
	b := newReconcileBed(t) // it checked once
	reads := func() int { b.h.mu.Lock(); defer b.h.mu.Unlock(); return b.h.tableReads }
	before := reads()
	for range 3 {
		if faults := b.check(); len(faults) != 0 {
			t.Fatalf("faults on a healthy host: %v", faults)
		}
	}
	if d := reads() - before; d != 0 {
		t.Fatalf("3 checks without a transaction read the table %d times, want 0", d)
	}
	// A transaction in another table moves the generation: read again, once.
	run(t, "ip", "netns", "exec", b.name, "nft", "add", "table", "ip", "other")
	b.check()
	b.check()
	if d := reads() - before; d != 1 {
		t.Fatalf("2 checks after one transaction read the table %d times, want 1", d)
	}
	run(t, "ip", "netns", "exec", b.name, "nft", "flush", "table", "ip", "weft")
	if faults := b.check(); !hasPart(faults, PartNftables) {
		t.Fatalf("a flushed table not found: %v", faults)
	}
	b.repair(PartNftables)
}

// parseGen reads NFTA_GEN_ID after the nfgenmsg header, and nothing from a
// message without it.
func TestParseGen(t *testing.T) {
	msg := []byte{unix.AF_UNSPEC, 0, 0, 0, 8, 0, unix.NFTA_GEN_ID, 0, 0, 0, 1, 2}
	if gen, ok := parseGen(msg); !ok || gen != 0x102 {
		t.Fatalf("gen %#x %v, want 0x102", gen, ok)
	}
	for _, bad := range [][]byte{nil, msg[:3], msg[:4], {0, 0, 0, 0, 8, 0, 9, 0, 0, 0, 1, 2}, msg[:10]} {
		if gen, ok := parseGen(bad); ok {
			t.Errorf("parseGen(%x) = %#x, want nothing", bad, gen)
		}
	}
}

// FuzzParseGen: parseGen never panics on any bytes.
func FuzzParseGen(f *testing.F) {
	f.Add([]byte{unix.AF_UNSPEC, 0, 0, 0, 8, 0, unix.NFTA_GEN_ID, 0, 0, 0, 1, 2})
	f.Add([]byte{0, 0, 0, 0, 5, 0, 1, 0, 7})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) { parseGen(b) })
}
