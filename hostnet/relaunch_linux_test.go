package hostnet

import (
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netlinkWatch records every link, address, IPv4 route and neighbour
// deletion the kernel announces in one namespace, until each kind has seen
// its sentinel: a change the test makes on a link of that name after
// the calls it checks, so that every announcement of those calls has
// arrived by then (no sleeps).
type netlinkWatch struct {
	links  chan netlink.LinkUpdate
	addrs  chan netlink.AddrUpdate
	routes chan netlink.RouteUpdate
	neighs chan netlink.NeighUpdate
	done   chan struct{}
}

const sentinelLink = "sentinel"

func watchNetlink(t *testing.T, nsPath string) *netlinkWatch {
	t.Helper()
	h, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	w := &netlinkWatch{
		links: make(chan netlink.LinkUpdate, 256), addrs: make(chan netlink.AddrUpdate, 256),
		routes: make(chan netlink.RouteUpdate, 256), neighs: make(chan netlink.NeighUpdate, 256),
		done: make(chan struct{}),
	}
	var closed atomic.Bool
	t.Cleanup(func() { closed.Store(true); close(w.done) })
	fail := func(err error) {
		if !closed.Load() {
			t.Errorf("netlink subscription: %v", err)
		}
	}
	if err := netlink.LinkSubscribeWithOptions(w.links, w.done, netlink.LinkSubscribeOptions{Namespace: &h, ErrorCallback: fail}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrSubscribeWithOptions(w.addrs, w.done, netlink.AddrSubscribeOptions{Namespace: &h, ErrorCallback: fail}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.RouteSubscribeWithOptions(w.routes, w.done, netlink.RouteSubscribeOptions{Namespace: &h, ErrorCallback: fail}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.NeighSubscribeWithOptions(w.neighs, w.done, netlink.NeighSubscribeOptions{Namespace: &h, ErrorCallback: fail}); err != nil {
		t.Fatal(err)
	}
	return w
}

// changes makes the sentinels in namespace name and returns every change
// announced before them (the sentinels' own left out).
func (w *netlinkWatch) changes(t *testing.T, name string) []string {
	t.Helper()
	run(t, "ip", "-n", name, "link", "add", sentinelLink, "type", "bridge")
	run(t, "ip", "-n", name, "link", "set", sentinelLink, "up")
	run(t, "ip", "-n", name, "addr", "add", "192.0.2.1/32", "dev", sentinelLink)
	run(t, "ip", "-n", name, "route", "add", "192.0.2.0/24", "dev", sentinelLink)
	run(t, "ip", "-n", name, "neigh", "add", "192.0.2.2", "lladdr", "02:00:00:00:00:01", "dev", sentinelLink)
	run(t, "ip", "-n", name, "neigh", "del", "192.0.2.2", "dev", sentinelLink)
	sentinel := -1
	var got []string
	deadline := time.After(10 * time.Second)
	timeout := func(kind string) []string {
		t.Fatalf("no %s announcement of the sentinel within 10 s; so far: %v", kind, got)
		return nil
	}
	for {
		select {
		case u := <-w.links:
			if u.Attrs().Name == sentinelLink {
				sentinel = u.Attrs().Index
				goto addrs
			}
			got = append(got, fmt.Sprintf("link %s (type %d)", u.Attrs().Name, u.Header.Type))
		case <-deadline:
			return timeout("link")
		}
	}
addrs:
	for {
		select {
		case u := <-w.addrs:
			if u.LinkIndex == sentinel {
				goto routes
			}
			got = append(got, fmt.Sprintf("address %s on link %d (new %v)", u.LinkAddress.String(), u.LinkIndex, u.NewAddr))
		case <-deadline:
			return timeout("address")
		}
	}
routes:
	for {
		select {
		case u := <-w.routes:
			if u.Family != unix.AF_INET {
				continue
			}
			if u.LinkIndex == sentinel && u.Dst != nil && u.Dst.String() == "192.0.2.0/24" {
				goto neighs
			}
			if u.LinkIndex == sentinel {
				continue // the sentinel address's own local routes
			}
			got = append(got, fmt.Sprintf("route %s dev %d type %d metric %d (msg %d)", u.Dst, u.LinkIndex, u.Type, u.Priority, u.Type))
		case <-deadline:
			return timeout("route")
		}
	}
neighs:
	for {
		select {
		case u := <-w.neighs:
			if u.LinkIndex == sentinel {
				if u.Type == unix.RTM_DELNEIGH {
					return got
				}
				continue
			}
			// Neighbour states change by themselves (reachable, stale);
			// what a restart must never do is delete a pod's entry.
			if u.Type == unix.RTM_DELNEIGH {
				got = append(got, fmt.Sprintf("neighbour %s deleted on link %d", u.IP, u.LinkIndex))
			}
		case <-deadline:
			return timeout("neighbour")
		}
	}
}

// A relaunched agent over a running host (bridge, a pod on it, TUN with its
// routes, local ranges) does what the agent's start does: Setup, then
// RouteOverlay and SyncLocalRanges. None of it may change anything the
// kernel announces — no link (the bridge, the pod's veth, the TUN), no
// address, no route rewritten in place, no neighbour deleted — because
// everything is already right; and the pod still reaches its gateway.
func TestRelaunchChangesNothing(t *testing.T) {
	b := newReconcileBed(t)
	w := watchNetlink(t, b.ns)
	in(t, b.ns, func() error {
		h, err := Setup(testConfig())
		if err != nil {
			return err
		}
		if err := h.RouteOverlay(); err != nil {
			return err
		}
		return h.SyncLocalRanges([]netip.Prefix{b.local})
	})
	if got := w.changes(t, b.name); len(got) > 0 {
		t.Errorf("the relaunch changed the host network:\n  %s", strings.Join(got, "\n  "))
	}
	b.ping()
}
