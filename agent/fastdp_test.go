package agent

import (
	"log/slog"
	"testing"

	"github.com/weftnet/weft/fastdp"
)

// A pair that leaves the fast path is counted once per departure, for that
// peer only; the decision and its reason are what status shows.
func TestFastPathRecordCountsFallbacks(t *testing.T) {
	fp := &fastPath{a: &Agent{log: slog.New(slog.DiscardHandler)}, self: fastdp.Self{Enabled: true},
		decisions: map[string]fastdp.Decision{}, fallbacks: map[string]uint64{}}
	fast := func(peer string) fastdp.Decision { return fastdp.Decision{Peer: peer, Fast: true} }
	slow := func(peer, why string) fastdp.Decision { return fastdp.Decision{Peer: peer, Reason: why} }
	fp.record([]fastdp.Decision{fast("b"), slow("c", fastdp.ReasonProbing)})
	fp.record([]fastdp.Decision{slow("b", "no answer"), fast("c")})
	fp.record([]fastdp.Decision{slow("b", "no answer"), fast("c")})
	fp.record([]fastdp.Decision{fast("b"), fast("c")})
	fp.record([]fastdp.Decision{slow("b", "no answer"), fast("c")})
	if got := fp.fallbackCounts(); got["b"] != 2 || got["c"] != 0 {
		t.Fatalf("fall-backs %v, want b:2 and none for c", got)
	}
	if ok, why := fp.decision("b"); ok || why != "no answer" {
		t.Fatalf("decision for b: %v %q", ok, why)
	}
	if ok, _ := fp.decision("c"); !ok {
		t.Fatal("c is not on the fast path")
	}
	if ok, why := fp.decision("unknown"); ok || why == "" {
		t.Fatalf("an undecided peer: %v %q", ok, why)
	}
	off := &fastPath{self: fastdp.Self{Reason: "this host runs --datapath userspace"}}
	if ok, why := off.decision("b"); ok || why != off.self.Reason {
		t.Fatalf("a host without the fast path: %v %q", ok, why)
	}
	var none *fastPath
	if ok, why := none.decision("b"); ok || why != "" || none.enabled() {
		t.Fatal("a nil fast path (no data plane) decides something")
	}
}
