package soak

import (
	"strings"
	"testing"
	"time"
)

// The growth check needs no root: it must pass a flat series and catch a
// leak, or the soak's "memory and goroutines stay flat" proves nothing.
func TestFlatCatchesGrowth(t *testing.T) {
	series := func(g func(i int) float64, r func(i int) float64) []sample {
		var out []sample
		for i := range 40 {
			out = append(out, sample{at: time.Unix(int64(i*5), 0), goroutines: g(i), rss: r(i)})
		}
		return out
	}
	steady := func(v float64) func(int) float64 { return func(i int) float64 { return v + float64(i%3) } }
	if _, v := flat("h", series(steady(30), steady(100<<20))); v != "" {
		t.Fatalf("flat series judged growing: %s", v)
	}
	if _, v := flat("h", series(func(i int) float64 { return 30 + 5*float64(i) }, steady(100<<20))); !strings.Contains(v, "goroutines") {
		t.Fatalf("a goroutine leak of 5 per sample passed: %q", v)
	}
	if _, v := flat("h", series(steady(30), func(i int) float64 { return float64(100<<20 + i*(4<<20)) })); !strings.Contains(v, "RSS") {
		t.Fatalf("a memory leak of 4 MiB per sample passed: %q", v)
	}
	if _, v := flat("h", series(steady(30), steady(100<<20))[:3]); v != "" {
		t.Fatalf("three samples judged: %s", v)
	}
}
