package agent

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

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
		r := newRoutes("self", nil)
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
