package hostnet

// These tests need root: each runs in its own network namespace (wcni-<rand>)
// and deletes it at the end.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/test/cnitest"

	"github.com/weftnet/weft/internal/nlconv"

	"github.com/weftnet/weft/internal/logx"
	"github.com/weftnet/weft/internal/netnstest"
	"github.com/weftnet/weft/internal/roottest"
)

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newNetns makes a namespace deleted at the end of the test; it returns its
// name and path.
func newNetns(t *testing.T, suffix string) (string, string) {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "wcni-" + hex.EncodeToString(b) + suffix
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name, "/run/netns/" + name
}

func in(t *testing.T, nsPath string, fn func() error) {
	t.Helper()
	if err := netnstest.Do(nsPath, fn); err != nil {
		t.Fatal(err)
	}
}

func testConfig() Config {
	return Config{
		Bridge:   "weft",
		TUN:      "weft-tun",
		Range:    netip.MustParsePrefix("10.32.0.0/12"),
		HostAddr: netip.MustParseAddr("10.32.0.1"),
		MTU:      1376,
		Ports:    []uint16{6782, 6783, 6784},
	}
}

func bridgeAddrs(t *testing.T, name string) []string {
	t.Helper()
	link, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		out = append(out, nlconv.Prefix(a.IPNet).String())
	}
	slices.Sort(out)
	return out
}

