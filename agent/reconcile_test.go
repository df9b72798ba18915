package agent

import (
	"testing"
	"time"
)

// A stream of host events (an event every 20 ms for 10 s, as a forming mesh
// makes with its filter updates and fast-path routes) gives a check about
// once a second, not one per settled burst (about 170 before); events keep
// being checked meanwhile, and a lone event after a quiet spell is checked
// after eventSettle.
func TestChecksSpacedUnderEventStream(t *testing.T) {
	var p checkPacer
	now := time.Unix(1_000_000, 0)
	var due time.Time // the pending check, zero if none
	checks := 0
	step := func(event bool) {
		if event && due.IsZero() {
			due = now.Add(p.wait(now))
		}
		if !due.IsZero() && !now.Before(due) {
			p.checked(now)
			checks++
			due = time.Time{}
		}
	}
	for i := 0; i < 500; i++ { // 10 s, an event each 20 ms
		step(true)
		now = now.Add(20 * time.Millisecond)
	}
	step(false)
	if checks < 9 || checks > 11 {
		t.Fatalf("%d checks in 10 s of events, want about one a second (9 to 11)", checks)
	}
	now = now.Add(time.Minute)
	if w := p.wait(now); w != eventSettle {
		t.Fatalf("an event after a quiet minute is checked after %v, want %v", w, eventSettle)
	}
}
