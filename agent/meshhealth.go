package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/mesh"
)

// Each agent gossips a small summary of its own health on mesh.ChannelHealth:
// ready, version, datapath, how many of its connections are established,
// and the connections that are exceptions. Any agent can then show the
// whole mesh's matrix of who reaches whom (`weft status mesh`). The
// summaries are informational: they decide nothing.
//
// A summary lists only its exceptions (connections not established, or
// established on another datapath than most) and counts: a link it does
// not list is established on its LinkDatapath. Listing every connection
// made each summary O(N) and the push/pull state of all of them O(N²):
// about 75 kB at 50 agents and 30 MB at 1,000, in every exchange.

const (
	// healthInterval is how often a summary is looked at, and broadcast
	// if it changed or its refresh (healthRefresh) is due (at most; five
	// probe intervals with faster gossip timing, as in tests).
	healthInterval = 5 * time.Second
	// healthStaleAfter intervals, a summary that was not refreshed is
	// replaced by any other from its peer, newer or not (its clock may
	// have gone back).
	healthStaleAfter = 6
	// healthBroadcastMax is the largest summary sent by broadcast; larger
	// ones travel with the push/pull exchange only.
	healthBroadcastMax = 1024
	// healthPeersPerInterval scales the refresh with the mesh: a summary
	// that did not change is broadcast again every interval × members /
	// healthPeersPerInterval. Each broadcast is paid by every member, so a
	// fixed period made the gossip of every agent grow with the mesh (a
	// thousand agents each refreshing every 5 s is 200 summaries a second,
	// alone more than the 10 kB/s an agent may spend). A change is sent at
	// once.
	healthPeersPerInterval = 15

	// healthFormat is the summary format this agent sends: 2 lists the
	// exceptions only. Format 0 (no "f" key, agents before it) listed every
	// connection; both decode. An older agent reads a format 2 summary as
	// one that lists a few connections and shows the others as unknown.
	healthFormat = 2
	// healthMaxExceptions caps the exceptions one summary lists (the worst
	// first) so that a summary fits a broadcast whatever happens to the
	// mesh; past it the summary says Truncated, and its counts still tell
	// how many connections are not established.
	healthMaxExceptions = 16

	maxHealthBytes = 1 << 20  // one summary on the wire (format 0 may list 16k links)
	maxStateBytes  = 64 << 20 // the push/pull state of all summaries
	maxHealthLinks = 1 << 14  // connections of one agent (format 0: listed)
	maxHealthPeers = 1 << 14  // summaries in one push/pull state
	maxNameLen     = 253
)

// ErrBadHealth is a summary from the wire that is malformed or out of bounds.
var ErrBadHealth = errors.New("bad health summary")

// healthSummary is the wire form, JSON with short keys to fit a broadcast.
type healthSummary struct {
	Format   int    `json:"f,omitempty"` // healthFormat; 0 from older agents
	Name     string `json:"n"`
	Version  string `json:"v"`
	Ready    bool   `json:"r"`
	Datapath string `json:"d,omitempty"`
	Seq      int64  `json:"s"` // the origin's clock (unix ns) when made
	// Format 2: the datapath of every established connection not listed,
	// how many connections the agent has and how many are established,
	// and whether exceptions were left out (past healthMaxExceptions).
	LinkDatapath string `json:"ld,omitempty"`
	Total        int    `json:"k,omitempty"`
	Established  int    `json:"e,omitempty"`
	Truncated    bool   `json:"t,omitempty"`
	// Links: format 2, the exceptions; format 0, every connection.
	Links []healthLink `json:"c"`
}

type healthLink struct {
	Peer     string `json:"p"`
	State    string `json:"s"`
	Datapath string `json:"d,omitempty"` // format 2: when not the summary's LinkDatapath
}

// decodeHealth decodes and checks one summary from a peer.
func decodeHealth(b []byte) (healthSummary, error) {
	var h healthSummary
	if len(b) > maxHealthBytes {
		return h, fmt.Errorf("%w: %d bytes", ErrBadHealth, len(b))
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("%w: %v", ErrBadHealth, err)
	}
	return h, h.check()
}