func readSysctl(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestConfigValidation(t *testing.T) {
	good := testConfig()
	good.Range = netip.MustParsePrefix("10.32.1.0/12")
	if err := good.validate(); err != nil || good.Range.String() != "10.32.0.0/12" {
		t.Fatalf("valid config: %v, range %v", err, good.Range)
	}
	for _, mod := range []func(*Config){
		func(c *Config) { c.Bridge = "" },
		func(c *Config) { c.Bridge = "a-name-much-too-long" },
		func(c *Config) { c.HostAddr = netip.MustParseAddr("10.99.0.1") },
		func(c *Config) { c.Range = netip.Prefix{} },
		func(c *Config) { c.MTU = 20 },
	} {
		c := testConfig()
		mod(&c)
		// validate only: Setup would touch the machine's own namespace.
		if err := c.validate(); err == nil {
			t.Errorf("accepted %+v", c)
		}
	}
}

func TestMasqueradeExprsMask(t *testing.T) {
	if m := prefixMask(12); m != [4]byte{255, 240, 0, 0} {
		t.Fatalf("mask /12 = %v", m)
	}
	if m := prefixMask(32); m != [4]byte{255, 255, 255, 255} {
		t.Fatalf("mask /32 = %v", m)
	}
}

func TestSetupIsIdempotentAndReplacesStaleAddress(t *testing.T) {
	roottest.Require(t)
	_, ns := newNetns(t, "")
	cfg := testConfig()
	in(t, ns, func() error {
		// A bridge left by an earlier run with another host address, and a
		// foreign address that is not weft's to touch.
		run(t, "ip", "link", "add", "weft", "type", "bridge")
		run(t, "ip", "addr", "add", "10.32.7.7/32", "dev", "weft")
		run(t, "ip", "addr", "add", "198.18.0.1/24", "dev", "weft")
		for range 2 {
			if _, err := Setup(cfg); err != nil {
				return err
			}
			if got, want := bridgeAddrs(t, "weft"), []string{"10.32.0.1/32", "198.18.0.1/24"}; !slices.Equal(got, want) {
				t.Fatalf("bridge addresses %v, want %v", got, want)
			}
			link, _ := netlink.LinkByName("weft")
			if link.Attrs().MTU != cfg.MTU || link.Attrs().Flags&net.FlagUp == 0 {
				t.Fatalf("bridge MTU %d flags %v", link.Attrs().MTU, link.Attrs().Flags)
			}
			if v := readSysctl(t, "/proc/sys/net/ipv4/ip_forward"); v != "1" {
				t.Fatalf("ip_forward=%s", v)
			}
			if v := readSysctl(t, "/proc/sys/net/ipv4/conf/weft/rp_filter"); v != "2" {
				t.Fatalf("rp_filter on bridge=%s", v)
			}
			conn, err := nftables.New()
			if err != nil {
				return err
			}
			chain, err := conn.ListChain(weftTable, "postrouting")
			if err != nil {
				t.Fatalf("nft chain: %v", err)
			}
			rules, err := conn.GetRules(weftTable, chain)
			if err != nil || len(rules) != 1 {
				t.Fatalf("nft rules %d (%v), want exactly 1 after each Setup", len(rules), err)
			}
		}
		if err := (&Host{cfg: cfg, log: logx.OrDiscard(nil)}).SetMTU(1300); err != nil {
			return err
		}
		link, _ := netlink.LinkByName("weft")
		if link.Attrs().MTU != 1300 {
			t.Fatalf("SetMTU: MTU %d", link.Attrs().MTU)
		}
		return nil
	})
}

func routesOn(t *testing.T, dev string) []string {
	t.Helper()
	link, err := netlink.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := netlink.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		s := nlconv.RouteDst(r).String()
		if r.Protocol == RouteProtocol {
			s += " weft"
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func TestSyncLocalRangesAndOverlayRoute(t *testing.T) {
	roottest.Require(t)
	_, ns := newNetns(t, "")
	cfg := testConfig()
	in(t, ns, func() error {
		h, err := Setup(cfg)
		if err != nil {
			return err
		}
		run(t, "ip", "route", "add", "10.40.0.0/16", "dev", "weft", "proto", "static")
		a, b, c := netip.MustParsePrefix("10.32.0.0/24"), netip.MustParsePrefix("10.33.0.0/16"), netip.MustParsePrefix("10.34.128.0/17")
		if err := h.SyncLocalRanges([]netip.Prefix{a, b}); err != nil {
			return err
		}
		if err := h.SyncLocalRanges([]netip.Prefix{b, c}); err != nil {
			return err
		}
		want := []string{"10.33.0.0/16 weft", "10.34.128.0/17 weft", "10.40.0.0/16"}
		if got := routesOn(t, "weft"); !slices.Equal(got, want) {
			t.Fatalf("bridge routes %v, want %v", got, want)
		}

		if err := h.RouteOverlay(); err == nil {
			t.Fatal("RouteOverlay succeeded without a TUN")
		}
		run(t, "ip", "tuntap", "add", "weft-tun", "mode", "tun")
		run(t, "ip", "link", "set", "weft-tun", "up")
		for range 2 {
			if err := h.RouteOverlay(); err != nil {
				return err
			}
		}
		tun, _ := netlink.LinkByName("weft-tun")
		rs, err := netlink.RouteList(tun, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if len(rs) != 1 || nlconv.RouteDst(rs[0]) != cfg.Range || rs[0].Priority != OverlayMetric || rs[0].Src.String() != "10.32.0.1" {
			t.Fatalf("TUN routes %+v, want one %s src 10.32.0.1 metric %d", rs, cfg.Range, OverlayMetric)
		}
		if v := readSysctl(t, "/proc/sys/net/ipv4/conf/weft-tun/rp_filter"); v != "2" {
			t.Fatalf("rp_filter on TUN=%s", v)
		}

		for range 2 {
			if err := Teardown("weft", nil); err != nil {
				return err
			}
		}
		if _, err := netlink.LinkByName("weft"); err == nil {
			t.Fatal("bridge left after Teardown")
		}
		if left, _ := weftRoutes(0); len(left) != 0 {
			t.Fatalf("weft routes left after Teardown: %v", left)
		}
		conn, _ := nftables.New()
		if _, err := conn.ListTableOfFamily(NftTable, nftables.TableFamilyIPv4); err == nil {
			t.Fatal("nft table left after Teardown")
		}
		return nil
	})
}

func TestUnderlayMTUAndDefaultRouteAddr(t *testing.T) {
	roottest.Require(t)
	_, ns := newNetns(t, "")
	in(t, ns, func() error {
		if _, err := DefaultRouteAddr(); !errors.Is(err, ErrNoDefaultRoute) {
			t.Fatalf("no default route: err %v", err)
		}
		run(t, "ip", "link", "add", "ul0", "mtu", "1450", "type", "veth", "peer", "name", "ul1")
		run(t, "ip", "addr", "add", "198.18.0.1/24", "dev", "ul0")
		run(t, "ip", "link", "set", "ul0", "up")
		run(t, "ip", "route", "add", "default", "via", "198.18.0.254", "dev", "ul0")
		addr, err := DefaultRouteAddr()
		if err != nil || addr != netip.MustParseAddr("198.18.0.1") {
			t.Fatalf("DefaultRouteAddr = %v, %v", addr, err)
		}
		mtu, err := UnderlayMTU(addr)
		if err != nil || mtu != 1450 {
			t.Fatalf("UnderlayMTU = %d, %v", mtu, err)
		}
		return nil
	})
}

// TestMasquerade sends a pod's ping to an "outside" namespace that has no
// route back to the overlay: it can only be answered if the host
// masqueraded it. Pod to host-overlay traffic keeps the pod's source.
func TestMasquerade(t *testing.T) {
	roottest.Require(t)
	hostName, hostNS := newNetns(t, "")
	podName, podNS := newNetns(t, "-pod")
	outName, _ := newNetns(t, "-out")
	cfg := testConfig()
	in(t, hostNS, func() error {
		h, err := Setup(cfg)
		if err != nil {
			return err
		}
		return h.SyncLocalRanges([]netip.Prefix{netip.MustParsePrefix("10.32.0.0/24")})
	})
	wirePodAndUnderlay(t, hostName, podName, outName)
	run(t, "ip", "-n", hostName, "route", "add", "default", "via", "198.18.0.2")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := cnitest.Ping(ctx, podNS, netip.MustParseAddr("10.32.0.1")); err != nil {
		t.Fatalf("pod to its gateway: %v", err)
	}
	if err := cnitest.Ping(ctx, podNS, netip.MustParseAddr("198.18.0.2")); err != nil {
		t.Fatalf("pod to the outside (needs masquerade): %v", err)
	}
	// Without the table the same ping must fail: the test can tell.
	in(t, hostNS, deleteMasquerade)
	short, cancel2 := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel2()
	if err := cnitest.Ping(short, podNS, netip.MustParseAddr("198.18.0.2")); err == nil {
		t.Fatal("pod reached the outside without masquerade: the test proves nothing")
	}
}

// TestFailClosedWithoutTUN: with a default route on the underlay, pod traffic
// for another host's range goes to the TUN while it exists, and meets
// "unreachable" once it is gone (agent stopped or killed), never the default
// route, where it would leave the host unencrypted.
func TestFailClosedWithoutTUN(t *testing.T) {
	roottest.Require(t)
	name, ns := newNetns(t, "")
	cfg := testConfig()
	routeGet := func(dst string) (string, error) {
		out, err := exec.Command("ip", "-n", name, "-4", "route", "get", dst).CombinedOutput()
		return string(out), err
	}
	in(t, ns, func() error {
		run(t, "ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul1")
		run(t, "ip", "addr", "add", "198.18.0.1/24", "dev", "ul0")
		run(t, "ip", "link", "set", "ul0", "up")
		run(t, "ip", "link", "set", "ul1", "up")
		run(t, "ip", "route", "add", "default", "via", "198.18.0.254", "dev", "ul0")
		h, err := Setup(cfg)
		if err != nil {
			return err
		}
		run(t, "ip", "tuntap", "add", "weft-tun", "mode", "tun")
		run(t, "ip", "link", "set", "weft-tun", "up")
		return h.RouteOverlay()
	})
	if out, err := routeGet("10.33.0.5"); err != nil || !strings.Contains(out, "dev weft-tun") {
		t.Fatalf("with the TUN: route get = %q, %v; want dev weft-tun", out, err)
	}
	run(t, "ip", "-n", name, "link", "del", "weft-tun")
	out, err := routeGet("10.33.0.5")
	if err == nil || strings.Contains(out, "ul0") || !strings.Contains(out, "No route to host") {
		t.Fatalf("without the TUN: route get = %q, %v; want unreachable, never the default route", out, err)
	}
	// Outside the overlay range the default route still applies.
	if out, err := routeGet("192.0.2.1"); err != nil || !strings.Contains(out, "dev ul0") {
		t.Fatalf("outside the overlay: route get = %q, %v", out, err)
	}
}

// listen opens a TCP listener on addr inside namespace nsPath that accepts
// and closes connections until the test ends.
func listen(t *testing.T, nsPath, addr string) {
	t.Helper()
	var ln net.Listener
	in(t, nsPath, func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// dial reports whether a TCP connection from namespace nsPath to addr is
// accepted within a second.
func dial(t *testing.T, nsPath, addr string) bool {
	t.Helper()
	ok := false
	in(t, nsPath, func() error {
		c, err := net.DialTimeout("tcp4", addr, time.Second)
		if err == nil {
			ok = true
			c.Close()
		}
		return nil
	})
	return ok
}

// TestHostFilter: a pod reaches none of the agent's ports on its host's
// addresses (gateway and underlay), nor on a peer's underlay address once
// that is in the peer set; it still reaches a peer's other ports, and the
// peer's agent ports again once the peer is gone from the set.
func TestHostFilter(t *testing.T) {
	roottest.Require(t)
	hostName, hostNS := newNetns(t, "")
	podName, podNS := newNetns(t, "-pod")
	peerName, peerNS := newNetns(t, "-peer")
	cfg := testConfig()
	var h *Host
	in(t, hostNS, func() (err error) {
		if h, err = Setup(cfg); err != nil {
			return err
		}
		return h.SyncLocalRanges([]netip.Prefix{netip.MustParsePrefix("10.32.0.0/24")})
	})
	wirePodAndUnderlay(t, hostName, podName, peerName)

	for _, p := range []string{"6782", "6783", "7000"} {
		listen(t, hostNS, "0.0.0.0:"+p)
		listen(t, peerNS, "0.0.0.0:"+p)
	}
	listen(t, peerNS, "0.0.0.0:6790")
	// The host itself (no pod) reaches its own ports: the filter is for pods.
	if !dial(t, hostNS, "198.18.0.1:6783") || !dial(t, hostNS, "10.32.0.1:6783") {
		t.Fatal("the host cannot reach its own port 6783")
	}
	if !dial(t, podNS, "10.32.0.1:7000") || !dial(t, podNS, "198.18.0.2:7000") {
		t.Fatal("pod cannot reach unfiltered ports on its host and a peer")
	}
	for _, a := range []string{"10.32.0.1:6782", "10.32.0.1:6783", "198.18.0.1:6782", "198.18.0.1:6783"} {
		if dial(t, podNS, a) {
			t.Errorf("pod reached the agent port %s of its own host", a)
		}
	}
	// Not yet a peer: an ordinary destination.
	if !dial(t, podNS, "198.18.0.2:6783") {
		t.Fatal("pod cannot reach 198.18.0.2:6783 before it is a peer")
	}
	var err error
	in(t, hostNS, func() error {
		err = h.SetPeers([]netip.Addr{netip.MustParseAddr("198.18.0.2")}, []uint16{6790})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"198.18.0.2:6783", "198.18.0.2:6782", "198.18.0.2:6790"} {
		if dial(t, podNS, a) {
			t.Errorf("pod reached the peer's agent port %s", a)
		}
	}
	if !dial(t, podNS, "198.18.0.2:7000") {
		t.Error("pod cannot reach an ordinary port of the peer")
	}
	in(t, hostNS, func() error {
		err = h.SetPeers(nil, nil)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !dial(t, podNS, "198.18.0.2:6783") {
		t.Error("pod still kept from 198.18.0.2:6783 after it left the peer set")
	}
	// Setup again keeps the filter (a relaunch over running pods).
	in(t, hostNS, func() (err error) { _, err = Setup(cfg); return err })
	if dial(t, podNS, "198.18.0.1:6783") {
		t.Error("pod reached its host's port 6783 after a second Setup")
	}
}

// wirePodAndUnderlay plugs a pod (10.32.0.2) into the host's bridge as the
// shim does, and links the host (198.18.0.1) to a namespace on the underlay
// (198.18.0.2): the outside world or a peer.
func wirePodAndUnderlay(t *testing.T, hostName, podName, otherName string) {
	t.Helper()
	run(t, "ip", "-n", hostName, "link", "add", "vethwetest", "type", "veth", "peer", "name", "eth0", "netns", podName)
	run(t, "ip", "-n", hostName, "link", "set", "vethwetest", "master", "weft", "up")
	run(t, "ip", "-n", podName, "addr", "add", "10.32.0.2/32", "dev", "eth0")
	run(t, "ip", "-n", podName, "link", "set", "eth0", "up")
	run(t, "ip", "-n", podName, "route", "add", "10.32.0.1", "dev", "eth0", "scope", "link")
	run(t, "ip", "-n", podName, "route", "add", "default", "via", "10.32.0.1", "dev", "eth0")
	run(t, "ip", "-n", hostName, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", otherName)
	run(t, "ip", "-n", hostName, "addr", "add", "198.18.0.1/24", "dev", "ul0")
	run(t, "ip", "-n", hostName, "link", "set", "ul0", "up")
	run(t, "ip", "-n", otherName, "addr", "add", "198.18.0.2/24", "dev", "ul0")
	run(t, "ip", "-n", otherName, "link", "set", "ul0", "up")
}

// A relaunched agent's Setup keeps the peers of the filter it replaces, and
// its SetPeers keeps them too: until gossip names them again, their traffic
// to the VXLAN port must not be dropped.
func TestSetupKeepsPreviousPeers(t *testing.T) {
	roottest.Require(t)
	_, ns := newNetns(t, "")
	cfg := testConfig()
	cfg.VXLANPort = 6786
	peer := netip.MustParseAddr("198.18.0.7")
	in(t, ns, func() error {
		h, err := Setup(cfg)
		if err != nil {
			return err
		}
		if err := h.SetPeers([]netip.Addr{peer}, nil); err != nil {
			return err
		}
		again, err := Setup(cfg) // the relaunch: no peers known yet
		if err != nil {
			return err
		}
		if err := again.SetPeers(nil, nil); err != nil {
			return err
		}
		if got := keptPeers(); !slices.Contains(got, peer) {
			return fmt.Errorf("peers after the relaunch: %v, want %v kept", got, peer)
		}
		return nil
	})
}
