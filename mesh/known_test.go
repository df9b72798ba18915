package mesh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/weftnet/weft/mesh/meshtest"
)

func knownSample() []KnownPeer {
	return []KnownPeer{
		{Name: "host2", Addr: netip.MustParseAddr("198.18.0.2"), Port: 6783, DataPort: 6784, PublicKey: bytes.Repeat([]byte{2}, 32)},
		{Name: "host1", Addr: netip.MustParseAddr("198.18.0.1"), Port: 6783, DataPort: 6784},
	}
}

func TestKnownPeersRoundTripAndStrictness(t *testing.T) {
	b, err := EncodeKnownPeers(knownSample())
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeKnownPeers(b)
	if err != nil || len(got) != 2 || got[0].Name != "host1" || got[1].Addr != netip.MustParseAddr("198.18.0.2") || len(got[1].PublicKey) != 32 {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for name, doc := range map[string]string{
		"not json":      "peers",
		"version":       `{"version":2,"peers":[]}`,
		"unknown field": `{"version":1,"peers":[],"extra":1}`,
		"trailing":      `{"version":1,"peers":[]} {}`,
		"no name":       `{"version":1,"peers":[{"name":"","addr":"198.18.0.1","port":1,"data_port":2}]}`,
		"twice":         `{"version":1,"peers":[{"name":"a","addr":"198.18.0.1","port":1,"data_port":2},{"name":"a","addr":"198.18.0.2","port":1,"data_port":2}]}`,
		"no address":    `{"version":1,"peers":[{"name":"a","addr":"0.0.0.0","port":1,"data_port":2}]}`,
		"bad address":   `{"version":1,"peers":[{"name":"a","addr":"198.18.0.300","port":1,"data_port":2}]}`,
		"no port":       `{"version":1,"peers":[{"name":"a","addr":"198.18.0.1","port":0,"data_port":2}]}`,
		"no data port":  `{"version":1,"peers":[{"name":"a","addr":"198.18.0.1","port":1}]}`,
		"short key":     `{"version":1,"peers":[{"name":"a","addr":"198.18.0.1","port":1,"data_port":2,"public_key":"AAAA"}]}`,
		"big port":      `{"version":1,"peers":[{"name":"a","addr":"198.18.0.1","port":70000,"data_port":2}]}`,
	} {
		if _, err := DecodeKnownPeers([]byte(doc)); !errors.Is(err, ErrKnownPeers) {
			t.Errorf("%s: err %v, want ErrKnownPeers", name, err)
		}
	}
	dir := t.TempDir()
	if ps, err := LoadKnownPeers(dir); err != nil || ps != nil {
		t.Fatalf("no file: %v %v", ps, err)
	}
	if err := os.WriteFile(filepath.Join(dir, KnownPeersFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKnownPeers(dir); !errors.Is(err, ErrKnownPeers) || !strings.Contains(err.Error(), KnownPeersFile) {
		t.Fatalf("corrupt file: %v", err)
	}
}

func FuzzDecodeKnownPeers(f *testing.F) {
	good, _ := EncodeKnownPeers(knownSample())
	f.Add(good)
	f.Add([]byte(`{"version":1,"peers":[]}`))
	f.Add([]byte(`{"version":1,"peers":[{"name":"a","addr":"::1","port":1,"data_port":2}]}`))
	f.Add([]byte(`{"version":1,"peers":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ps, err := DecodeKnownPeers(b)
		if err != nil {
			return
		}
		again, err := EncodeKnownPeers(ps)
		if err != nil {
			t.Fatalf("accepted peers do not encode: %v", err)
		}
		if _, err := DecodeKnownPeers(again); err != nil {
			t.Fatalf("re-encoded peers do not decode: %v", err)
		}
	})
}

// slowTiming rejoins and exchanges state rarely: what a member does by
// itself shows, not what its peers' periodic work repairs.
func slowTiming() Timing {
	t := LocalTiming()
	t.RejoinInterval, t.RejoinMaxBackoff = time.Minute, time.Minute
	t.PushPullInterval = time.Minute
	return t
}

func runMesh(t *testing.T, cfg Config) (*Mesh, func()) {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	stop := func() {
		if cancel != nil {
			cancel()
			<-done
			cancel = nil
		}
	}
	t.Cleanup(stop)
	return m, stop
}

// A member relaunched with no PEER arguments (SIGTERM, then the same
// command line: the first host of a mesh is launched so) rejoins by itself
// from the peers it saved, at once, and its peers take its new incarnation:
// nobody waits for a periodic rejoin or push/pull. Until gossip speaks, the
// saved peers are listed in state unknown with their endpoints and keys.
func TestRelaunchWithoutPeersRejoins(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	pa, pb := freePort(t), freePort(t)
	dirA := t.TempDir()
	cfgA := Config{Name: "a", Bind: lo, Port: pa, StateDir: dirA, Timing: slowTiming(),
		Meta: Meta{Protocol: ProtocolMin, DataPort: uint16(pa + 1), Version: "test", SigningKey: bytes.Repeat([]byte{'a'}, 32)}}
	cfgB := Config{Name: "b", Bind: lo, Port: pb, Timing: slowTiming(),
		Meta: Meta{Protocol: ProtocolMin, DataPort: uint16(pb + 1), Version: "test", SigningKey: bytes.Repeat([]byte{'b'}, 32),
			PublicKey: bytes.Repeat([]byte{7}, 32)}}
	a, stopA := runMesh(t, cfgA)
	b, _ := runMesh(t, cfgB)
	if err := b.Connect([]string{netip.AddrPortFrom(lo, uint16(pa)).String()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a and b alive to each other", 5*time.Second, func() bool { return a.IsAlive("b") && b.IsAlive("a") })
	waitFor(t, "a saved b", 5*time.Second, func() bool {
		ps, err := LoadKnownPeers(dirA)
		return err == nil && len(ps) == 1 && ps[0].Name == "b" && ps[0].Port == uint16(pb) && len(ps[0].PublicKey) == 32
	})
	stopA() // a leaves cleanly
	waitFor(t, "b sees a gone", 5*time.Second, func() bool { return !b.IsAlive("a") })

	a2, err := New(cfgA)
	if err != nil {
		t.Fatal(err)
	}
	// Before Run: b is known from the last run, with its endpoint and key.
	var seeded bool
	for _, p := range a2.Members() {
		if p.Name == "b" {
			seeded = p.State == StateUnknown && p.Addr == lo && p.Meta.DataPort == uint16(pb+1) && len(p.Meta.PublicKey) == 32
		}
	}
	if !seeded {
		t.Fatalf("relaunched a does not list b from the last run: %+v", a2.Members())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a2.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	start := time.Now()
	waitFor(t, "relaunched a and b alive to each other", 3*time.Second, func() bool { return a2.IsAlive("b") && b.IsAlive("a") })
	t.Logf("rejoined in %s", time.Since(start).Round(time.Millisecond))
}

// Peers gone, or known only from the last run and never heard of since, for
// longer than the join targets' expiry are not kept for the next run.
func TestKnownPeersExpire(t *testing.T) {
	m := &Mesh{cfg: Config{Name: "self", Timing: Timing{TargetExpiry: time.Minute}}, peers: map[string]*peer{}, targets: map[string]*target{}}
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m.now = func() time.Time { return clock }
	m.seedKnown(knownSample())
	m.peers["host2"].state = StateDead
	if got := m.knownPeers(); len(got) != 2 {
		t.Fatalf("at once: %+v", got)
	}
	m.peers["host1"].state, m.peers["host1"].since = StateAlive, clock.Add(30*time.Second)
	clock = clock.Add(2 * time.Minute)
	if got := m.knownPeers(); len(got) != 1 || got[0].Name != "host1" {
		t.Fatalf("after the expiry: %+v, want only the alive host1", got)
	}
}

// A mesh forming changes with every peer that joins; KnownPeersFile, which
// lists them all, is written about once a second, not once per change (N
// writes of N peers at every agent), and the last change is written too.
func TestKnownPeersWritesSpaced(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	port := freePort(t)
	dir := t.TempDir()
	m, _ := runMesh(t, Config{Name: "self", Bind: lo, Port: port, StateDir: dir, Timing: LocalTiming(),
		Meta: Meta{Protocol: ProtocolMin, DataPort: uint16(port + 1), Version: "test"}})
	meta, err := Meta{Protocol: ProtocolMin, DataPort: 6784, Version: "test"}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	const peers = 200
	start := time.Now()
	for i := range peers {
		m.delegate.NotifyJoin(&memberlist.Node{Name: fmt.Sprintf("p%03d", i),
			Addr: net.IPv4(198, 18, byte(i/250), byte(1+i%250)), Port: 6783, Meta: meta})
		time.Sleep(2 * time.Millisecond) // a join every 2 ms: Run sees most of them apart
	}
	waitFor(t, "every peer saved", 10*time.Second, func() bool {
		ps, err := LoadKnownPeers(dir)
		return err == nil && len(ps) == peers
	})
	took := time.Since(start)
	// One write at the first change, then at most one a second.
	if max := int64(2 + took/knownSaveEvery); m.knownWrites.Load() > max {
		t.Fatalf("%d writes of the known peers in %s for %d joins, want at most %d", m.knownWrites.Load(), took.Round(time.Millisecond), peers, max)
	}
	t.Logf("%d writes in %s for %d joins", m.knownWrites.Load(), took.Round(time.Millisecond), peers)
}

// In a big mesh the known peers are written less often: the bytes an agent
// writes a second stay about the same whatever the mesh's size. The last
// state is still written at exit.
func TestKnownPeersSpacingGrowsWithMesh(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	port := freePort(t)
	dir := t.TempDir()
	m, stop := runMesh(t, Config{Name: "self", Bind: lo, Port: port, StateDir: dir, Timing: LocalTiming(),
		Meta: Meta{Protocol: ProtocolMin, DataPort: uint16(port + 1), Version: "test"}})
	meta, err := Meta{Protocol: ProtocolMin, DataPort: 6784, Version: "test"}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	const peers = 1000
	start := time.Now()
	for i := range peers {
		m.delegate.NotifyJoin(&memberlist.Node{Name: fmt.Sprintf("p%04d", i),
			Addr: net.IPv4(198, 18, byte(i/250), byte(1+i%250)), Port: 6783, Meta: meta})
		if i%100 == 99 {
			time.Sleep(400 * time.Millisecond) // joins over about 4 s
		}
	}
	took := time.Since(start)
	// Writes: the first change, then one per knownSpacing(peers) = 20 s
	// (one a second before: 4 or 5 in these 4 s).
	if w := m.knownWrites.Load(); w > 2 {
		t.Errorf("%d writes of the known peers in %s with %d members, want 1 or 2", w, took.Round(time.Millisecond), peers)
	}
	stop()
	ps, err := LoadKnownPeers(dir)
	if err != nil || len(ps) != peers {
		t.Fatalf("after exit: %d known peers (%v), want %d", len(ps), err, peers)
	}
}

// In a big mesh, membership changes are handled (OnChange) at a pace that
// shrinks with its size, not once per change: each handling reads the
// whole membership, and a mesh forming makes N changes at each of N
// members. The last change is always handled.
func TestChangesCoalescedInBigMesh(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	port := freePort(t)
	m, _ := runMesh(t, Config{Name: "self", Bind: lo, Port: port, Timing: LocalTiming(),
		Meta: Meta{Protocol: ProtocolMin, DataPort: uint16(port + 1), Version: "test"}})
	var calls, lastSeen atomic.Int64
	m.OnChange(func() {
		calls.Add(1)
		_, alive := m.Counts()
		lastSeen.Store(int64(alive))
	})
	meta, err := Meta{Protocol: ProtocolMin, DataPort: 6784, Version: "test"}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	const peers = 1000
	node := func(i int) *memberlist.Node {
		return &memberlist.Node{Name: fmt.Sprintf("p%04d", i), Addr: net.IPv4(198, 18, byte(i/250), byte(1+i%250)), Port: 6783, Meta: meta}
	}
	for i := range peers {
		m.delegate.NotifyJoin(node(i))
	}
	waitFor(t, "the joins handled", 5*time.Second, func() bool { return lastSeen.Load() == peers+1 }) // and itself
	// Now 1,000 changes over 2 s (updates, then one failure).
	calls.Store(0)
	start := time.Now()
	for i := range peers {
		if i == peers-1 {
			m.delegate.NotifyLeave(node(i))
			break
		}
		m.delegate.NotifyUpdate(node(i))
		if i%50 == 49 {
			time.Sleep(100 * time.Millisecond)
		}
	}
	took := time.Since(start)
	waitFor(t, "the last change handled", 5*time.Second, func() bool { return lastSeen.Load() == peers })
	// One handling per 0.5 s at this size; about one per 100 ms pause, 20
	// or more, before.
	if c := calls.Load(); c > 2+int64(took/(500*time.Millisecond)) {
		t.Errorf("%d membership changes handled in %s for %d changes, want at most %d", c, took.Round(time.Millisecond), peers, 2+int64(took/(500*time.Millisecond)))
	}
}

// A rejoin pass in a mesh of a thousand alive members costs no allocation
// per member: it ran every 500 ms at every agent, and listed the gossip
// address of every member each time (3,000 allocations a pass).
func TestRejoinPassCheap(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	port := freePort(t)
	m, err := New(Config{Name: "self", Bind: lo, Port: port, Timing: LocalTiming(),
		Meta: Meta{Protocol: ProtocolMin, DataPort: uint16(port + 1), Version: "test"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Shutdown)
	meta, err := Meta{Protocol: ProtocolMin, DataPort: 6784, Version: "test"}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	const peers = 1000
	for i := range peers {
		m.delegate.NotifyJoin(&memberlist.Node{Name: fmt.Sprintf("p%04d", i),
			Addr: net.IPv4(198, 18, byte(i/250), byte(1+i%250)), Port: 6783, Meta: meta})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // no join is started: every target is alive
	allocs := testing.AllocsPerRun(20, func() { m.rejoin(ctx) })
	if allocs > 10 {
		t.Errorf("a rejoin pass over %d alive members: %.0f allocations, want at most 10", peers, allocs)
	}
	names := m.AliveNames()
	if len(names) != peers+1 || !slices.IsSorted(names) {
		t.Fatalf("AliveNames: %d names, sorted %v", len(names), slices.IsSorted(names))
	}
	// The cached list follows a state change.
	m.delegate.NotifyLeave(&memberlist.Node{Name: "p0007", Addr: net.IPv4(198, 18, 0, 8), Port: 6783, Meta: meta})
	if names := m.AliveNames(); len(names) != peers || slices.Contains(names, "p0007") {
		t.Errorf("after p0007 failed: %d names, p0007 in them %v", len(names), slices.Contains(names, "p0007"))
	}
	if !m.aliveAtLocked("198.18.0.9:6783") || m.aliveAtLocked("198.18.0.8:6783") {
		t.Error("alive by address: p0008 should be, p0007 should not")
	}
}

// A rejoin pass (twice a second at every member) looks at every target
// only when a peer's state or the targets changed since the last pass;
// otherwise at the targets not alive only. Scanning all of them at every
// pass was the largest cost of weft's own in an idle simulated mesh of 300.
func TestRejoinPassScansOnlyAfterChanges(t *testing.T) {
	var net meshtest.Network
	m := startSimMember(t, &net, 1, 0, Timing{ProbeInterval: time.Hour, ProbeTimeout: time.Minute, SuspicionMult: 4,
		GossipInterval: time.Hour, PushPullInterval: time.Hour, RejoinInterval: time.Hour, RejoinMaxBackoff: time.Hour,
		TCPTimeout: time.Second, TargetExpiry: time.Hour})
	meta, err := Meta{Protocol: ProtocolMin, DataPort: 6784, Version: "test"}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	addr := func(i int) netip.AddrPort { // 198.18.2.0 onwards: the member is at 198.18.1.1
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(2 + i/250), byte(1 + i%250)}), 6783)
	}
	node := func(i int) *memberlist.Node {
		return &memberlist.Node{Name: fmt.Sprintf("p%04d", i), Addr: addr(i).Addr().AsSlice(), Port: addr(i).Port(), Meta: meta}
	}
	const peers = 1000
	for i := range peers {
		m.delegate.NotifyJoin(node(i))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // joins are not started
	m.rejoin(ctx)
	scans := m.rejoinScans.Load()
	for range 100 {
		m.rejoin(ctx)
	}
	if got := m.rejoinScans.Load() - scans; got != 0 {
		t.Fatalf("100 passes without a change: %d scans of the %d targets, want 0", got, peers)
	}
	m.delegate.NotifyLeave(node(7))
	for range 100 {
		m.rejoin(ctx)
	}
	if got := m.rejoinScans.Load() - scans; got != 1 {
		t.Fatalf("100 passes after one change: %d scans, want 1", got)
	}
	m.mu.Lock()
	down, aliveOthers := len(m.down), m.aliveOthers
	var lost *target
	if len(m.down) == 1 {
		lost = m.down[0]
	}
	m.mu.Unlock()
	if down != 1 || lost.addr != addr(7).String() || aliveOthers != peers-1 {
		t.Fatalf("after p0007 failed: %d targets down (%v), %d alive others; want p0007's only and %d", down, lost, aliveOthers, peers-1)
	}
	if time.Since(lost.lastAlive) > time.Minute {
		t.Fatalf("the lost target was last alive %s ago: its expiry would count from then", time.Since(lost.lastAlive))
	}
}
