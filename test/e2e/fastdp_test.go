package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/test/testbed"
)

// End-to-end tests of the kernel fast path (issue 17): VXLAN between hosts
// without a password, per-pair fall-back to userspace, and restarts that
// cost fast-path traffic nothing.

const vxlanPort = "6786"

// datapaths returns host h's view of each peer: "fastdp", or "userspace: <reason>".
func datapaths(ctx context.Context, h *testbed.Host) (map[string]string, error) {
	cs, err := h.Client().Connections(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, c := range cs {
		if c.Datapath == "fastdp" {
			out[c.Peer] = "fastdp"
		} else {
			out[c.Peer] = "userspace: " + c.DatapathReason
		}
	}
	return out, nil
}

// waitDatapath waits until h sees the pair with peer on the fast path (fast)
// or off it, and returns how long that took.
func waitDatapath(t *testing.T, h *testbed.Host, peer string, fast bool, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	err := testbed.Eventually(context.Background(), timeout, func() error {
		dps, err := datapaths(context.Background(), h)
		if err != nil {
			return err
		}
		last = dps[peer]
		if (last == "fastdp") == fast {
			return nil
		}
		return errorf("%s -> %s is %q", h.Name, peer, last)
	})
	if err != nil {
		t.Fatalf("%s -> %s: want fast=%v within %s: %v", h.Name, peer, fast, timeout, err)
	}
	return time.Since(start)
}

// allFast waits until every pair among hosts is on the fast path.
func allFast(t *testing.T, hosts []*testbed.Host, timeout time.Duration) {
	t.Helper()
	for _, a := range hosts {
		for _, b := range hosts {
			if a != b {
				waitDatapath(t, a, b.Name, true, timeout)
			}
		}
	}
}

// blockVXLAN drops UDP to the VXLAN port between h and other in h's
// namespace, both ways; the returned function lifts it.
func blockVXLAN(t *testing.T, h, other *testbed.Host) func() {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rules := fmt.Sprintf("add table ip e2eblock; "+
		"add chain ip e2eblock in { type filter hook input priority -10; }; "+
		"add chain ip e2eblock out { type filter hook output priority -10; }; "+
		"add rule ip e2eblock in ip saddr %s udp dport %s drop; "+
		"add rule ip e2eblock out ip daddr %s udp dport %s drop", other.Addr, vxlanPort, other.Addr, vxlanPort)
	if out, err := h.Exec(ctx, "nft", rules); err != nil {
		t.Fatalf("nft in %s: %v %s", h.Name, err, out)
	}
	lifted := false
	lift := func() {
		if lifted {
			return
		}
		lifted = true
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if out, err := h.Exec(ctx, "nft", "delete", "table", "ip", "e2eblock"); err != nil {
			t.Errorf("nft delete in %s: %v %s", h.Name, err, out)
		}
	}
	t.Cleanup(lift)
	return lift
}

// Three unencrypted hosts: every pair on the fast path, pods reach each
// other, and the underlay carries VXLAN frames, not weft's datagrams. With
// UDP 6786 blocked between host1 and host3 that pair falls back within 5 s
// and still carries traffic, host1-host2 stays fast, and the pair returns
// after unblocking.
func TestFastPathThreeHostsAndFallback(t *testing.T) {
	bed := threeHosts(t, testbed.Options{})
	h1, h2, h3 := bed.Hosts[0], bed.Hosts[1], bed.Hosts[2]
	allFast(t, bed.Hosts[:3], 20*time.Second)
	ps := pods(t, bed, 1)
	p1, p2, p3 := ps[0], ps[1], ps[2]
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	for _, src := range ps {
		for _, dst := range ps {
			if src != dst {
				if err := testbed.Ping(ctx, src.Netns, dst.Addr, 1); err != nil {
					t.Errorf("%s -> %s: %v", src.Host.Name, dst.Host.Name, err)
				}
			}
		}
	}

	// On the wire: VXLAN frames from host1 to host3's port 6786 carrying
	// the pods' packets (unencrypted, as flannel's), no weft datagrams.
	pcap := captureFilter(t, bed, func() {
		transferPattern(t, p1.Netns, p3.Netns, p3.Addr.String()+":5011", 4<<20, marker)
	}, "udp")
	// Frames may be GSO super-frames on the simulated wire: count bytes.
	vxlanBytes, weftData := 0, 0
	for _, g := range udpGrams(pcap) {
		switch {
		case strings.HasPrefix(g.from, h1.Addr.String()+":") && g.to == h3.Addr.String()+":"+vxlanPort:
			// VXLAN header: flags 0x08, VNI in bytes 4..6.
			if len(g.payload) > 8 && g.payload[0] == 0x08 {
				vxlanBytes += len(g.payload)
			}
		case g.from == h1.Addr.String()+":6784" && g.to == h3.Addr.String()+":6784":
			weftData++
		}
	}
	if vxlanBytes < 2<<20 || weftData > 0 { // a loaded capture may miss some frames
		t.Fatalf("host1 -> host3 during 4 MiB: %d bytes of VXLAN frames, %d weft datagrams; want (most of) the 4 MiB in VXLAN only", vxlanBytes, weftData)
	}
	if !strings.Contains(string(pcap), marker) {
		t.Error("the capture holds no pod payload: it saw other traffic than the transfer")
	}
	if v := metric(t, h1, `weft_fastdp_device_packets_total{direction="tx"}`); v < 100 {
		t.Errorf("host1's VXLAN device sent %.0f packets, want the transfer's", v)
	}
	if v := metric(t, h1, `weft_peer_datapath{datapath="fastdp",peer="host3"}`); v != 1 {
		t.Errorf("weft_peer_datapath for host3 = %v, want 1 on fastdp", v)
	}
	out := weftView(t, h1, "status", "connections")
	if !regexp.MustCompile(`host3\s.*\sfastdp\s`).MatchString(out) {
		t.Errorf("weft status connections does not show host3 on fastdp:\n%s", out)
	}

	// A VXLAN frame forged from an address that is no peer is dropped by
	// host1's filter before its VXLAN device sees it; one from a peer's
	// address passes that rule.
	vxlanDrops := func() int {
		out, err := h1.Exec(ctx, "nft", "list", "chain", "ip", "weft", "input")
		if err != nil {
			t.Fatalf("nft: %v %s", err, out)
		}
		m := regexp.MustCompile(`dport ` + vxlanPort + ` ip saddr != @peers counter packets (\d+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("host1's filter has no rule for the VXLAN port:\n%s", out)
		}
		var n int
		fmt.Sscan(m[1], &n)
		return n
	}
	frame := "08000000001a8200" + "ffffffffffff" + "020000000001" + "0800" + "4500001c0000000040010000c0000201c0000202"
	before := vxlanDrops()
	inNetns(t, h3.Netns, "WEFT_E2E_HELPER=inject", "WEFT_E2E_SRC="+h2.Addr.String()+":40000",
		"WEFT_E2E_DST="+h1.Addr.String()+":"+vxlanPort, "WEFT_E2E_PAYLOAD="+frame)
	if got := vxlanDrops(); got != before {
		t.Errorf("a frame from a peer's address was dropped by the VXLAN rule (%d -> %d)", before, got)
	}
	inNetns(t, h3.Netns, "WEFT_E2E_HELPER=inject", "WEFT_E2E_SRC=198.18.0.99:40000",
		"WEFT_E2E_DST="+h1.Addr.String()+":"+vxlanPort, "WEFT_E2E_PAYLOAD="+frame)
	if got := vxlanDrops(); got != before+1 {
		t.Errorf("a VXLAN frame from a non-peer: drop counter %d -> %d, want one more", before, got)
	}

	// Block VXLAN between host1 and host3 (in host3's namespace).
	fallbacksBefore := metric(t, h1, `weft_fastdp_fallbacks_total{peer="host3"}`)
	lift := blockVXLAN(t, h3, h1)
	took := waitDatapath(t, h1, "host3", false, 5*time.Second)
	t.Logf("host1 -> host3 fell back to userspace %s after the block", took.Round(10*time.Millisecond))
	waitDatapath(t, h3, "host1", false, 5*time.Second)
	dps, err := datapaths(ctx, h1)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(dps["host3"], "no answer across VXLAN") {
		t.Errorf("reason for host3: %q", dps["host3"])
	}
	if dps["host2"] != "fastdp" {
		t.Errorf("host1 -> host2 left the fast path while host3 was blocked: %q", dps["host2"])
	}
	if err := testbed.Ping(ctx, p1.Netns, p3.Addr, 2); err != nil {
		t.Errorf("host1 -> host3 over userspace: %v", err)
	}
	if seen := transfer(t, p3.Netns, p1.Netns, p1.Addr.String()+":5012", 2<<20); seen != p3.Addr.String() {
		t.Errorf("host3 -> host1 over userspace: server saw %s", seen)
	}
	if err := testbed.Ping(ctx, p1.Netns, p2.Addr, 2); err != nil {
		t.Errorf("host1 -> host2 during the block: %v", err)
	}
	if d := metric(t, h1, `weft_fastdp_fallbacks_total{peer="host3"}`) - fallbacksBefore; d < 1 {
		t.Errorf("fall-backs to host3 grew by %.0f, want at least 1", d)
	}
	lift()
	waitDatapath(t, h1, "host3", true, 10*time.Second)
	waitDatapath(t, h3, "host1", true, 10*time.Second)
	if dps, _ := datapaths(ctx, h2); dps["host1"] != "fastdp" {
		t.Errorf("host2 -> host1: %q", dps["host1"])
	}
	if err := testbed.Ping(ctx, p3.Netns, p1.Addr, 2); err != nil {
		t.Errorf("host3 -> host1 back on the fast path: %v", err)
	}
}

// A host with --datapath userspace talks to fast-path hosts over userspace;
// the two others keep the fast path between themselves.
func TestFastPathMixedMesh(t *testing.T) {
	bed := testbed.Start(t, testbed.Options{Hosts: 3})
	h1, h2, h3 := bed.Hosts[0], bed.Hosts[1], bed.Hosts[2]
	args := []string{"--ipalloc-init", "consensus=3"}
	launch(t, h1, args)
	launch(t, h2, args, h1.Target())
	launch(t, h3, append(args, "--datapath", "userspace"), h1.Target())
	if err := testbed.WaitReady(context.Background(), 30*time.Second, h1, h2, h3); err != nil {
		t.Fatal(err)
	}
	allFast(t, []*testbed.Host{h1, h2}, 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, h := range []*testbed.Host{h1, h2} {
		dps, err := datapaths(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(dps["host3"], "offers no fast path") {
			t.Errorf("%s -> host3: %q, want userspace because host3 offers no fast path", h.Name, dps["host3"])
		}
	}
	dps, err := datapaths(ctx, h3)
	if err != nil {
		t.Fatal(err)
	}
	for _, peer := range []string{"host1", "host2"} {
		if !strings.Contains(dps[peer], "--datapath userspace") {
			t.Errorf("host3 -> %s: %q", peer, dps[peer])
		}
	}
	if out, err := h3.Exec(ctx, "ip", "link", "show", "weft-vx"); err == nil {
		t.Errorf("host3 (--datapath userspace) has a VXLAN device: %s", out)
	}
	ps := pods(t, bed, 1)
	for _, src := range ps {
		for _, dst := range ps {
			if src != dst {
				if err := testbed.Ping(ctx, src.Netns, dst.Addr, 1); err != nil {
					t.Errorf("%s -> %s: %v", src.Host.Name, dst.Host.Name, err)
				}
			}
		}
	}
	transfer(t, ps[0].Netns, ps[2].Netns, ps[2].Addr.String()+":5013", 4<<20)
	transfer(t, ps[2].Netns, ps[1].Netns, ps[1].Addr.String()+":5013", 4<<20)
}

// With a password nothing uses the fast path: no VXLAN device, every pair
// in userspace, and the pods' payload never appears on the underlay.
func TestFastPathNeverWithPassword(t *testing.T) {
	bed := threeHosts(t, testbed.Options{}, "--password", "s3cret passphrase")
	ps := pods(t, bed, 1)
	p1, p2 := ps[0], ps[1]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := testbed.Eventually(ctx, 10*time.Second, func() error { return testbed.Ping(ctx, p1.Netns, p2.Addr, 1) }); err != nil {
		t.Fatal(err)
	}
	for _, h := range bed.Hosts[:3] {
		if out, err := h.Exec(ctx, "ip", "link", "show", "weft-vx"); err == nil {
			t.Errorf("%s has a VXLAN device with a password: %s", h.Name, out)
		}
		dps, err := datapaths(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		for peer, dp := range dps {
			if !strings.HasPrefix(dp, "userspace: encrypted") {
				t.Errorf("%s -> %s: %q, want userspace (encrypted)", h.Name, peer, dp)
			}
		}
		if v := metric(t, h, "weft_fastdp_enabled"); v != 0 {
			t.Errorf("%s: weft_fastdp_enabled %v", h.Name, v)
		}
	}
	pcap := captureFilter(t, bed, func() {
		transferPattern(t, p1.Netns, p2.Netns, p2.Addr.String()+":5014", 4<<20, marker)
	}, "udp")
	if strings.Contains(string(pcap), marker) {
		t.Fatal("the pods' payload crossed the underlay in cleartext")
	}
	vxlan, data := 0, 0
	for _, g := range udpGrams(pcap) {
		switch {
		case strings.HasSuffix(g.to, ":"+vxlanPort):
			vxlan++
		case strings.HasSuffix(g.to, ":6784"):
			data++
		}
	}
	if vxlan != 0 || data < 100 {
		t.Fatalf("%d VXLAN frames and %d weft datagrams on the underlay; want none and the transfer's", vxlan, data)
	}
}

// kill -9 and relaunch of an agent under a 10 ms ping between fast-path
// pods: not one ping lost, on either end.
func TestFastPathRestartLosesNothing(t *testing.T) {
	bed := threeHosts(t, testbed.Options{})
	h1, h2 := bed.Hosts[0], bed.Hosts[1]
	allFast(t, []*testbed.Host{h1, h2}, 20*time.Second)
	ps := pods(t, bed, 1)
	p1, p2 := ps[0], ps[1]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := testbed.Ping(ctx, p1.Netns, p2.Addr, 1); err != nil {
		t.Fatal(err)
	}
	for _, victim := range []*testbed.Host{h2, h1} {
		// 10 ms apart for the whole kill, relaunch and readiness.
		const count = 1500
		ping := exec.CommandContext(ctx, "ip", "netns", "exec", p1.Netns, "ping", "-q", "-i", "0.01", "-W", "1",
			"-c", fmt.Sprint(count), p2.Addr.String())
		var out strings.Builder
		ping.Stdout, ping.Stderr = &out, &out
		if err := ping.Start(); err != nil {
			t.Fatal(err)
		}
		if err := victim.Kill(); err != nil {
			t.Fatal(err)
		}
		var peers []string
		if victim != h1 {
			peers = []string{h1.Target()}
		} else {
			peers = []string{h2.Target()}
		}
		launch(t, victim, []string{"--ipalloc-init", "consensus=3"}, peers...)
		if err := testbed.WaitReady(ctx, 30*time.Second, victim); err != nil {
			t.Fatal(err)
		}
		other := h1
		if victim == h1 {
			other = h2
		}
		waitDatapath(t, victim, other.Name, true, 10*time.Second)
		err := ping.Wait()
		m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`).FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("ping said: %v %s", err, out.String())
		}
		t.Logf("kill -9 and relaunch of %s: %s sent, %s received", victim.Name, m[1], m[2])
		if m[1] != m[2] {
			t.Errorf("kill -9 and relaunch of %s lost pings between fast-path pods: %s", victim.Name, m[0])
		}
	}
}

