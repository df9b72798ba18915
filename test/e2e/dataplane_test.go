package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/test/testbed"
)

// threeHosts launches three agents that bootstrap their ring by consensus
// and waits until all can network pods.
func threeHosts(t *testing.T, opts testbed.Options, extra ...string) *testbed.Bed {
	t.Helper()
	if opts.Hosts < 3 {
		opts.Hosts = 3
	}
	bed := testbed.Start(t, opts)
	args := append([]string{"--ipalloc-init", "consensus=3"}, extra...)
	for i, h := range bed.Hosts[:3] {
		var peers []string
		if i > 0 {
			peers = []string{bed.Hosts[0].Target()}
		}
		launch(t, h, args, peers...)
	}
	if err := testbed.WaitReady(context.Background(), 30*time.Second, bed.Hosts[:3]...); err != nil {
		t.Fatal(err)
	}
	return bed
}

// pods starts n pods on each of the first (up to) three hosts.
func pods(t *testing.T, bed *testbed.Bed, n int) []*testbed.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out []*testbed.Pod
	for _, h := range bed.Hosts[:min(3, len(bed.Hosts))] {
		for i := 0; i < n; i++ {
			p, err := h.AddPod(ctx, sprintf("p%d", i+1))
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, p)
		}
	}
	return out
}

