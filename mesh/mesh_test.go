package mesh

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

func freePort(t *testing.T) int {
	t.Helper()
	// Gossip needs the same port free for TCP and UDP.
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lines = append(s.lines, string(p))
	return len(p), nil
}

func (s *logSink) contains(sub string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.lines {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
}

func startMesh(t *testing.T, name string, key []byte, sink *logSink) (*Mesh, int) {
	t.Helper()
	return startMeshWith(t, name, key, sink, nil)
}

func startMeshWith(t *testing.T, name string, key []byte, sink *logSink, edit func(*Config)) (*Mesh, int) {
	t.Helper()
	port := freePort(t)
	cfg := Config{
		Name: name, Bind: netip.MustParseAddr("127.0.0.1"), Port: port,
		Meta: Meta{Protocol: ProtocolMin, DataPort: uint16(port + 1), Encrypted: key != nil, Version: "test",
			SigningKey: bytes.Repeat([]byte(name[:1]), 32)},
		SecretKey: key, Timing: LocalTiming(),
	}
	if sink != nil {
		cfg.Logger = newTestLogger(sink)
	}
	if edit != nil {
		edit(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m, port
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMeshChainJoins(t *testing.T) {
	const n = 4
	var ms []*Mesh
	var ports []int
	for i := 0; i < n; i++ {
		m, p := startMesh(t, fmt.Sprintf("p%d", i), nil, nil)
		ms, ports = append(ms, m), append(ports, p)
	}
	// A chain: each knows only its predecessor.
	for i := 1; i < n; i++ {
		if err := ms[i].Connect([]string{fmt.Sprintf("127.0.0.1:%d", ports[i-1])}); err != nil {
			t.Fatal(err)
		}
	}
	for i, m := range ms {
		waitFor(t, fmt.Sprintf("p%d to see all", i), 10*time.Second, func() bool { return len(m.AliveNames()) == n })
	}
	peers := ms[0].Peers()
	if !peers[0].Local || peers[0].Name != "p0" {
		t.Fatalf("local peer not first: %+v", peers[0])
	}
}

func TestMeshCarriesMessagesAndState(t *testing.T) {
	a, pa := startMesh(t, "a", nil, nil)
	b, _ := startMesh(t, "b", nil, nil)
	ha, hb := &recorder{state: []byte("state of a")}, &recorder{state: []byte("state of b")}
	a.Handle(ChannelIPAM, ha)
	b.Handle(ChannelIPAM, hb)
	if err := b.Connect([]string{fmt.Sprintf("127.0.0.1:%d", pa)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "join", 5*time.Second, func() bool { return len(a.AliveNames()) == 2 })
	waitFor(t, "push/pull state", 5*time.Second, func() bool { return ha.hasState("state of b") && hb.hasState("state of a") })
	a.Broadcast(ChannelIPAM, []byte("hello all"))
	waitFor(t, "broadcast", 5*time.Second, func() bool { return hb.hasMsg("hello all") })
	if err := b.SendTo("a", ChannelIPAM, []byte("direct")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "direct", 5*time.Second, func() bool { return ha.hasMsg("direct") })
	if err := b.SendTo("nobody", ChannelIPAM, nil); err == nil {
		t.Fatal("send to unknown peer succeeded")
	}
}

func TestMeshWrongPasswordRefused(t *testing.T) {
	sink := &logSink{}
	key1 := []byte("0123456789abcdef0123456789abcdef")
	key2 := []byte("fedcba9876543210fedcba9876543210")
	a, pa := startMesh(t, "a", key1, sink)
	b, _ := startMesh(t, "b", key2, nil)
	if err := b.Connect([]string{fmt.Sprintf("127.0.0.1:%d", pa)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to log the wrong password", 5*time.Second, func() bool { return sink.contains("different password") })
	if len(a.AliveNames()) != 1 || len(b.AliveNames()) != 1 {
		t.Fatalf("meshes with different passwords merged: %v %v", a.AliveNames(), b.AliveNames())
	}
}

func TestNormalizeTarget(t *testing.T) {
	for in, want := range map[string]string{"h": "h:6783", "h:1": "h:1", "198.18.0.1": "198.18.0.1:6783", "[::1]:5": "[::1]:5"} {
		got, err := NormalizeTarget(in, 6783)
		if err != nil || got != want {
			t.Errorf("%q: got %q %v want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", ":5", "h:0", "h:x", "h:70000"} {
		if _, err := NormalizeTarget(bad, 6783); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzSplitState(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0, 2, 'h', 'i'})
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		total := 0
		_ = SplitState(b, func(_ Channel, s []byte) error { total += len(s) + 5; return nil })
		if total > len(b) {
			t.Fatalf("records of %d bytes out of %d", total, len(b))
		}
	})
}

type recorder struct {
	mu     sync.Mutex
	state  []byte
	msgs   []string
	states []string
}

func (r *recorder) HandleMessage(b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, string(b))
}
func (r *recorder) LocalState() []byte { return r.state }
func (r *recorder) MergeState(b []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.states = append(r.states, string(b))
	return nil
}
func (r *recorder) hasMsg(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		if m == s {
			return true
		}
	}
	return false
}
func (r *recorder) hasState(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.states {
		if m == s {
			return true
		}
	}
	return false
}

type joinRecorder struct {
	recorder
	join []byte
}

func (r *joinRecorder) JoinState() []byte { return r.join }

// A handler with a JoinState sends it in joins and its full state in the
// periodic push/pulls; one without sends its full state in both.
func TestJoinStateInJoinsOnly(t *testing.T) {
	d := &delegate{m: &Mesh{handlers: map[Channel]Handler{
		ChannelHealth: &joinRecorder{recorder: recorder{state: []byte("all summaries")}, join: []byte("own")},
		ChannelIPAM:   &recorder{state: []byte("ring")},
	}}}
	states := func(join bool) map[Channel]string {
		out := map[Channel]string{}
		if err := SplitState(d.LocalState(join), func(ch Channel, s []byte) error { out[ch] = string(s); return nil }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := states(true); got[ChannelHealth] != "own" || got[ChannelIPAM] != "ring" {
		t.Errorf("join state: %q", got)
	}
	if got := states(false); got[ChannelHealth] != "all summaries" || got[ChannelIPAM] != "ring" {
		t.Errorf("push/pull state: %q", got)
	}
}

// Gossip is sent uncompressed (see memberlistConfig), and a member that
// does not compress still understands one that does (an older agent during
// a rolling upgrade).
func TestGossipUncompressedAndCompatible(t *testing.T) {
	m := &Mesh{cfg: Config{Name: "a", Port: 1, Timing: LocalTiming(), Logger: newTestLogger(&logSink{})}}
	if mc := m.memberlistConfig(netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.1"), nil); mc.EnableCompression {
		t.Error("memberlist compresses gossip")
	}
	a, pa := startMesh(t, "a", nil, nil)
	b, _ := startMeshWith(t, "b", nil, nil, func(c *Config) { c.compress = true }) // an older agent
	hb := &recorder{state: []byte("state of b")}
	ha := &recorder{state: []byte("state of a")}
	a.Handle(ChannelIPAM, ha)
	b.Handle(ChannelIPAM, hb)
	if err := b.Connect([]string{fmt.Sprintf("127.0.0.1:%d", pa)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "join", 5*time.Second, func() bool { return len(a.AliveNames()) == 2 && len(b.AliveNames()) == 2 })
	b.Broadcast(ChannelIPAM, []byte("compressed hello"))
	waitFor(t, "a compressed broadcast", 5*time.Second, func() bool { return ha.hasMsg("compressed hello") })
	waitFor(t, "a compressed push/pull", 5*time.Second, func() bool { return ha.hasState("state of b") })
}
