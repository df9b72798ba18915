package ipam

import (
	"testing"
	"time"
)

// A membership change makes a peer broadcast its keys only when a peer
// comes back that may have missed a write of them: not for newcomers (N
// agents × N joins of signed broadcasts stalled a forming mesh), not for a
// returning peer when nothing was written since shortly before it went.
func TestAnnounceOnlyToReturningPeers(t *testing.T) {
	alive := []string{"a", "b"}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := &IPAM{cfg: Config{Name: "a", Peers: func() []string { return alive }},
		aliveSeen: map[string]bool{}, departed: map[string]time.Time{}}
	step := func(d time.Duration, changed bool) bool {
		now = now.Add(d)
		return p.checkReturnsLocked(now, changed)
	}
	p.ownWritten = now
	if step(time.Second, true) {
		t.Fatal("announced for b, seen for the first time")
	}
	alive = []string{"a", "b", "c", "d"}
	if step(time.Second, true) {
		t.Fatal("announced for newcomers c and d")
	}
	alive = []string{"a", "c", "d"} // b goes away
	if step(time.Second, true) {
		t.Fatal("announced when a peer went away")
	}
	alive = []string{"a", "b", "c", "d"} // and comes back: our write may have missed it
	if !step(time.Second, true) {
		t.Fatal("no announce for b, back after a write of ours shortly before it went")
	}
	// Gone for long, back without any write of ours since: nothing to tell.
	alive = []string{"a", "c", "d"}
	step(time.Minute, true)
	alive = []string{"a", "b", "c", "d"}
	if step(time.Hour, true) {
		t.Fatal("announced for b although nothing was written since it went")
	}
	// Without a change the view is compared only every membershipEvery.
	alive = []string{"a", "c", "d"}
	step(time.Millisecond, false)
	if _, gone := p.departed["b"]; gone {
		t.Fatal("membership listed again before membershipEvery")
	}
	step(membershipEvery, false)
	if _, gone := p.departed["b"]; !gone {
		t.Fatal("b's departure not noticed after membershipEvery")
	}
}
