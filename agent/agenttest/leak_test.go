package agenttest

import (
	"strings"
	"testing"
	"time"
)

func blockedUntil(ch chan struct{}) { <-ch }

func TestLeakedSinceSeesNewGoroutines(t *testing.T) {
	before := goroutines()
	release := make(chan struct{})
	go blockedUntil(release)
	leaked := leakedSince(before, 50*time.Millisecond)
	if len(leaked) != 1 || !strings.Contains(leaked[0], "blockedUntil") {
		t.Fatalf("want the one blocked goroutine reported, got %d:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
	}
	close(release)
	if leaked := leakedSince(before, 5*time.Second); len(leaked) != 0 {
		t.Fatalf("a goroutine that ended is still reported:\n%s", strings.Join(leaked, "\n\n"))
	}
}
