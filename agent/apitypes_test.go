package agent

import (
	"net/netip"
	"testing"
	"time"

	"github.com/weftnet/weft/ipam"
	"github.com/weftnet/weft/mesh"
)

func TestAPIConversions(t *testing.T) {
	since := time.Unix(1700000000, 0)
	ps := apiPeers([]mesh.Peer{{Name: "a", Address: "198.18.0.1:6783", DataPort: 6784, State: mesh.StateSuspect,
		Local: true, Version: "v1", Protocol: 2, Since: since}})
	if len(ps) != 1 || ps[0].State != "suspect" || ps[0].Address != "198.18.0.1:6783" || ps[0].DataPort != 6784 ||
		!ps[0].Local || ps[0].Version != "v1" || ps[0].Protocol != 2 || !ps[0].Since.Equal(since) {
		t.Fatalf("peers %+v", ps)
	}
	if got := apiPeers(nil); got == nil || len(got) != 0 {
		t.Fatalf("no peers must be an empty list, not null: %#v", got)
	}
	st := apiIPAMStatus(ipam.Status{State: "ready", Range: "10.32.0.0/12", Ready: true, Mode: ipam.ModeSeed,
		Entries: []ipam.Share{{Name: "a", Owned: 10, Share: 0.5, InUse: 2, Free: 7, Reachable: true, Local: true,
			Ranges: []netip.Prefix{netip.MustParsePrefix("10.32.0.0/13")}}}})
	if st.State != "ready" || st.Range != "10.32.0.0/12" || !st.Ready || st.Mode != ipam.ModeSeed || len(st.Entries) != 1 {
		t.Fatalf("status %+v", st)
	}
	e := st.Entries[0]
	if e.Name != "a" || e.Owned != 10 || e.Share != 0.5 || e.InUse != 2 || e.Free != 7 || !e.Reachable || !e.Local ||
		len(e.Ranges) != 1 || e.Ranges[0] != "10.32.0.0/13" {
		t.Fatalf("entry %+v", e)
	}
}