// Hosts with different underlay MTUs: the one with the larger underlay does
// not blackhole big packets towards the smaller one. A DF packet too big for
// the peer is answered with "fragmentation needed" naming the peer's MTU,
// and without DF it is fragmented and arrives.
func TestFastPathSmallerUnderlayMTUOnOneHost(t *testing.T) {
	bed := testbed.Start(t, testbed.Options{Hosts: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h1, h2 := bed.Hosts[0], bed.Hosts[1]
	if err := h2.SetUnderlayMTU(ctx, 1400); err != nil {
		t.Fatal(err)
	}
	launch(t, h1, []string{"--ipalloc-init", "consensus=2"})
	launch(t, h2, []string{"--ipalloc-init", "consensus=2"}, h1.Target())
	if err := testbed.WaitReady(ctx, 30*time.Second, h1, h2); err != nil {
		t.Fatal(err)
	}
	allFast(t, bed.Hosts, 20*time.Second)
	for h, want := range map[*testbed.Host]int{h1: 1450, h2: 1350} {
		st, err := h.Client().Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.MTU != want {
			t.Errorf("%s overlay MTU %d, want %d (underlay minus VXLAN's 50)", h.Name, st.MTU, want)
		}
	}
	ps := pods(t, bed, 1)
	p1, p2 := ps[0], ps[1]
	big := fmt.Sprint(1450 - 28)
	out, err := p1.Exec(ctx, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", big, p2.Addr.String())
	if err == nil || !strings.Contains(out, "1350") {
		t.Errorf("a DF ping of 1450 bytes towards the 1400-byte underlay: %v %q; want fragmentation needed, mtu 1350", err, out)
	}
	if out, err := p1.Exec(ctx, "ping", "-c", "2", "-W", "2", "-M", "dont", "-s", big, p2.Addr.String()); err != nil {
		t.Errorf("a 1450-byte ping without DF was lost: %v %s", err, out)
	}
	if out, err := p1.Exec(ctx, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", fmt.Sprint(1350-28), p2.Addr.String()); err != nil {
		t.Errorf("a DF ping of the peer's MTU: %v %s", err, out)
	}
	transfer(t, p1.Netns, p2.Netns, p2.Addr.String()+":5015", 8<<20)
	transfer(t, p2.Netns, p1.Netns, p1.Addr.String()+":5015", 8<<20)
}

// VXLAN dropped one way only (into host3 from host1): host1 sends to host3
// through userspace, host3 keeps sending through VXLAN, and traffic flows
// both ways: packets of one flow arrive on the TUN and leave through the
// VXLAN device without the reverse-path check dropping them.
func TestFastPathOneWayBlock(t *testing.T) {
	bed := threeHosts(t, testbed.Options{})
	h1, h3 := bed.Hosts[0], bed.Hosts[2]
	allFast(t, []*testbed.Host{h1, h3}, 20*time.Second)
	ps := pods(t, bed, 1)
	p1, p3 := ps[0], ps[2]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rules := fmt.Sprintf("add table ip e2eblock; add chain ip e2eblock in { type filter hook input priority -10; }; "+
		"add rule ip e2eblock in ip saddr %s udp dport %s drop", h1.Addr, vxlanPort)
	if out, err := h3.Exec(ctx, "nft", rules); err != nil {
		t.Fatalf("nft: %v %s", err, out)
	}
	t.Cleanup(func() { _, _ = h3.Exec(context.Background(), "nft", "delete", "table", "ip", "e2eblock") })
	waitDatapath(t, h1, "host3", false, 5*time.Second)
	if dps, err := datapaths(ctx, h3); err != nil || dps["host1"] != "fastdp" {
		t.Fatalf("host3 -> host1: %q, %v; want it to stay on the fast path", dps["host1"], err)
	}
	for _, pair := range [][2]*testbed.Pod{{p1, p3}, {p3, p1}} {
		if err := testbed.Ping(ctx, pair[0].Netns, pair[1].Addr, 3); err != nil {
			t.Errorf("%s -> %s with VXLAN blocked one way: %v", pair[0].Host.Name, pair[1].Host.Name, err)
		}
	}
	transfer(t, p1.Netns, p3.Netns, p3.Addr.String()+":5016", 4<<20)
	transfer(t, p3.Netns, p1.Netns, p1.Addr.String()+":5016", 4<<20)
}
