package kubecluster

import (
	"testing"
	"time"
)

// The network's share of a silence is what is left of it once the times
// either pod was silent to itself (over loopback) are taken out; overlapping
// stalls count once.
func TestOverlapCountsEachStalledMomentOnce(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 23, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	g := ProbeGap{From: at(0), To: at(10)}
	for _, tc := range []struct {
		name   string
		stalls []ProbeGap
		want   time.Duration
	}{
		{"none", nil, 0},
		{"outside", []ProbeGap{{at(-5), at(-1)}, {at(11), at(12)}}, 0},
		{"overlapping and past the end", []ProbeGap{{at(2), at(4)}, {at(3), at(5)}, {at(8), at(12)}}, 5 * time.Second},
		{"nested", []ProbeGap{{at(1), at(9)}, {at(2), at(3)}}, 8 * time.Second},
		{"all of it", []ProbeGap{{at(-1), at(11)}}, 10 * time.Second},
	} {
		if got := overlap(g, tc.stalls); got != tc.want {
			t.Errorf("%s: overlap %s, want %s", tc.name, got, tc.want)
		}
	}
}
