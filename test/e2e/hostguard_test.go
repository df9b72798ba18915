package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/test/testbed"
)

// Helper modes of the test binary for the host filter test (see TestMain).

// probeTCP dials every target (comma-separated host:port) at once and prints
// one line per target: "<target> open" or "<target> closed <why>".
func probeTCP(targets string) error {
	var wg sync.WaitGroup
	lines := make([]string, 0)
	var mu sync.Mutex
	for _, a := range strings.Split(targets, ",") {
		wg.Add(1)
		go func() {
			defer wg.Done()
			line := a + " open"
			c, err := net.DialTimeout("tcp4", a, 1500*time.Millisecond)
			if err != nil {
				line = a + " closed " + strings.ReplaceAll(err.Error(), " ", "_")
			} else {
				c.Close()
			}
			mu.Lock()
			lines = append(lines, line)
			mu.Unlock()
		}()
	}
	wg.Wait()
	fmt.Println(strings.Join(lines, "\n"))
	return nil
}

// sendUDP sends payload once to every target (comma-separated host:port)
// from local port src.
func sendUDP(src, targets, payload string) error {
	laddr, err := net.ResolveUDPAddr("udp4", "0.0.0.0:"+src)
	if err != nil {
		return err
	}
	c, err := net.ListenUDP("udp4", laddr)
	if err != nil {
		return err
	}
	defer c.Close()
	for _, a := range strings.Split(targets, ",") {
		to, err := net.ResolveUDPAddr("udp4", a)
		if err != nil {
			return err
		}
		// A target without a listener answers with ICMP; that is fine.
		_, _ = c.WriteToUDP([]byte(payload), to)
	}
	return nil
}

// gatewayOf is the pod's default gateway: its host's overlay address.
func gatewayOf(t *testing.T, p *testbed.Pod) netip.Addr {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := p.Exec(ctx, "ip", "-4", "route", "show", "default")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "via" {
			if a, err := netip.ParseAddr(f[i+1]); err == nil {
				return a
			}
		}
	}
	t.Fatalf("pod %s: no default gateway in %q", p.Name, out)
	return netip.Addr{}
}

const probePayload = "\xeeweft host filter probe" // no valid gossip or data header

// badHeaders is how many datagrams host h's data plane refused as malformed.
func badHeaders(t *testing.T, h *testbed.Host) float64 {
	return metric(t, h, `weft_dropped_packets_total{reason="bad-header"}`)
}

