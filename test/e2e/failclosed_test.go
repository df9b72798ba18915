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
	// host2's agent goes down; its pod talks to host1's pod.
	remote, local := ps[0], ps[1]
	down := bed.Hosts[1]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := testbed.Eventually(ctx, 10*time.Second, func() error { return testbed.Ping(ctx, local.Netns, remote.Addr, 1) }); err != nil {
		t.Fatalf("before the kill: %v", err)
	}
	if err := down.Kill(); err != nil {
		t.Fatal(err)
	}
	out, err := down.Exec(ctx, "ip", "-4", "route", "get", remote.Addr.String())
	if strings.Contains(out, "via") || (err == nil && !strings.Contains(out, "dev weft-tun")) {
		t.Fatalf("agent down: ip route get %s = %q (err %v); want the persistent TUN (which drops with no agent attached) or no route, never the default gateway", remote.Addr, out, err)
	}
	// Nothing addressed to the remote pod crosses the underlay while the
	// agent is down: neither the pod's pings (marked) nor anything else.
	pattern := hex.EncodeToString([]byte(marker[:16]))
	pcap := captureFilter(t, bed, func() {
		if _, err := local.Exec(ctx, "ping", "-c", "3", "-i", "0.2", "-W", "1", "-p", pattern, remote.Addr.String()); err == nil {
			t.Error("a pod reached a remote pod with its host's agent down")
		}
	}, "host", remote.Addr.String())
	if strings.Contains(string(pcap), marker[:16]) || len(pcap) > 24 {
		t.Fatalf("with the agent down, %d bytes of capture addressed to %s crossed the underlay", len(pcap), remote.Addr)
	}
	// Relaunched, the host carries traffic again.
	launch(t, down, []string{"--ipalloc-init", "consensus=3", "--password", "s3cret pass phrase"}, bed.Hosts[0].Target())
	if err := testbed.Eventually(ctx, 20*time.Second, func() error { return testbed.Ping(ctx, local.Netns, remote.Addr, 1) }); err != nil {
		t.Fatalf("after the relaunch: %v", err)
	}
}