func (h healthSummary) check() error {
	switch {
	case h.Name == "" || len(h.Name) > maxNameLen:
		return fmt.Errorf("%w: name of %d bytes", ErrBadHealth, len(h.Name))
	case len(h.Version) > maxNameLen || len(h.Datapath) > maxNameLen || len(h.LinkDatapath) > maxNameLen:
		return fmt.Errorf("%w: version or datapath too long", ErrBadHealth)
	case h.Format < 0:
		return fmt.Errorf("%w: format %d", ErrBadHealth, h.Format)
	case len(h.Links) > maxHealthLinks:
		return fmt.Errorf("%w: %d connections", ErrBadHealth, len(h.Links))
	case h.Total < 0 || h.Total > maxHealthLinks || h.Established < 0 || h.Established > h.Total:
		return fmt.Errorf("%w: counts %d established of %d", ErrBadHealth, h.Established, h.Total)
	}
	if h.Format >= healthFormat {
		// Exceptions only: a bounded list, within the counts.
		if len(h.Links) > healthMaxExceptions || len(h.Links) > h.Total {
			return fmt.Errorf("%w: %d exceptions of %d connections", ErrBadHealth, len(h.Links), h.Total)
		}
	}
	for _, l := range h.Links {
		if l.Peer == "" || len(l.Peer) > maxNameLen || len(l.Datapath) > maxNameLen {
			return fmt.Errorf("%w: peer name of %d bytes", ErrBadHealth, len(l.Peer))
		}
		switch l.State {
		case connEstablished, connConnecting, connDown:
		default:
			return fmt.Errorf("%w: connection state %q", ErrBadHealth, l.State)
		}
	}
	return nil
}

// decodeHealthState decodes the push/pull state: a list of summaries.
func decodeHealthState(b []byte) ([]healthSummary, error) {
	if len(b) > maxStateBytes {
		return nil, fmt.Errorf("%w: state of %d bytes", ErrBadHealth, len(b))
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadHealth, err)
	}
	if len(raw) > maxHealthPeers {
		return nil, fmt.Errorf("%w: %d summaries", ErrBadHealth, len(raw))
	}
	out := make([]healthSummary, 0, len(raw))
	for _, r := range raw {
		h, err := decodeHealth(r)
		if err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, nil
}

// linkRank orders exceptions, the worst first: down, connecting, then
// established on an unusual datapath.
func linkRank(state string) int {
	switch state {
	case connDown:
		return 0
	case connConnecting:
		return 1
	}
	return 2
}

// summarizeLinks fills h's format 2 connection fields from this agent's
// connections: the counts, the datapath most established ones use, and the
// exceptions to it, the worst first, at most healthMaxExceptions.
func summarizeLinks(h *healthSummary, conns []api.Connection) {
	h.Format = healthFormat
	h.Total, h.Established = len(conns), 0
	byPath := map[string]int{}
	for _, c := range conns {
		if c.State == connEstablished {
			h.Established++
			byPath[c.Datapath]++
		}
	}
	// The most used datapath, ties to the name first in order so that
	// the summary does not change from one call to the next.
	h.LinkDatapath = ""
	best := 0
	for p, n := range byPath {
		if n > best || (n == best && p < h.LinkDatapath) {
			h.LinkDatapath, best = p, n
		}
	}
	h.Links = []healthLink{}
	for _, c := range conns {
		switch {
		case c.State != connEstablished:
			h.Links = append(h.Links, healthLink{Peer: c.Peer, State: c.State})
		case c.Datapath != h.LinkDatapath:
			h.Links = append(h.Links, healthLink{Peer: c.Peer, State: c.State, Datapath: c.Datapath})
		}
	}
	sort.Slice(h.Links, func(i, j int) bool {
		a, b := h.Links[i], h.Links[j]
		if ra, rb := linkRank(a.State), linkRank(b.State); ra != rb {
			return ra < rb
		}
		return a.Peer < b.Peer
	})
	h.Truncated = len(h.Links) > healthMaxExceptions
	if h.Truncated {
		h.Links = h.Links[:healthMaxExceptions]
	}
}

type healthEntry struct {
	sum      healthSummary
	received time.Time
}

