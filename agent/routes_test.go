package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftnet/weft/identity"
	"github.com/weftnet/weft/ipam"
	"github.com/weftnet/weft/mesh"
)

// Every peer keeps its last endpoint whatever its state, so that traffic
// to a restarting peer (left, dead, or known only from the last run) flows
// the moment it listens again; an address reused by a live host is that
// host's, whichever name sorts first.
func TestRoutesKeepLastEndpoints(t *testing.T) {
	at := func(addr string, state mesh.State, name string) mesh.PeerInfo {
		return mesh.PeerInfo{Name: name, Addr: netip.MustParseAddr(addr), State: state, Meta: mesh.Meta{DataPort: 6784}}
	}
	ep := func(addr string) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr(addr), 6784) }
	for _, oldName := range []string{"a-replaced", "z-replaced"} {
		r := newRoutes("self", netip.MustParsePrefix("10.32.0.0/12"), nil, nil)
		members := []mesh.PeerInfo{
			at("198.18.0.9", mesh.StateAlive, "self"),
			at("198.18.0.2", mesh.StateDead, oldName),
			at("198.18.0.2", mesh.StateAlive, "m-live"),
			at("198.18.0.3", mesh.StateLeft, "left"),
			at("198.18.0.4", mesh.StateUnknown, "lastrun"),
			at("198.18.0.5", mesh.StateSuspect, "slow"),
		}
		// Sorted by name, as mesh.Members returns them.
		slices.SortFunc(members, func(a, b mesh.PeerInfo) int { return strings.Compare(a.Name, b.Name) })
		r.update(members)
		for name, want := range map[string]string{oldName: "198.18.0.2", "m-live": "198.18.0.2", "left": "198.18.0.3", "lastrun": "198.18.0.4", "slow": "198.18.0.5"} {
			if got, ok := r.endpoint(name); !ok || got != ep(want) {
				t.Errorf("endpoint(%s) = %v %v, want %s", name, got, ok, ep(want))
			}
		}
		if _, ok := r.endpoint("self"); ok {
			t.Error("an endpoint for this host itself")
		}
		if name, ok := r.PeerAt(ep("198.18.0.2")); !ok || name != "m-live" {
			t.Errorf("with %s remembered: PeerAt(reused address) = %q, want the live peer", oldName, name)
		}
		if name, ok := r.PeerAt(ep("198.18.0.3")); !ok || name != "left" {
			t.Errorf("PeerAt(left peer) = %q %v", name, ok)
		}
	}
}

// The data plane's lookup follows the ring: every address of the range
// answers the ring's owner with that peer's endpoint, and after a ring
// change (the ranges of a dead peer taken over) the very next lookup
// answers the new owner, without any other call.
func TestRoutesLookupFollowsRing(t *testing.T) {
	dir := t.TempDir()
	signer, err := identity.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	prefix := netip.MustParsePrefix("10.40.0.0/24")
	seeds := []string{"other", "self"}
	var otherAlive atomic.Bool
	otherAlive.Store(true)
	p, err := ipam.New(ipam.Config{Signer: signer, Name: "self", Range: prefix,
		Init: ipam.Init{Mode: ipam.ModeSeed, Seeds: seeds}, StateDir: dir, Transport: nopTransport{},
		Alive:     func(name string) bool { return name == "self" || otherAlive.Load() },
		Reachable: func(name string) bool { return name == "self" || otherAlive.Load() },
		Peers:     func() []string { return seeds }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := p.Allocate(ctx, "c1", "eth0", ""); err != nil {
		t.Fatal(err) // the ring exists from here on
	}
	r := newRoutes("self", prefix, p, slog.New(slog.DiscardHandler))
	otherEP := netip.MustParseAddrPort("198.18.0.2:6784")
	r.update([]mesh.PeerInfo{{Name: "other", Addr: otherEP.Addr(), State: mesh.StateAlive, Meta: mesh.Meta{DataPort: 6784}}})
	check := func(when string) (others int) {
		t.Helper()
		for a := prefix.Addr(); prefix.Contains(a); a = a.Next() {
			want, ok := p.Owner(a)
			owner, ep, local := r.Lookup(a)
			switch {
			case !ok && owner != "":
				t.Fatalf("%s: %v has no owner in the ring, lookup says %q", when, a, owner)
			case owner != want:
				t.Fatalf("%s: %v owned by %q, lookup says %q", when, a, want, owner)
			case owner == "self" && (!local || ep.IsValid()):
				t.Fatalf("%s: %v is this host's: lookup %v %v", when, a, ep, local)
			case owner == "other" && (local || ep != otherEP):
				t.Fatalf("%s: %v is other's: lookup %v %v, want %v", when, a, ep, local, otherEP)
			case owner == "other":
				others++
			}
		}
		if owner, _, _ := r.Lookup(netip.MustParseAddr("10.41.0.1")); owner != "" {
			t.Fatalf("%s: an address outside the range has owner %q", when, owner)
		}
		return others
	}
	if n := check("two seeds"); n == 0 {
		t.Fatal("the other seed owns nothing: the test checks nothing")
	}
	otherAlive.Store(false)
	if n, err := p.RemovePeer("other"); err != nil || n == 0 {
		t.Fatalf("RemovePeer: %d %v", n, err)
	}
	if n := check("after the takeover"); n != 0 {
		t.Fatalf("%d addresses still routed to the removed peer", n)
	}
}

// Without a data plane (onDemand) the lookup table is not rebuilt at each
// membership change, only when a lookup asks, and then from the latest
// endpoints; with one, each change rebuilds it at once, off the packet
// path.
func TestRoutesRebuiltOnDemand(t *testing.T) {
	dir := t.TempDir()
	signer, err := identity.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	prefix := netip.MustParsePrefix("10.40.0.0/24")
	seeds := []string{"other", "self"}
	p, err := ipam.New(ipam.Config{Signer: signer, Name: "self", Range: prefix,
		Init: ipam.Init{Mode: ipam.ModeSeed, Seeds: seeds}, StateDir: dir, Transport: nopTransport{},
		Peers: func() []string { return seeds }})
	if err != nil {
		t.Fatal(err)
	}
	var theirs netip.Addr
	for a := prefix.Addr(); prefix.Contains(a); a = a.Next() {
		if owner, ok := p.Owner(a); ok && owner == "other" {
			theirs = a
			break
		}
	}
	if !theirs.IsValid() {
		t.Fatal("the other seed owns nothing")
	}
	at := func(ep string) []mesh.PeerInfo {
		ap := netip.MustParseAddrPort(ep)
		return []mesh.PeerInfo{{Name: "other", Addr: ap.Addr(), State: mesh.StateAlive, Meta: mesh.Meta{DataPort: ap.Port()}}}
	}
	for _, onDemand := range []bool{true, false} {
		r := newRoutes("self", prefix, p, slog.New(slog.DiscardHandler))
		r.onDemand = onDemand
		r.update(at("198.18.0.2:6784"))
		before := r.table.Load()
		r.update(at("198.18.0.3:6784"))
		if rebuilt := r.table.Load() != before; rebuilt == onDemand {
			t.Fatalf("onDemand %v: rebuilt at the membership change: %v", onDemand, rebuilt)
		}
		if _, ep, _ := r.Lookup(theirs); ep != netip.MustParseAddrPort("198.18.0.3:6784") {
			t.Fatalf("onDemand %v: lookup answers endpoint %v, want the latest", onDemand, ep)
		}
		built := r.table.Load()
		r.Lookup(theirs)
		if r.table.Load() != built {
			t.Fatalf("onDemand %v: rebuilt by a second lookup with nothing changed", onDemand)
		}
	}
}