// Pods cannot reach the agents' ports (6782 metrics, 6783 gossip, 6784 data
// and health) on any address of their own host nor on another host, over
// TCP or UDP; pods still reach each other (also on those port numbers) and
// the outside world. Metrics and health listen on every address here, so
// that without the filter a pod would reach all three TCP ports.
func TestPodsCannotReachAgentPorts(t *testing.T) {
	bed := threeHosts(t, testbed.Options{Outside: true}, "--metrics-addr", "0.0.0.0:6782", "--http-addr", "0.0.0.0:6784")
	ps := pods(t, bed, 1)
	p1, p2 := ps[0], ps[1]
	h1, h2 := bed.Hosts[0], bed.Hosts[1]
	gw1, gw2 := gatewayOf(t, p1), gatewayOf(t, p2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The filter learns host2 as a peer from membership.
	err := testbed.Eventually(ctx, 20*time.Second, func() error {
		out, err := h1.Exec(ctx, "nft", "list", "set", "ip", "weft", "peers")
		if err != nil || !strings.Contains(out, h2.Addr.String()) {
			return errorf("host1's filter has no peer %s: %v %s", h2.Addr, err, out)
		}
		return nil
	})
	if err != nil {
		t.Error(err) // the probes below tell what it means
	}

	hostAddrs := []netip.Addr{h1.Addr, gw1, h2.Addr, gw2}
	before1, before2 := badHeaders(t, h1), badHeaders(t, h2)

	// UDP to gossip and data from a recognisable source port.
	const podPort = "40783"
	var udpTargets []string
	for _, a := range hostAddrs {
		udpTargets = append(udpTargets, a.String()+":6783", a.String()+":6784")
	}
	inNetns(t, p1.Netns, "WEFT_E2E_HELPER=udp", "WEFT_E2E_SRC="+podPort,
		"WEFT_E2E_TARGETS="+strings.Join(udpTargets, ","), "WEFT_E2E_PAYLOAD="+probePayload)

	// TCP to every agent port on every address.
	var tcpTargets []string
	for _, a := range hostAddrs {
		for _, p := range []string{"6782", "6783", "6784"} {
			tcpTargets = append(tcpTargets, a.String()+":"+p)
		}
	}
	out := inNetns(t, p1.Netns, "WEFT_E2E_HELPER=probe", "WEFT_E2E_TARGETS="+strings.Join(tcpTargets, ","))
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for _, line := range lines {
		if strings.HasSuffix(line, " open") {
			t.Errorf("pod on host1 connected to agent port %s", strings.TrimSuffix(line, " open"))
		}
	}
	if len(lines) != len(tcpTargets) {
		t.Fatalf("probe answered %d lines for %d targets: %s", len(lines), len(tcpTargets), out)
	}

	// A control datagram from the outside world, sent after the pod's:
	// once each agent has counted and logged it, the pod's would have been
	// too had they arrived.
	const outsidePort = "40999"
	inNetns(t, bed.Outside, "WEFT_E2E_HELPER=udp", "WEFT_E2E_SRC="+outsidePort,
		"WEFT_E2E_TARGETS="+strings.Join([]string{h1.Addr.String() + ":6783", h1.Addr.String() + ":6784",
			h2.Addr.String() + ":6783", h2.Addr.String() + ":6784"}, ","), "WEFT_E2E_PAYLOAD="+probePayload)
	for _, h := range []*testbed.Host{h1, h2} {
		waitLog(t, h, 10*time.Second, "from="+testbed.OutsideAddr.String()+":"+outsidePort)
	}
	err = testbed.Eventually(ctx, 10*time.Second, func() error {
		if badHeaders(t, h1) <= before1 || badHeaders(t, h2) <= before2 {
			return errorf("the control datagram is not counted yet")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if d := badHeaders(t, h1) - before1; d != 1 {
		t.Errorf("host1 counted %.0f malformed data datagrams, want 1 (the control): the pod's reached it", d)
	}
	if d := badHeaders(t, h2) - before2; d != 1 {
		t.Errorf("host2 counted %.0f malformed data datagrams, want 1 (the control): the pod's reached it", d)
	}
	for _, h := range []*testbed.Host{h1, h2} {
		for _, src := range []string{"from=" + p1.Addr.String() + ":", "from=" + h1.Addr.String() + ":" + podPort} {
			if strings.Contains(h.Log(), src) {
				t.Errorf("%s's gossip received the pod's datagram (%s)", h.Name, src)
			}
		}
	}

	// Still allowed: pod to pod across hosts, also on port 6783, and pod to
	// the outside world, also on port 6783 (not a peer).
	if err := testbed.Ping(ctx, p1.Netns, p2.Addr, 1); err != nil {
		t.Errorf("pod on host1 -> pod on host2: %v", err)
	}
	if seen := transfer(t, p1.Netns, p2.Netns, p2.Addr.String()+":6783", 1<<20); seen != p1.Addr.String() {
		t.Errorf("pod on host2 saw client %s, want %s", seen, p1.Addr)
	}
	if err := testbed.Ping(ctx, p1.Netns, testbed.OutsideAddr, 1); err != nil {
		t.Errorf("pod -> outside: %v", err)
	}
	if seen := transfer(t, p1.Netns, bed.Outside, testbed.OutsideAddr.String()+":6783", 1<<20); seen != h1.Addr.String() {
		t.Errorf("outside saw client %s, want host1's underlay address %s (masquerade)", seen, h1.Addr)
	}
}
