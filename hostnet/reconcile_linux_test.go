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
