package kubecluster

import (
	"strings"
	"testing"
	"time"
)

// usedIn takes the samples around a window: a pod's CPU is the difference
// between the last reading at or before its start and the first at or after
// its end; the agent process's share is told apart; pods of other nodes and
// idle pods are left out; a pod that appeared in the window counts from 0.
func TestCPUSamplerWindow(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 1, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	d := func(ms int) time.Duration { return time.Duration(ms) * time.Millisecond }
	s := &cpuSampler{names: map[string]string{"n1/weft": "weft launch", "n1/probe": "netprobe probe", "n2/weft": "weft launch"}}
	for i, use := range []map[string]time.Duration{
		{"n1/weft": d(100), "n1/probe": d(10), "n2/weft": d(5)},
		{"n1/weft": d(150), "n1/probe": d(10), "n2/weft": d(500)},
		{"n1/weft": d(400), "n1/probe": d(12), "n2/weft": d(900), "n1/new": d(30)},
		{"n1/weft": d(420), "n1/probe": d(20), "n2/weft": d(950), "n1/new": d(40)},
	} {
		s.samples = append(s.samples, cpuSample{at: at(i * 50), use: use,
			agent: map[string]time.Duration{"n1/weft": use["n1/weft"] / 2}})
	}
	got := s.usedIn("n1", at(60), at(120)) // between readings 1 and 3
	if len(got) != 3 {
		t.Fatalf("usedIn: %+v, want 3 pods of n1", got)
	}
	want := []cpuUse{
		{Key: "n1/weft", Command: "weft launch", CPU: d(270), Agent: d(135)},
		{Key: "n1/new", Command: "(sandbox only)", CPU: d(40)},
		{Key: "n1/probe", Command: "netprobe probe", CPU: d(10)},
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("pod %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if f := formatUse(got); !strings.Contains(f, "weft launch 270ms (pod weft; agent process 135ms") {
		t.Errorf("formatUse: %s", f)
	}
	if got := s.usedIn("n1", at(0), at(0)); len(got) != 0 {
		t.Errorf("empty window: %+v", got)
	}
}
