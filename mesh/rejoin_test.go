package mesh

import (
	"math/rand/v2"
	"testing"
	"time"
)

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

// Retries of failed joins double up to the cap and are spread over the upper
// half of the wait, so a mesh whose joins all failed at once does not retry
// all at once.
func TestJoinBackoffSpreads(t *testing.T) {
	tm := DefaultTiming() // 2 s, capped at 10 s
	for _, c := range []struct {
		failures int
		lo, hi   time.Duration
	}{{1, time.Second, 2 * time.Second}, {2, 2 * time.Second, 4 * time.Second}, {3, 4 * time.Second, 8 * time.Second}, {9, 5 * time.Second, 10 * time.Second}} {
		if got := joinBackoff(tm, c.failures, 0); got != c.lo {
			t.Errorf("failures %d, draw 0: %s, want %s", c.failures, got, c.lo)
		}
		if got := joinBackoff(tm, c.failures, 0.999999); got < c.hi-time.Millisecond || got > c.hi {
			t.Errorf("failures %d, draw 1: %s, want about %s", c.failures, got, c.hi)
		}
	}
	// 1,000 agents failing together: their retries spread over a second,
	// not all in the same instant.
	seen := map[time.Duration]bool{}
	for range 1000 {
		seen[joinBackoff(tm, 1, rand.Float64()).Truncate(10*time.Millisecond)] = true
	}
	if len(seen) < 50 {
		t.Fatalf("1000 retries fell in %d slots of 10 ms, want them spread over 100", len(seen))
	}
}
