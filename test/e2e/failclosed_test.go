package e2e

import (
	"context"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/test/testbed"
)

// With a password, a host whose agent is down (kill -9, as in a crash loop or
// the gap of an upgrade) sends no pod packet to other hosts by any other way:
// the overlay range is unreachable there, not routed to the default gateway
// in the clear. Hosts in the test bed have a default route via the outside
// world's address, as on a LAN.
func TestFailClosedWhenAgentDown(t *testing.T) {
	bed := threeHosts(t, testbed.Options{Outside: true}, "--password", "s3cret pass phrase")
	ps := pods(t, bed, 1)
	p1, p2 := ps[0], ps[1]
	h1 := bed.Hosts[0]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := testbed.Eventually(ctx, 10*time.Second, func() error { return testbed.Ping(ctx, p1.Netns, p2.Addr, 1) }); err != nil {
		t.Fatalf("before the kill: %v", err)
	}
	if err := h1.Kill(); err != nil {
		t.Fatal(err)
	}
	out, err := h1.Exec(ctx, "ip", "-4", "route", "get", p2.Addr.String())
	if err == nil || strings.Contains(out, "via") {
		t.Fatalf("agent down: ip route get %s = %q (err %v); want no route, never the default gateway", p2.Addr, out, err)
	}
	// Nothing addressed to the remote pod crosses the underlay while the
	// agent is down: neither the pod's pings (marked) nor anything else.
	pattern := hex.EncodeToString([]byte(marker[:16]))
	pcap := captureFilter(t, bed, func() {
		if _, err := p1.Exec(ctx, "ping", "-c", "3", "-i", "0.2", "-W", "1", "-p", pattern, p2.Addr.String()); err == nil {
			t.Error("a pod reached a remote pod with its host's agent down")
		}
	}, "host", p2.Addr.String())
	if strings.Contains(string(pcap), marker[:16]) || len(pcap) > 24 {
		t.Fatalf("with the agent down, %d bytes of capture addressed to %s crossed the underlay", len(pcap), p2.Addr)
	}
	// Relaunched, the host carries traffic again.
	launch(t, h1, []string{"--ipalloc-init", "consensus=3", "--password", "s3cret pass phrase"})
	if err := testbed.Eventually(ctx, 20*time.Second, func() error { return testbed.Ping(ctx, p1.Netns, p2.Addr, 1) }); err != nil {
		t.Fatalf("after the relaunch: %v", err)
	}
}
