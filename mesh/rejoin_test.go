package mesh

import "testing"

// Lost learnt peers are re-joined about rejoinFanout times per pass in the
// whole mesh, not by every member: a member alone tries several, a member
// among many alive ones one now and then.
func TestPickLearntSpreadsRejoins(t *testing.T) {
	targets := func(n int) []*target {
		ts := make([]*target, n)
		for i := range ts {
			ts[i] = &target{addr: "198.18.0.1:6783"}
		}
		return ts
	}
	if got := len(pickLearnt(nil, 0)); got != 0 {
		t.Fatalf("picked %d of none", got)
	}
	if got := len(pickLearnt(targets(10), 0)); got != maxLearntJoins {
		t.Fatalf("alone: picked %d of 10, want %d", got, maxLearntJoins)
	}
	if got := len(pickLearnt(targets(1), 1)); got != 1 {
		t.Fatalf("one alive peer: picked %d, want 1 (chance 2/1)", got)
	}
	const passes, alive = 20000, 500
	picked := 0
	for range passes {
		n := len(pickLearnt(targets(500), alive))
		if n > 1 {
			t.Fatalf("picked %d in one pass among %d alive, want at most 1", n, alive)
		}
		picked += n
	}
	// Expected passes × fanout / alive = 80; a wide margin keeps it from flaking.
	if want := passes * rejoinFanout / alive; picked < want/2 || picked > want*2 {
		t.Fatalf("picked %d in %d passes among %d alive, want about %d", picked, passes, alive, want)
	}
}
