package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/mesh"
)

func sampleHealth(name string, seq int64) healthSummary {
	return healthSummary{Format: healthFormat, Name: name, Version: "1.0", Ready: true, Datapath: "tun+udp", Seq: seq,
		LinkDatapath: "tun+udp", Total: 2, Established: 1,
		Links: []healthLink{{Peer: "c", State: connDown}}}
}

// oldHealth is a summary as agents before format 2 sent it: every link.
func oldHealth(name string, seq int64) healthSummary {
	return healthSummary{Name: name, Version: "0.9", Ready: true, Datapath: "tun+udp", Seq: seq,
		Links: []healthLink{{Peer: "b", State: connEstablished}, {Peer: "c", State: connDown}}}
}

// meshConns are the connections of one agent of a mesh of n, all
// established on tun+udp but those named in down.
func meshConns(self, n int, down ...int) []api.Connection {
	out := make([]api.Connection, 0, n-1)
	for i := range n {
		if i == self {
			continue
		}
		c := api.Connection{Peer: fmt.Sprintf("host%d", i), State: connEstablished, Datapath: "tun+udp"}
		if slices.Contains(down, i) {
			c.State, c.Datapath = connDown, ""
		}
		out = append(out, c)
	}
	return out
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
	// A join carries the sender's own summary only.
	all, err := decodeHealthState(a.JoinState())
	if err != nil || len(all) != 1 || all[0].Name != "a" {
		t.Errorf("join state: %+v, %v", all, err)
	}
}

