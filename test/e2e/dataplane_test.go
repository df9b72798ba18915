package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/weftnet/weft/test/testbed"
)

// threeHosts launches three agents that bootstrap their ring by consensus
// and waits until all can network pods.
func threeHosts(t *testing.T, opts testbed.Options, extra ...string) *testbed.Bed {
	t.Helper()
	opts.Hosts = 3
	bed := testbed.Start(t, opts)
	args := append([]string{"--ipalloc-init", "consensus=3"}, extra...)
	for i, h := range bed.Hosts {
		var peers []string
		if i > 0 {
			peers = []string{bed.Hosts[0].Target()}
		}
		launch(t, h, args, peers...)
	}
	if err := testbed.WaitReady(context.Background(), 30*time.Second, bed.Hosts...); err != nil {
		t.Fatal(err)
	}
	return bed
}

// pods starts n pods on every host.
func pods(t *testing.T, bed *testbed.Bed, n int) []*testbed.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out []*testbed.Pod
	for _, h := range bed.Hosts {
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
}