// healthGossip keeps the latest summary of every peer (mesh.Handler).
type healthGossip struct {
	self      string
	log       *slog.Logger
	interval  time.Duration
	summarize func() healthSummary // this agent's summary now

	mu    sync.Mutex
	peers map[string]healthEntry

	// refresh is the period of broadcasts of an unchanged summary now
	// (healthRefresh); a summary is stale after healthStaleAfter of them.
	refresh atomic.Int64
	// last summary broadcast, and when (run's goroutine only).
	lastSent   healthSummary
	lastSentAt time.Time
}

// healthRefresh is how often a summary that did not change is broadcast in
// a mesh of members: interval × ceil(members / healthPeersPerInterval), so
// the summaries of the whole mesh cost each agent about the same gossip
// whatever its size.
func healthRefresh(interval time.Duration, members int) time.Duration {
	return interval * time.Duration(max(1, (members+healthPeersPerInterval-1)/healthPeersPerInterval))
}

// due reports whether summary h is to be broadcast now, in a mesh of
// members: when it differs from the last one sent (its time aside), or
// the refresh period has passed.
func (g *healthGossip) due(h healthSummary, members int, now time.Time) bool {
	refresh := healthRefresh(g.interval, members)
	g.refresh.Store(int64(refresh))
	if !g.lastSentAt.IsZero() && sameHealth(h, g.lastSent) && now.Sub(g.lastSentAt) < refresh {
		return false
	}
	g.lastSent, g.lastSentAt = h, now
	return true
}

// sameHealth compares two summaries but for their time.
func sameHealth(a, b healthSummary) bool {
	return a.Name == b.Name && a.Version == b.Version && a.Ready == b.Ready && a.Datapath == b.Datapath &&
		slices.Equal(a.Links, b.Links)
}

// staleAfter is how long a peer's summary is kept against an older one.
func (g *healthGossip) staleAfter() time.Duration {
	return healthStaleAfter * max(g.interval, time.Duration(g.refresh.Load()))
}

func newHealthGossip(self string, log *slog.Logger, timing mesh.Timing, summarize func() healthSummary) *healthGossip {
	interval := healthInterval
	if timing.ProbeInterval > 0 {
		interval = min(interval, 5*timing.ProbeInterval)
	}
	return &healthGossip{self: self, log: log, interval: interval, summarize: summarize, peers: map[string]healthEntry{}}
}

