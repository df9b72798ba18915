package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/test/testbed"
)

// recoveryLimit is how soon pods must reach each other again after a fault
// the agent repairs or follows (issue 16).
const recoveryLimit = 5 * time.Second

// twoHostsWithPods launches two agents (host2 joins host1) with one pod on
// each, pinging each other.
func twoHostsWithPods(t *testing.T, extra ...string) (*testbed.Bed, *testbed.Pod, *testbed.Pod) {
	t.Helper()
	bed := testbed.Start(t, testbed.Options{Hosts: 2})
	h1, h2 := bed.Hosts[0], bed.Hosts[1]
	args := append([]string{"--ipalloc-init", "seed=host1,host2"}, extra...)
	launch(t, h1, args)
	launch(t, h2, args, h1.Target())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := testbed.WaitReady(ctx, 30*time.Second, h1, h2); err != nil {
		t.Fatal(err)
	}
	p1, err := h1.AddPod(ctx, "p1")
	if err != nil {
		t.Fatal(err)
	}
	p2, err := h2.AddPod(ctx, "p2")
	if err != nil {
		t.Fatal(err)
	}
	if err := testbed.Eventually(ctx, 15*time.Second, func() error { return pingBoth(ctx, p1, p2) }); err != nil {
		t.Fatalf("pods do not reach each other before the fault: %v", err)
	}
	return bed, p1, p2
}

// pingBoth pings once each way between two pods.
func pingBoth(ctx context.Context, a, b *testbed.Pod) error {
	for _, d := range [][2]*testbed.Pod{{a, b}, {b, a}} {
		out, err := d[0].Exec(ctx, "ping", "-c", "1", "-W", "0.3", "-q", d[1].Addr.String())
		if err != nil || !strings.Contains(out, "1 received") {
			return errorf("ping %s -> %s: %v %s", d[0].Name, d[1].Name, err, out)
		}
	}
	return nil
}

// recovered waits (up to 20 s) until the pods reach each other both ways
// and returns how long that took from began.
func recovered(t *testing.T, what string, began time.Time, a, b *testbed.Pod) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := testbed.Eventually(ctx, 20*time.Second, func() error { return pingBoth(ctx, a, b) }); err != nil {
		t.Fatalf("%s: pods never reached each other again: %v\nhost1:\n%s", what, err, a.Host.Log())
	}
	took := time.Since(began)
	t.Logf("RECOVERY %s: pods across hosts reach each other again after %v", what, took.Round(time.Millisecond))
	if took > recoveryLimit {
		t.Errorf("%s: recovery took %v, want at most %v", what, took.Round(time.Millisecond), recoveryLimit)
	}
	return took
}

// An operator or a cleanup script breaks host1's network: its bridge
// deleted, weft's routes flushed, the nftables table deleted. The agent
// repairs each (the pod's veth goes back on the re-created bridge), counts
// it in weft_repairs_total, and the pods reach each other again within 5 s.
func TestE2EReconcileRepairsHostNetwork(t *testing.T) {
	_, p1, p2 := twoHostsWithPods(t)
	h1 := p1.Host
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, fault := range []struct {
		name, what string
		cmd        []string
	}{
		{"bridge deleted", "bridge", []string{"ip", "link", "del", "weft"}},
		{"routes flushed", "route", []string{"ip", "route", "flush", "proto", "87"}},
		{"nftables table deleted", "nftables", []string{"nft", "delete", "table", "ip", "weft"}},
	} {
		series := `weft_repairs_total{what="` + fault.what + `"}`
		before := metric(t, h1, series)
		began := time.Now()
		if out, err := h1.Exec(ctx, fault.cmd...); err != nil {
			t.Fatalf("%s: %v %s", fault.name, err, out)
		}
		recovered(t, fault.name, began, p1, p2)
		if err := testbed.Eventually(ctx, 5*time.Second, func() error {
			if after := metric(t, h1, series); after <= before {
				return errorf("%s = %v, was %v", series, after, before)
			}
			return nil
		}); err != nil {
			t.Errorf("%s: not counted: %v", fault.name, err)
		}
	}
	if !strings.Contains(h1.Log(), "repaired the host network") {
		t.Errorf("no repair in host1's log:\n%s", h1.Log())
	}
	if out := weftView(t, h1, "status"); !strings.Contains(out, "Ready: yes") && !strings.Contains(out, "yes") {
		t.Errorf("host1 not ready after the repairs:\n%s", out)
	}
}

// host1's underlay address changes on the same link (198.18.0.1 deleted,
// 198.18.0.101 added, as a DHCP renumbering does): the agent moves gossip
// and its data socket to the new address, host2 learns it, and the pods
// reach each other again within 5 s.
func TestE2EUnderlayAddressChange(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra []string
	}{
		{"plaintext", nil},
		{"encrypted", []string{"--password", "s3cret pass phrase"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, p1, p2 := twoHostsWithPods(t, tc.extra...)
			h1, h2 := p1.Host, p2.Host
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			const moved = "198.18.0.101"
			began := time.Now()
			for _, cmd := range [][]string{
				{"ip", "addr", "del", h1.Addr.String() + "/24", "dev", "eth0"},
				{"ip", "addr", "add", moved + "/24", "dev", "eth0"},
			} {
				if out, err := h1.Exec(ctx, cmd...); err != nil {
					t.Fatalf("%v: %v %s", cmd, err, out)
				}
			}
			recovered(t, "underlay address change ("+tc.name+")", began, p1, p2)
			if out := weftView(t, h1, "status"); !strings.Contains(out, moved) {
				t.Errorf("host1's status does not show its new address:\n%s", out)
			}
			if out := weftView(t, h2, "status", "peers"); !strings.Contains(out, moved) {
				t.Errorf("host2 does not list host1 at its new address:\n%s", out)
			}
			if !strings.Contains(h1.Log(), "underlay address changed") {
				t.Errorf("no log of the change on host1:\n%s", h1.Log())
			}
		})
	}
}
