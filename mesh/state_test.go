package mesh

import "testing"

func TestStateStrings(t *testing.T) {
	want := map[State]string{StateAlive: "alive", StateSuspect: "suspect", StateDead: "dead", StateLeft: "left", StateUnknown: "unknown"}
	for s, w := range want {
		if s.String() != w {
			t.Errorf("%d: %q, want %q", s, s.String(), w)
		}
	}
	if len(States()) != 4 {
		t.Fatalf("States() = %v", States())
	}
	for _, s := range States() {
		if s.Reachable() == s.Gone() {
			t.Errorf("%v: reachable %v gone %v", s, s.Reachable(), s.Gone())
		}
	}
	if StateUnknown.Reachable() || StateUnknown.Gone() {
		t.Error("unknown is neither reachable nor gone")
	}
}
