package agent

import (
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/mesh"
)

func sampleHealth(name string, seq int64) healthSummary {
	return healthSummary{Name: name, Version: "1.0", Ready: true, Datapath: "tun+udp", Seq: seq,
		Links: []healthLink{{Peer: "b", State: connEstablished}, {Peer: "c", State: connDown}}}
}

func TestHealthMergeKeepsNewest(t *testing.T) {
	g := newHealthGossip("self", slog.New(slog.DiscardHandler), mesh.LocalTiming(), func() healthSummary { return sampleHealth("self", 1) })
	now := time.Unix(1000, 0)
	g.merge(sampleHealth("a", 10), now)
	older := sampleHealth("a", 5)
	older.Ready = false
	g.merge(older, now.Add(time.Millisecond))
	if !g.peers["a"].sum.Ready {
		t.Error("an older summary replaced a newer one")
	}
	// Not refreshed for long: the peer may have restarted with its clock
	// behind; its summary is taken whatever its sequence.
	g.merge(older, now.Add(healthStaleAfter*g.interval+time.Millisecond))
	if g.peers["a"].sum.Ready {
		t.Error("a stale summary was kept against a fresh one")
	}
	g.merge(sampleHealth("self", 99), now)
	if _, ok := g.peers["self"]; ok {
		t.Error("a summary in this agent's name was taken from the wire")
	}
	view := g.view([]mesh.PeerInfo{{Name: "self", State: mesh.StateAlive}, {Name: "a", State: mesh.StateAlive}}, now)
	if len(view.Peers) != 2 || view.Peers[0].Name != "a" || view.Peers[1].Name != "self" || len(view.Peers[0].Connections) != 2 {
		t.Errorf("view: %+v", view)
	}
	// A peer that is gone is dropped from the view and the table.
	view = g.view([]mesh.PeerInfo{{Name: "self", State: mesh.StateAlive}, {Name: "a", State: mesh.StateDead}}, now)
	if len(view.Peers) != 1 || len(g.peers) != 0 {
		t.Errorf("after a left: view %+v, table %v", view, g.peers)
	}
}

func TestHealthStateRoundTrip(t *testing.T) {
	a := newHealthGossip("a", slog.New(slog.DiscardHandler), mesh.LocalTiming(), func() healthSummary { return sampleHealth("a", 1) })
	a.merge(sampleHealth("c", 3), time.Now())
	b := newHealthGossip("b", slog.New(slog.DiscardHandler), mesh.LocalTiming(), func() healthSummary { return sampleHealth("b", 1) })
	if err := b.MergeState(a.LocalState()); err != nil {
		t.Fatal(err)
	}
	if len(b.peers) != 2 || b.peers["a"].sum.Datapath != "tun+udp" || b.peers["c"].sum.Seq != 3 {
		t.Errorf("merged: %+v", b.peers)
	}
}

func TestDecodeHealthRejects(t *testing.T) {
	long := strings.Repeat("x", maxNameLen+1)
	for name, msg := range map[string]string{
		"not json":    "{",
		"no name":     `{"n":"","v":"1","s":1,"c":[]}`,
		"long name":   `{"n":"` + long + `","s":1,"c":[]}`,
		"bad state":   `{"n":"a","s":1,"c":[{"p":"b","s":"great"}]}`,
		"empty peer":  `{"n":"a","s":1,"c":[{"p":"","s":"down"}]}`,
		"wrong types": `{"n":1}`,
	} {
		if _, err := decodeHealth([]byte(msg)); !errors.Is(err, ErrBadHealth) {
			t.Errorf("%s: %v, want ErrBadHealth", name, err)
		}
	}
	if _, err := decodeHealthState([]byte(`[{"n":"a","s":1,"c":[]},{"n":""}]`)); !errors.Is(err, ErrBadHealth) {
		t.Errorf("state with one bad summary: %v, want ErrBadHealth", err)
	}
}

// FuzzDecodeHealth: summaries come from any peer that can gossip; no input
// may panic, and what is accepted re-encodes to something accepted.
func FuzzDecodeHealth(f *testing.F) {
	ok, _ := json.Marshal(sampleHealth("a", 1))
	state, _ := json.Marshal([]healthSummary{sampleHealth("a", 1), sampleHealth("b", 2)})
	for _, seed := range [][]byte{ok, state, []byte(`{}`), []byte(`[]`), []byte(`{"n":"a","c":null}`), []byte(`{"n":"a","c":[{"p":"b","s":"down"}]}`)} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if h, err := decodeHealth(b); err == nil {
			again, err := json.Marshal(h)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := decodeHealth(again); err != nil {
				t.Fatalf("accepted %q, but not its re-encoding: %v", b, err)
			}
		}
		if all, err := decodeHealthState(b); err == nil {
			for _, h := range all {
				if h.check() != nil {
					t.Fatalf("state accepted an invalid summary %+v", h)
				}
			}
		}
	})
}

// A summary is broadcast when it changes, and unchanged only as often as
// the mesh's size allows: the summaries of a thousand agents cost each
// agent about what those of fifteen do.
func TestHealthBroadcastsScaleWithMesh(t *testing.T) {
	h := sampleHealth("self", 1)
	count := func(members int, change bool) int {
		g := newHealthGossip("self", slog.New(slog.DiscardHandler), mesh.DefaultTiming(), func() healthSummary { return h })
		start, sent := time.Unix(1000, 0), 0
		for tick := range 120 { // ten minutes of ticks every 5 s
			s := h
			s.Seq = int64(tick) // the time changes at every tick
			if change && tick == 60 {
				s.Ready = false
			}
			if g.due(s, members, start.Add(time.Duration(tick)*g.interval)) {
				sent++
			}
		}
		return sent
	}
	if got := count(3, false); got != 120 {
		t.Errorf("3 members: %d broadcasts in 10 min, want 120 (every interval)", got)
	}
	// 1000 members: refresh every 67 intervals → 2 in 120 ticks.
	if got := count(1000, false); got != 2 {
		t.Errorf("1000 members: %d broadcasts in 10 min, want 2", got)
	}
	// Sent at the start, at the change (tick 60) and back (61); the refresh
	// then counts from tick 61, past the ten minutes.
	if got := count(1000, true); got != 3 {
		t.Errorf("1000 members, one change: %d broadcasts in 10 min, want 3 (start, the change, and back)", got)
	}
}
