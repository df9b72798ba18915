package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/test/testbed"
)

// seedHosts launches n hosts in seed mode over a small range and waits
// until all are ready.
func seedHosts(t *testing.T, n int, cidr string) *testbed.Bed {
	t.Helper()
	bed := testbed.Start(t, testbed.Options{Hosts: n})
	seeds := ""
	for i, h := range bed.Hosts {
		if i > 0 {
			seeds += ","
		}
		seeds += h.Name
	}
	for i, h := range bed.Hosts {
		var peers []string
		if i > 0 {
			peers = []string{bed.Hosts[0].Target()}
		}
		launch(t, h, []string{"--ipalloc-init", "seed=" + seeds, "--ipalloc-range", cidr}, peers...)
	}
	if err := testbed.WaitReady(context.Background(), 30*time.Second, bed.Hosts...); err != nil {
		t.Fatal(err)
	}
	return bed
}

func allocate(ctx context.Context, h *testbed.Host, id string) (netip.Addr, error) {
	r, err := h.Client().Allocate(ctx, api.AllocateRequest{ContainerID: id, IfName: "eth0"})
	if err != nil {
		return netip.Addr{}, err
	}
	p, err := netip.ParsePrefix(r.Address)
	return p.Addr(), err
}

// Three seeded hosts hand out 1000 addresses, all distinct; a host that runs
// out gets a donation; kill -9 and relaunch keeps every allocation; rmpeer
// of a dead host makes its space usable.
func TestIPAMAcrossHosts(t *testing.T) {
	// A /22 split three ways: about 340 addresses each.
	bed := seedHosts(t, 3, "10.44.0.0/22")
	h1, h2, h3 := bed.Hosts[0], bed.Hosts[1], bed.Hosts[2]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	var mu sync.Mutex
	owner := map[netip.Addr]string{}
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	// host1 takes 500, more than its share: it must get a donation.
	for i, plan := range []struct {
		h *testbed.Host
		n int
	}{{h1, 500}, {h2, 250}, {h3, 250}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < plan.n; j++ {
				id := fmt.Sprintf("c%d-%d", i, j)
				a, err := allocate(ctx, plan.h, id)
				if err != nil {
					errs <- fmt.Errorf("%s allocate %s: %w", plan.h.Name, id, err)
					return
				}
				mu.Lock()
				if prev, dup := owner[a]; dup {
					mu.Unlock()
					errs <- fmt.Errorf("%s given to %s and to %s", a, prev, id)
					return
				}
				owner[a] = id
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(owner) != 1000 {
		t.Fatalf("%d distinct addresses, want 1000", len(owner))
	}
	before, err := h2.Client().Containers(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// kill -9 and relaunch with the same state: nothing lost.
	if err := h2.Kill(); err != nil {
		t.Fatal(err)
	}
	launch(t, h2, []string{"--ipalloc-init", "seed=host1,host2,host3", "--ipalloc-range", "10.44.0.0/22"}, h1.Target())
	if err := testbed.WaitReady(ctx, 30*time.Second, h2); err != nil {
		t.Fatal(err)
	}
	after, err := h2.Client().Containers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("after kill -9 and relaunch host2 holds %d allocations, had %d", len(after), len(before))
	}
	again, err := allocate(ctx, h2, "c1-7") // idempotent: the same address as before
	if err != nil || owner[again] != "c1-7" {
		t.Errorf("re-allocating c1-7 after relaunch gave %v (%v), want its old address", again, err)
	}

	// host3 dies for good; rmpeer is refused while it lives, then works.
	if out, err := weft(t, h1, "rmpeer", "host3"); err == nil {
		t.Errorf("rmpeer of a live peer succeeded: %s", out)
	}
	if err := h3.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := testbed.WaitAlive(ctx, 30*time.Second, 2, h1, h2); err != nil {
		t.Fatal(err)
	}
	// A killed peer is suspect for a moment before it is dead, and rmpeer
	// refuses a suspect peer: retry until membership declares it dead.
	var out string
	if err := testbed.Eventually(ctx, 30*time.Second, func() error {
		var err error
		out, err = weft(t, h1, "rmpeer", "host3")
		return err
	}); err != nil {
		t.Fatalf("rmpeer of a dead peer: %v", err)
	}
	t.Logf("rmpeer: %s", out)
	// The 250 addresses host3 had handed out are usable again from host1.
	for j := 0; j < 250; j++ {
		if _, err := allocate(ctx, h1, fmt.Sprintf("after-rmpeer-%d", j)); err != nil {
			t.Fatalf("allocation %d after rmpeer: %v", j, err)
		}
	}
	// Then the range runs out, and the answer says so rather than hanging.
	for j := 0; ; j++ {
		call, cancelCall := context.WithTimeout(ctx, 30*time.Second)
		start := time.Now()
		_, err := allocate(call, h1, fmt.Sprintf("exhaust-%d", j))
		cancelCall()
		if err == nil {
			if j > 100 {
				t.Fatal("more than 100 addresses beyond the range's size")
			}
			continue
		}
		if api.Code(err) != api.CodeExhausted {
			t.Fatalf("allocation beyond the range: %v after %s, want code %s", err, time.Since(start), api.CodeExhausted)
		}
		break
	}
	st := weftView(t, h1, "status", "ipam")
	t.Logf("weft status ipam after rmpeer:\n%s", st)
}

// consensus=3 started as a 1|2 partition: the lone peer cannot create a
// ring, the pair can (quorum 2 of 3), and after the heal there is one ring.
func TestConsensusAcrossAPartition(t *testing.T) {
	bed := testbed.Start(t, testbed.Options{Hosts: 3})
	h1, h2, h3 := bed.Hosts[0], bed.Hosts[1], bed.Hosts[2]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := h3.SetLink(ctx, false); err != nil {
		t.Fatal(err)
	}
	args := []string{"--ipalloc-init", "consensus=3"}
	launch(t, h1, args, h2.Target(), h3.Target())
	launch(t, h2, args, h1.Target(), h3.Target())
	launch(t, h3, args, h1.Target(), h2.Target())
	if err := testbed.WaitReady(ctx, 30*time.Second, h1, h2); err != nil {
		t.Fatal(err)
	}
	if _, err := allocate(ctx, h1, "pair-1"); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	_, err := allocate(short, h3, "lone-1")
	cancelShort()
	if err == nil {
		t.Fatal("the lone peer allocated without a quorum")
	}
	if st, _ := h3.Client().Status(ctx); st.Ready {
		t.Fatal("the lone peer says it is ready")
	}
	if err := h3.SetLink(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := testbed.WaitReady(ctx, 30*time.Second, h3); err != nil {
		t.Fatal(err)
	}
	// One ring: every host reports the same owners.
	err = testbed.Eventually(ctx, 20*time.Second, func() error {
		var first string
		for _, h := range bed.Hosts {
			st, err := h.Client().IPAM(ctx)
			if err != nil {
				return err
			}
			var names []string
			for _, e := range st.Entries {
				names = append(names, fmt.Sprintf("%s:%d", e.Name, e.Owned))
			}
			sort.Strings(names)
			view := strings.Join(names, " ")
			if first == "" {
				first = view
			} else if view != first {
				return fmt.Errorf("rings differ: %q vs %q", first, view)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := allocate(ctx, h3, "lone-1"); err != nil {
		t.Fatalf("after the heal host3 cannot allocate: %v", err)
	}
}
