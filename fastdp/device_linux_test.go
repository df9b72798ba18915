package fastdp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/netnstest"
	"github.com/weftnet/weft/internal/roottest"
)

// pair is two namespaces a and b cabled by a veth, underlay 198.18.0.1 and
// .2, each with an "overlay" address on a bridge (10.99.1.1, 10.99.2.1)
// standing for the bridge.
type pair struct {
	a, b string
}

func newPair(t *testing.T) pair {
	t.Helper()
	roottest.Require(t)
	id := make([]byte, 3)
	_, _ = rand.Read(id)
	p := pair{a: "wfdp-" + hex.EncodeToString(id) + "-a", b: "wfdp-" + hex.EncodeToString(id) + "-b"}
	t.Cleanup(func() {
		for _, ns := range []string{p.a, p.b} {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	for _, args := range [][]string{
		{"netns", "add", p.a}, {"netns", "add", p.b},
		{"-n", p.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", p.b},
		{"-n", p.a, "addr", "add", "198.18.0.1/24", "dev", "eth0"},
		{"-n", p.b, "addr", "add", "198.18.0.2/24", "dev", "eth0"},
		{"-n", p.a, "link", "set", "eth0", "up"}, {"-n", p.b, "link", "set", "eth0", "up"},
		{"-n", p.a, "link", "set", "lo", "up"}, {"-n", p.b, "link", "set", "lo", "up"},
		{"-n", p.a, "link", "add", "ov", "type", "bridge"}, {"-n", p.b, "link", "add", "ov", "type", "bridge"},
		{"-n", p.a, "addr", "add", "10.99.1.1/32", "dev", "ov"}, {"-n", p.b, "addr", "add", "10.99.2.1/32", "dev", "ov"},
		{"-n", p.a, "link", "set", "ov", "up"}, {"-n", p.b, "link", "set", "ov", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return p
}

func (p pair) exec(t *testing.T, ns string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	return string(out), err
}

var (
	ulA, ulB = netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	ovA, ovB = netip.MustParseAddr("10.99.1.1"), netip.MustParseAddr("10.99.2.1")
)

func cfgFor(name string, local netip.Addr) Config {
	return Config{Device: DefaultDevice, VNI: DefaultVNI, Port: DefaultPort, Local: local, MAC: MAC(name), MTU: 1450}
}

func ensureIn(t *testing.T, ns string, cfg Config) *Device {
	t.Helper()
	var d *Device
	err := netnstest.Do(ns, func() (err error) { d, err = Ensure(cfg); return err })
	if err != nil {
		t.Fatalf("Ensure in %s: %v", ns, err)
	}
	return d
}

func syncIn(t *testing.T, ns string, d *Device, want Desired) SyncResult {
	t.Helper()
	var res SyncResult
	err := netnstest.Do(ns, func() (err error) { res, err = d.Sync(want); return err })
	if err != nil {
		t.Fatalf("Sync in %s: %v", ns, err)
	}
	return res
}

// The whole kernel side between two namespaces: the devices, Sync both
// ways, a packet across, the probe up, idempotence, the probe down when
// the VXLAN port is blocked, and pruning.
func TestDeviceSyncProbeAndPrune(t *testing.T) {
	p := newPair(t)
	da := ensureIn(t, p.a, cfgFor("a", ulA))
	db := ensureIn(t, p.b, cfgFor("b", ulB))
	toB := Desired{Src: ovA, Prune: true, Peers: []PeerEntry{{Name: "b", Underlay: ulB, MAC: MAC("b"), MTU: 1450, Prefixes: pfx("10.99.2.0/24")}}}
	toA := Desired{Src: ovB, Prune: true, Peers: []PeerEntry{{Name: "a", Underlay: ulA, MAC: MAC("a"), MTU: 1450, Prefixes: pfx("10.99.1.0/24")}}}
	if res := syncIn(t, p.a, da, toB); res.Added != 4 {
		t.Fatalf("first Sync added %d entries, want 4 (address, FDB, neighbour, route)", res.Added)
	}
	syncIn(t, p.b, db, toA)
	if res := syncIn(t, p.a, da, toB); res != (SyncResult{}) {
		t.Fatalf("second Sync changed %+v; want nothing", res)
	}
	out, _ := p.exec(t, p.a, "ip", "route", "show", "10.99.2.0/24")
	if !strings.Contains(out, "via 198.18.0.2 dev weft-vx proto 87") || !strings.Contains(out, "onlink") || !strings.Contains(out, "mtu 1450") {
		t.Fatalf("route: %q", out)
	}
	if out, err := p.exec(t, p.a, "ping", "-c", "1", "-W", "2", "-I", ovA.String(), ovB.String()); err != nil {
		t.Fatalf("ping across VXLAN: %v\n%s", err, out)
	}
	var st Stats
	if err := netnstest.Do(p.a, func() (err error) { st, err = da.Stats(); return err }); err != nil || st.TxPackets == 0 {
		t.Fatalf("device counters %+v, %v: want packets sent", st, err)
	}

	// The probe: up while the path works, down once VXLAN is dropped at b.
	var pr *Prober
	if err := netnstest.Do(p.a, func() (err error) { pr, err = NewProber(ProberConfig{Timeout: time.Second, SlowEvery: 3}); return err }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go pr.Run(ctx)
	waitProbe := func(want ProbeState) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for pr.State(ulB) != want {
			if time.Now().After(deadline) {
				t.Fatalf("probe of b is %v, want %v", pr.State(ulB), want)
			}
			pr.Send(da.Index(), ulA, []netip.Addr{ulB})
			time.Sleep(100 * time.Millisecond) // the probe's own pace, not synchronisation
		}
	}
	waitProbe(ProbeUp)
	if out, err := p.exec(t, p.b, "nft", "add table ip t; add chain ip t in { type filter hook input priority 0; }; add rule ip t in udp dport 6786 drop"); err != nil {
		t.Fatalf("nft: %v %s", err, out)
	}
	waitProbe(ProbeDown)
	if _, err := p.exec(t, p.b, "nft", "delete", "table", "ip", "t"); err != nil {
		t.Fatal(err)
	}
	waitProbe(ProbeUp)

	// Off the fast path: the routes go, neighbour and FDB stay for probing.
	off := toB
	off.Peers = []PeerEntry{toB.Peers[0]}
	off.Peers[0].Prefixes = nil
	syncIn(t, p.a, da, off)
	var routed map[netip.Addr]int
	if err := netnstest.Do(p.a, func() (err error) { routed, err = da.Routed(); return err }); err != nil || len(routed) != 0 {
		t.Fatalf("routed %v, %v after the peer left the fast path", routed, err)
	}
	pr.Send(da.Index(), ulA, []netip.Addr{ulB})
	waitProbe(ProbeUp)
	// Unknown peers survive a Sync without Prune, and go with one.
	syncIn(t, p.a, da, toB)
	syncIn(t, p.a, da, Desired{Src: ovA})
	if err := netnstest.Do(p.a, func() (err error) { routed, err = da.Routed(); return err }); err != nil || routed[ulB] != 1 {
		t.Fatalf("routed %v, %v: a Sync without Prune removed an unknown peer's route", routed, err)
	}
	if res := syncIn(t, p.a, da, Desired{Src: ovA, Prune: true}); res.Removed != 3 {
		t.Fatalf("pruning removed %d entries, want 3", res.Removed)
	}
	out, _ = p.exec(t, p.a, "ip", "neigh", "show", "dev", "weft-vx")
	if strings.Contains(out, "198.18.0.2") {
		t.Fatalf("neighbour left after pruning: %s", out)
	}
}

// Ensure adopts the device a previous run left (same index: no traffic
// disturbed), re-creates one with another port, refuses a foreign link (a bridge), and
// Remove deletes it.
func TestEnsureAdoptRecreateRemove(t *testing.T) {
	p := newPair(t)
	first := ensureIn(t, p.a, cfgFor("a", ulA))
	again := ensureIn(t, p.a, cfgFor("a", ulA))
	if again.Index() != first.Index() {
		t.Fatalf("a matching device was re-created (index %d -> %d)", first.Index(), again.Index())
	}
	other := cfgFor("a", ulA)
	other.Port = 6799
	moved := ensureIn(t, p.a, other)
	if moved.Index() == first.Index() {
		t.Fatal("a device with another port was kept")
	}
	out, _ := p.exec(t, p.a, "ip", "-d", "link", "show", "weft-vx")
	if !strings.Contains(out, "dstport 6799") || !strings.Contains(out, "nolearning") || !strings.Contains(out, MAC("a").String()) {
		t.Fatalf("device: %s", out)
	}
	if err := netnstest.Do(p.a, func() error { return Remove(DefaultDevice, nil) }); err != nil {
		t.Fatal(err)
	}
	if err := netnstest.Do(p.a, func() error { return Remove(DefaultDevice, nil) }); err != nil {
		t.Fatalf("removing twice: %v", err)
	}
	foreign := cfgFor("a", ulA)
	foreign.Device = "ov"
	err := netnstest.Do(p.a, func() error { _, err := Ensure(foreign); return err })
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("Ensure over a bridge: %v", err)
	}
	if err := netnstest.Do(p.a, func() error { return Remove("ov", nil) }); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Remove of a bridge: %v", err)
	}
}

// TestProberReadsRepliesOnly: the probe socket is not handed echo requests.
// A probe of this host's own loopback address arrives as a request, then
// the kernel's reply; the prober must see the reply and nothing else.
func TestProberReadsRepliesOnly(t *testing.T) {
	p := newPair(t)
	lo := netip.MustParseAddr("127.0.0.1")
	var pr *Prober
	if err := netnstest.Do(p.a, func() (err error) { pr, err = NewProber(ProberConfig{Timeout: time.Second, SlowEvery: 3}); return err }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go pr.Run(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for pr.State(lo) != ProbeUp {
		if time.Now().After(deadline) {
			t.Fatalf("probe of %v is %v, want up", lo, pr.State(lo))
		}
		pr.Send(0, lo, []netip.Addr{lo})
		time.Sleep(100 * time.Millisecond) // the probe's own pace, not synchronisation
	}
	// The request of each probe arrives before its reply, so once a reply
	// was read every request sent before it would have been read too.
	if n := pr.stray.Load(); n != 0 {
		t.Errorf("the prober read %d messages that are not its replies (echo requests), want 0", n)
	}
}

// SyncChange applies a new peer and moved routes without listing the
// kernel's entries (a full Sync lists four kinds of them for every change
// of the desired state, each round of a forming mesh: issue 21); a full
// Sync afterwards finds nothing to do. A peer gone is left to Sync.
func TestSyncChangeWithoutListing(t *testing.T) {
	p := newPair(t)
	da := ensureIn(t, p.a, cfgFor("a", ulA))
	ulC := netip.MustParseAddr("198.18.0.3")
	b := PeerEntry{Name: "b", Underlay: ulB, MAC: MAC("b"), MTU: 1450, Prefixes: pfx("10.99.2.0/24", "10.99.3.0/24")}
	c := PeerEntry{Name: "c", Underlay: ulC, MAC: MAC("c"), MTU: 1400, Prefixes: pfx("10.99.4.0/24")}
	prev := Desired{Src: ovA, Peers: []PeerEntry{b}}
	syncIn(t, p.a, da, prev)

	b2 := b
	b2.Prefixes = pfx("10.99.2.0/24", "10.99.5.0/25") // one kept, one gone, one new
	want := Desired{Src: ovA, Peers: []PeerEntry{b2, c}}
	dumps := da.dumps.Load()
	var res SyncResult
	var handled bool
	if err := netnstest.Do(p.a, func() (err error) { res, handled, err = da.SyncChange(prev, want); return err }); err != nil || !handled {
		t.Fatalf("SyncChange: handled %v, %v", handled, err)
	}
	if d := da.dumps.Load() - dumps; d != 0 {
		t.Fatalf("SyncChange listed the kernel's entries %d times, want 0", d)
	}
	if res.Added != 4 || res.Removed != 1 {
		t.Fatalf("SyncChange %+v, want 4 added (c's FDB, neighbour, route; b's new route) and 1 removed", res)
	}
	if again := syncIn(t, p.a, da, want); again != (SyncResult{}) {
		t.Fatalf("a full Sync after SyncChange changed %+v, want nothing", again)
	}
	out, _ := p.exec(t, p.a, "ip", "route", "show", "dev", DefaultDevice, "proto", "87")
	if !strings.Contains(out, "10.99.4.0/24 via 198.18.0.3") || !strings.Contains(out, "mtu 1400") || strings.Contains(out, "10.99.3.0/24") {
		t.Fatalf("routes after SyncChange:\n%s", out)
	}

	// A peer leaving, or another Src, is not a change SyncChange makes.
	for name, next := range map[string]Desired{
		"peer gone": {Src: ovA, Peers: []PeerEntry{c}},
		"new src":   {Src: ovB, Peers: want.Peers},
		"prune":     {Src: ovA, Peers: want.Peers, Prune: true},
	} {
		if err := netnstest.Do(p.a, func() (err error) { _, handled, err = da.SyncChange(want, next); return err }); err != nil || handled {
			t.Errorf("%s: handled %v, %v; want it left to Sync", name, handled, err)
		}
	}
}