// Every pod reaches every other pod, on its own host and across hosts.
func TestPodsReachEachOther(t *testing.T) {
	bed := threeHosts(t, testbed.Options{Outside: true})
	ps := pods(t, bed, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	seen := map[string]bool{}
	for _, p := range ps {
		if seen[p.Addr.String()] {
			t.Fatalf("address %s given twice", p.Addr)
		}
		seen[p.Addr.String()] = true
	}
	for _, src := range ps {
		for _, dst := range ps {
			if src == dst {
				continue
			}
			if err := testbed.Ping(ctx, src.Netns, dst.Addr, 1); err != nil {
				t.Errorf("%s/%s -> %s/%s: %v", src.Host.Name, src.Name, dst.Host.Name, dst.Name, err)
			}
		}
	}
	// Hosts reach other hosts' pods too, from their own overlay address;
	// none of this traffic looks like an impersonation to its receiver.
	for _, h := range bed.Hosts[:3] {
		for _, dst := range ps {
			if dst.Host == h {
				continue
			}
			if _, err := h.Exec(ctx, "ping", "-c", "1", "-W", "2", dst.Addr.String()); err != nil {
				t.Errorf("%s -> %s/%s: %v", h.Name, dst.Host.Name, dst.Name, err)
			}
		}
	}
	for _, h := range bed.Hosts[:3] {
		if d := metric(t, h, `weft_dropped_packets_total{reason="spoofed-source"}`); d != 0 {
			t.Errorf("%s dropped %.0f packets of legitimate traffic as spoofed", h.Name, d)
		}
	}
}

// Across hosts: TCP keeps the client pod's own address (no NAT), 100 MB
// arrive byte-identical, a host reaches a pod on another host, and traffic
// to the outside world is masqueraded behind the host's underlay address.
func TestAcrossHostsNoNATAndMasquerade(t *testing.T) {
	// The userspace path: its per-peer counters are checked below (the
	// kernel fast path has its own test, fastdp_test.go).
	bed := threeHosts(t, testbed.Options{Outside: true}, "--datapath", "userspace")
	ps := pods(t, bed, 1)
	p1, p2, p3 := ps[0], ps[1], ps[2]

	h1, h3 := bed.Hosts[0], bed.Hosts[2]
	txBefore := metric(t, h1, `weft_peer_tx_bytes_total{peer="host3"}`)
	rxBefore := metric(t, h3, `weft_peer_rx_bytes_total{peer="host1"}`)
	seen := transfer(t, p1.Netns, p3.Netns, p3.Addr.String()+":5001", 100<<20)
	if seen != p1.Addr.String() {
		t.Errorf("server pod saw client %s, want the client pod's own %s", seen, p1.Addr)
	}
	// The metrics moved with the traffic: at least the 100 MB of payload.
	if d := metric(t, h1, `weft_peer_tx_bytes_total{peer="host3"}`) - txBefore; d < 100<<20 {
		t.Errorf("host1's tx bytes to host3 grew by %.0f, want at least 100 MiB", d)
	}
	if d := metric(t, h3, `weft_peer_rx_bytes_total{peer="host1"}`) - rxBefore; d < 100<<20 {
		t.Errorf("host3's rx bytes from host1 grew by %.0f, want at least 100 MiB", d)
	}
	for _, m := range []string{"weft_ready 1", `weft_peers{state="alive"} 3`, "weft_gossip_members 3"} {
		name, want, _ := strings.Cut(m, " ")
		if got := metric(t, h1, name); fmt.Sprint(got) != want {
			t.Errorf("metric %s = %v, want %s", name, got, want)
		}
	}
	if seen := transfer(t, p2.Netns, p1.Netns, p1.Addr.String()+":5002", 1<<20); seen != p2.Addr.String() {
		t.Errorf("server pod saw client %s, want %s", seen, p2.Addr)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// host1 (its own namespace, not a pod) to a pod on host2 and back.
	if err := testbed.Ping(ctx, bed.Hosts[0].Netns, p2.Addr, 2); err != nil {
		t.Errorf("host1 -> pod on host2: %v", err)
	}
	// The outside world has no route to the pod range: only a masqueraded
	// packet gets an answer, and its source is host2's underlay address.
	if seen := transfer(t, p2.Netns, bed.Outside, testbed.OutsideAddr.String()+":5003", 1<<16); seen != bed.Hosts[1].Addr.String() {
		t.Errorf("outside saw %s, want host2's underlay address %s (masquerade)", seen, bed.Hosts[1].Addr)
	}
}

// With a 1400-byte underlay, weft derives a smaller overlay MTU and TCP
// (DF set, as Linux does) flows across hosts.
func TestSmallUnderlayMTU(t *testing.T) {
	bed := testbed.Start(t, testbed.Options{Hosts: 2})
	ctx := context.Background()
	for _, h := range bed.Hosts {
		if err := h.SetUnderlayMTU(ctx, 1400); err != nil {
			t.Fatal(err)
		}
	}
	h1, h2 := bed.Hosts[0], bed.Hosts[1]
	launch(t, h1, []string{"--ipalloc-init", "consensus=2"})
	launch(t, h2, []string{"--ipalloc-init", "consensus=2"}, h1.Target())
	if err := testbed.WaitReady(ctx, 30*time.Second, h1, h2); err != nil {
		t.Fatal(err)
	}
	st, err := h1.Client().Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.MTU <= 0 || st.MTU > 1400-36 {
		t.Fatalf("overlay MTU %d with a 1400-byte underlay, want at most %d", st.MTU, 1400-36)
	}
	ps := pods(t, bed, 1)
	transfer(t, ps[0].Netns, ps[1].Netns, ps[1].Addr.String()+":5004", 20<<20)
	// A full-size packet with DF crosses; one byte more is refused.
	full := st.MTU - 28
	if _, err := ps[0].Exec(ctx, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", sprintf("%d", full), ps[1].Addr.String()); err != nil {
		t.Errorf("full-size DF ping: %v", err)
	}
	if _, err := ps[0].Exec(ctx, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", sprintf("%d", full+1), ps[1].Addr.String()); err == nil {
		t.Errorf("a DF ping one byte over the MTU %d went through", st.MTU)
	}
}

// A host on the portable water TUN and one with offloads interoperate: the
// offload host leaves TCP checksums partial and marks them so; the water
// host completes them before delivery. Data arrives intact both ways.
func TestMixedDatapaths(t *testing.T) {
	bed := testbed.Start(t, testbed.Options{Hosts: 2})
	ctx := context.Background()
	h1, h2 := bed.Hosts[0], bed.Hosts[1]
	h1.Env = []string{"WEFT_DATAPATH=water"}
	launch(t, h1, []string{"--ipalloc-init", "consensus=2"})
	launch(t, h2, []string{"--ipalloc-init", "consensus=2"}, h1.Target())
	if err := testbed.WaitReady(ctx, 30*time.Second, h1, h2); err != nil {
		t.Fatal(err)
	}
	for h, want := range map[*testbed.Host]string{h1: "tun-water", h2: "tun-offload"} {
		st, err := h.Client().Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(st.Datapath, want) {
			t.Fatalf("%s datapath %q, want %s", h.Name, st.Datapath, want)
		}
	}
	ps := pods(t, bed, 1)
	transfer(t, ps[1].Netns, ps[0].Netns, ps[0].Addr.String()+":5006", 20<<20) // offload -> water
	transfer(t, ps[0].Netns, ps[1].Netns, ps[1].Addr.String()+":5006", 20<<20) // water -> offload
	for _, h := range []*testbed.Host{h1, h2} {
		if d := metric(t, h, `weft_dropped_packets_total{reason="bad-packet"}`); d != 0 {
			t.Errorf("%s dropped %.0f packets as bad", h.Name, d)
		}
	}
}

// Killing and relaunching an agent leaves its pods alone: they keep their
// addresses and traffic flows again within seconds of the relaunch. Bad
// datagrams are dropped and counted meanwhile.
func TestAgentRelaunchKeepsPods(t *testing.T) {
	bed := threeHosts(t, testbed.Options{})
	ps := pods(t, bed, 1)
	p1, p2 := ps[0], ps[1]
	h2 := bed.Hosts[1]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := testbed.Ping(ctx, p1.Netns, p2.Addr, 1); err != nil {
		t.Fatal(err)
	}
	if err := h2.Kill(); err != nil {
		t.Fatal(err)
	}
	launch(t, h2, []string{"--ipalloc-init", "consensus=3"}, bed.Hosts[0].Target())
	relaunched := time.Now()
	if err := testbed.Eventually(ctx, 5*time.Second, func() error { return testbed.Ping(ctx, p1.Netns, p2.Addr, 1) }); err != nil {
		t.Fatalf("traffic to host2's pod after relaunch: %v", err)
	}
	t.Logf("traffic flows again %s after the relaunch", time.Since(relaunched).Round(10*time.Millisecond))
	cs, err := h2.Client().Containers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range cs {
		found = found || c.Address == p2.Addr.String()
	}
	if !found {
		t.Errorf("host2 no longer lists its pod's address %s: %+v", p2.Addr, cs)
	}

	// From an endpoint that is no peer, and a malformed header from a peer's.
	h1, h3 := bed.Hosts[0], bed.Hosts[2]
	dst := h2.Addr.String() + ":6784"
	inNetns(t, h3.Netns, "WEFT_E2E_HELPER=inject", "WEFT_E2E_SRC="+h3.Addr.String()+":4000", "WEFT_E2E_DST="+dst,
		"WEFT_E2E_PAYLOAD=0101000000000001450000")
	inNetns(t, h1.Netns, "WEFT_E2E_HELPER=inject", "WEFT_E2E_SRC="+h1.Addr.String()+":6784", "WEFT_E2E_DST="+dst,
		"WEFT_E2E_PAYLOAD=09ff00000000")
	if err := testbed.Eventually(ctx, 5*time.Second, func() error {
		unknown := metric(t, h2, `weft_dropped_packets_total{reason="unknown-peer"}`)
		bad := metric(t, h2, `weft_dropped_packets_total{reason="bad-header"}`)
		if unknown < 1 || bad < 1 {
			return errorf("drops: unknown-peer %v, bad-header %v", unknown, bad)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