func TestDecodeHealthRejects(t *testing.T) {
	long := strings.Repeat("x", maxNameLen+1)
	for name, msg := range map[string]string{
		"not json":                   "{",
		"no name":                    `{"n":"","v":"1","s":1,"c":[]}`,
		"long name":                  `{"n":"` + long + `","s":1,"c":[]}`,
		"bad state":                  `{"n":"a","s":1,"c":[{"p":"b","s":"great"}]}`,
		"empty peer":                 `{"n":"a","s":1,"c":[{"p":"","s":"down"}]}`,
		"wrong types":                `{"n":1}`,
		"format < 0":                 `{"f":-1,"n":"a","s":1,"c":[]}`,
		"counts":                     `{"f":2,"n":"a","s":1,"k":1,"e":2,"c":[]}`,
		"neg counts":                 `{"f":2,"n":"a","s":1,"k":-1,"e":-1,"c":[]}`,
		"huge counts":                `{"f":2,"n":"a","s":1,"k":99999999,"e":0,"c":[]}`,
		"more exceptions than links": `{"f":2,"n":"a","s":1,"k":0,"c":[{"p":"b","s":"down"}]}`,
		"too many exceptions":        fmt.Sprintf(`{"f":2,"n":"a","s":1,"k":100,"c":[%s]}`, strings.Repeat(`{"p":"b","s":"down"},`, healthMaxExceptions)+`{"p":"b","s":"down"}`),
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
	old, _ := json.Marshal(oldHealth("a", 1))
	state, _ := json.Marshal([]healthSummary{sampleHealth("a", 1), oldHealth("b", 2)})
	big := healthSummary{Name: "x", Seq: 1}
	summarizeLinks(&big, meshConns(0, 100, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18))
	truncated, _ := json.Marshal(big)
	for _, seed := range [][]byte{ok, old, state, truncated, []byte(`{}`), []byte(`[]`), []byte(`{"n":"a","c":null}`),
		[]byte(`{"n":"a","c":[{"p":"b","s":"down"}]}`), []byte(`{"f":3,"n":"a","k":5,"e":5,"c":[]}`),
		[]byte(`{"f":2,"n":"a","k":3,"e":2,"ld":"fastdp","c":[{"p":"b","s":"established","d":"tun+udp"}]}`)} {
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
				// What is accepted can be shown, and a summary never
				// fills in more connections than it counts.
				p := toAPIHealth(h, 0, []string{"a", "b", "c"})
				if h.Format == healthFormat && len(p.Connections) > max(h.Total, len(h.Links)) {
					t.Fatalf("%+v shown with %d connections", h, len(p.Connections))
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

// The push/pull state of a healthy mesh of 1,000 agents: every agent's
// summary, each of 999 established links. Listing every link made it
// about 30 MB; exceptions only, it grows with N, not N².
func TestHealthStateBytesAt1000(t *testing.T) {
	const n = 1000
	g := newHealthGossip("host0", slog.New(slog.DiscardHandler), mesh.DefaultTiming(), nil)
	g.summarize = func() healthSummary {
		h := healthSummary{Name: "host0", Version: "1.0", Ready: true, Datapath: "tun+udp", Seq: 1}
		summarizeLinks(&h, meshConns(0, n))
		return h
	}
	now := time.Now()
	for i := 1; i < n; i++ {
		h := healthSummary{Name: fmt.Sprintf("host%d", i), Version: "1.0", Ready: true, Datapath: "tun+udp", Seq: int64(i)}
		// A few agents each lose a few peers.
		var down []int
		if i%100 == 0 {
			down = []int{(i + 1) % n, (i + 2) % n}
		}
		summarizeLinks(&h, meshConns(i, n, down...))
		g.merge(h, now)
	}
	state := g.LocalState()
	if len(state) > 200*n {
		t.Errorf("push/pull state of %d summaries: %d bytes, want <= %d (200 per agent)", n, len(state), 200*n)
	}
	own, _ := json.Marshal(g.summarize())
	if len(own) > healthBroadcastMax {
		t.Errorf("a summary of %d links is %d bytes, more than a broadcast (%d)", n-1, len(own), healthBroadcastMax)
	}
	if join := g.JoinState(); len(join) > 2*len(own)+8 {
		t.Errorf("join state %d bytes, want this agent's summary only (%d)", len(join), len(own))
	}
	t.Logf("%d agents: push/pull state %d bytes, one summary %d bytes, join %d bytes", n, len(state), len(own), len(g.JoinState()))

	// The matrix is still whole: every agent's row has its 999 links.
	var members []mesh.PeerInfo
	for i := range n {
		members = append(members, mesh.PeerInfo{Name: fmt.Sprintf("host%d", i), State: mesh.StateAlive})
	}
	view := g.view(members, now)
	if len(view.Peers) != n {
		t.Fatalf("view of %d peers, want %d", len(view.Peers), n)
	}
	for _, p := range view.Peers {
		if len(p.Connections) != n-1 || p.Links != n-1 {
			t.Fatalf("%s: %d connections shown, %d counted, want %d", p.Name, len(p.Connections), p.Links, n-1)
		}
		down := 0
		for _, c := range p.Connections {
			if c.State != connEstablished {
				down++
			} else if c.Datapath != "tun+udp" {
				t.Fatalf("%s → %s established on %q", p.Name, c.Peer, c.Datapath)
			}
		}
		if want := p.Links - p.Established; down != want {
			t.Fatalf("%s: %d not established shown, counts say %d", p.Name, down, want)
		}
	}
}

// Exceptions are the links not established and those on another datapath
// than most, the worst first, capped with a flag; the counts stay exact.
func TestSummarizeLinksExceptions(t *testing.T) {
	conns := meshConns(0, 40, 3, 7)
	conns[10].Datapath = pairFastdp // host11 on fastdp
	conns[20].State = connConnecting
	h := healthSummary{Name: "host0"}
	summarizeLinks(&h, conns)
	if h.Total != 39 || h.Established != 36 || h.LinkDatapath != "tun+udp" || h.Truncated {
		t.Errorf("counts: %+v", h)
	}
	want := []healthLink{{Peer: "host3", State: connDown}, {Peer: "host7", State: connDown},
		{Peer: "host21", State: connConnecting}, {Peer: "host11", State: connEstablished, Datapath: pairFastdp}}
	if !slices.Equal(h.Links, want) {
		t.Errorf("exceptions %+v, want %+v", h.Links, want)
	}
	// A partition: half the links down, more than a summary lists.
	var down []int
	for i := 20; i < 40; i++ {
		down = append(down, i)
	}
	summarizeLinks(&h, meshConns(0, 40, down...))
	if !h.Truncated || len(h.Links) != healthMaxExceptions || h.Total-h.Established != 20 {
		t.Errorf("partition: truncated %v, %d listed, %d of %d established", h.Truncated, len(h.Links), h.Established, h.Total)
	}
	if err := h.check(); err != nil {
		t.Errorf("a truncated summary does not decode: %v", err)
	}
	// The view shows the listed exceptions and leaves the rest unknown.
	p := toAPIHealth(h, 0, nil)
	if len(p.Connections) != healthMaxExceptions || !p.Truncated {
		t.Errorf("truncated view: %d connections, truncated %v", len(p.Connections), p.Truncated)
	}
}

// During a rolling upgrade: a summary of an older agent (every link
// listed, no format) is shown as it is; a format this agent does not know
// shows its exceptions only; the view fills nothing in when the counts do
// not match this agent's members.
func TestHealthOtherFormats(t *testing.T) {
	members := []string{"a", "b", "c", "d"}
	old, err := decodeHealth([]byte(`{"n":"a","v":"0.9","r":true,"d":"tun+udp","s":5,"c":[{"p":"b","s":"established"},{"p":"c","s":"down"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	p := toAPIHealth(old, 0, members)
	if len(p.Connections) != 2 || p.Links != 2 || p.Established != 1 {
		t.Errorf("format 0: %+v", p)
	}
	future, err := decodeHealth([]byte(`{"f":3,"n":"a","k":3,"e":2,"c":[{"p":"c","s":"down"}],"x":"new"}`))
	if err != nil {
		t.Fatal(err)
	}
	if p := toAPIHealth(future, 0, members); len(p.Connections) != 1 {
		t.Errorf("format 3: %+v", p)
	}
	// a counts 3 links, but this agent knows 4 members besides a.
	h := healthSummary{Format: healthFormat, Name: "a", Total: 3, Established: 3, LinkDatapath: "tun+udp", Links: []healthLink{}}
	if p := toAPIHealth(h, 0, append(members, "e")); len(p.Connections) != 0 {
		t.Errorf("counts not matching, connections filled in: %+v", p.Connections)
	}
	if p := toAPIHealth(h, 0, members); len(p.Connections) != 3 {
		t.Errorf("counts matching, connections %+v, want b, c, d", p.Connections)
	}
}