// merge keeps h if it is newer than what is known of its peer. A peer's
// summary of itself is only taken from the wire for other peers: this
// agent's own comes from summarize.
func (g *healthGossip) merge(h healthSummary, now time.Time) {
	if h.Name == g.self {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	old, ok := g.peers[h.Name]
	if ok && h.Seq <= old.sum.Seq && now.Sub(old.received) < g.staleAfter() {
		return
	}
	g.peers[h.Name] = healthEntry{sum: h, received: now}
}

// HandleMessage implements mesh.Handler: one peer's summary.
func (g *healthGossip) HandleMessage(msg []byte) {
	h, err := decodeHealth(msg)
	if err != nil {
		g.log.Debug("dropped a health summary", "err", err)
		return
	}
	g.merge(h, time.Now())
}

// LocalState implements mesh.Handler: every summary known, this one fresh.
func (g *healthGossip) LocalState() []byte {
	all := []healthSummary{g.summarize()}
	g.mu.Lock()
	for _, e := range g.peers {
		all = append(all, e.sum)
	}
	g.mu.Unlock()
	b, err := json.Marshal(all)
	if err != nil {
		return nil
	}
	return b
}

// JoinState implements mesh.JoinStater: a join carries this agent's own
// summary only. Every member answers the joins of newcomers, and at a
// mesh's start they all join the same few peers: with every summary known,
// N joins cost that peer N × N summaries. A newcomer learns the others from
// their broadcasts and the next periodic push/pull.
func (g *healthGossip) JoinState() []byte {
	b, err := json.Marshal([]healthSummary{g.summarize()})
	if err != nil {
		return nil
	}
	return b
}

// MergeState implements mesh.Handler.
func (g *healthGossip) MergeState(buf []byte) error {
	all, err := decodeHealthState(buf)
	if err != nil {
		return err
	}
	now := time.Now()
	for _, h := range all {
		g.merge(h, now)
	}
	return nil
}

// run broadcasts this agent's summary every interval until ctx ends.
func (g *healthGossip) run(ctx context.Context, m *mesh.Mesh) {
	t := time.NewTicker(g.interval)
	defer t.Stop()
	for {
		_, alive := m.Counts()
		if h := g.summarize(); g.due(h, alive, time.Now()) {
			if b, err := json.Marshal(h); err == nil && len(b) <= healthBroadcastMax {
				m.BroadcastKeyed(mesh.ChannelHealth, g.self, b)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// view is the API's MeshHealth: this agent's summary and those of the
// members that are not gone, sorted by name. A format 2 summary lists its
// exceptions only; the view fills in the others as established on the
// summary's LinkDatapath: the members not gone in this agent's view, when
// they are as many as the summary counts (else, e.g. while a newcomer is
// known to one side only, or when the summary was truncated, they are left
// out and show as unknown).
func (g *healthGossip) view(members []mesh.PeerInfo, now time.Time) api.MeshHealth {
	own := g.summarize()
	present := make([]string, 0, len(members))
	for _, p := range members {
		if !p.State.Gone() {
			present = append(present, p.Name)
		}
	}
	out := api.MeshHealth{Peers: []api.PeerHealth{toAPIHealth(own, 0, present)}}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range members {
		if p.Name == g.self || p.State.Gone() {
			continue
		}
		if e, ok := g.peers[p.Name]; ok {
			out.Peers = append(out.Peers, toAPIHealth(e.sum, now.Sub(e.received), present))
		}
	}
	// Forget the summaries of peers that are gone, so the table stays as
	// small as the mesh.
	alive := map[string]bool{}
	for _, p := range members {
		alive[p.Name] = !p.State.Gone()
	}
	for name := range g.peers {
		if !alive[name] {
			delete(g.peers, name)
		}
	}
	sort.Slice(out.Peers, func(i, j int) bool { return out.Peers[i].Name < out.Peers[j].Name })
	return out
}

// toAPIHealth is one summary for the API; present are the members not gone
// in this agent's view, from which a format 2 summary's established links
// are filled in.
func toAPIHealth(h healthSummary, age time.Duration, present []string) api.PeerHealth {
	p := api.PeerHealth{Name: h.Name, Version: h.Version, Ready: h.Ready, Datapath: h.Datapath,
		Age: age.Round(time.Millisecond), Links: h.Total, Established: h.Established, Truncated: h.Truncated,
		Connections: make([]api.PeerLink, 0, len(h.Links))}
	listed := make(map[string]bool, len(h.Links))
	for _, l := range h.Links {
		listed[l.Peer] = true
		dp := l.Datapath
		if dp == "" && l.State == connEstablished {
			dp = h.LinkDatapath
		}
		p.Connections = append(p.Connections, api.PeerLink{Peer: l.Peer, State: l.State, Datapath: dp})
	}
	if h.Format != healthFormat {
		// Format 0 listed every connection (counts are those listed);
		// a later format is not understood past its exceptions.
		if h.Format == 0 {
			p.Links = len(h.Links)
			for _, l := range h.Links {
				if l.State == connEstablished {
					p.Established++
				}
			}
		}
		return p
	}
	if h.Truncated {
		return p
	}
	var fill []string
	for _, name := range present {
		if name != h.Name && !listed[name] {
			fill = append(fill, name)
		}
	}
	if len(fill) != h.Total-len(h.Links) {
		return p
	}
	for _, name := range fill {
		p.Connections = append(p.Connections, api.PeerLink{Peer: name, State: connEstablished, Datapath: h.LinkDatapath})
	}
	sort.Slice(p.Connections, func(i, j int) bool { return p.Connections[i].Peer < p.Connections[j].Peer })
	return p
}

// ownHealth is this agent's summary, from the same sources as `weft status`
// and `weft status connections`.
func (a *Agent) ownHealth() healthSummary {
	h := healthSummary{Name: a.cfg.Name, Version: api.Version, Ready: a.Ready(), Seq: time.Now().UnixNano()}
	if a.running() && a.dp != nil {
		h.Datapath = a.dp.router.Datapath()
	}
	summarizeLinks(&h, a.connections())
	return h
}

// meshHealth serves GET /v1/mesh.
func (a *Agent) meshHealth() (api.MeshHealth, error) {
	if !a.running() {
		return api.MeshHealth{}, notReady(errNoMesh)
	}
	return a.health.view(a.mesh.Members(), time.Now()), nil
}
