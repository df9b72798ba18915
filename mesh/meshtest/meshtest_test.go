package meshtest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/weftnet/weft/mesh"
	"github.com/weftnet/weft/mesh/meshtest"
)

func addr(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}), 6783)
}

func TestListenTwiceFails(t *testing.T) {
	var n meshtest.Network
	tr, err := n.Listen(addr(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Listen(addr(1)); err == nil {
		t.Fatal("second Listen on the same address succeeded")
	}
	tr.Shutdown()
	tr2, err := n.Listen(addr(1))
	if err != nil {
		t.Fatalf("Listen after Shutdown: %v", err)
	}
	tr2.Shutdown()
}

func TestPacketsAndStreams(t *testing.T) {
	var n meshtest.Network
	a, _ := n.Listen(addr(1))
	b, _ := n.Listen(addr(2))
	defer a.Shutdown()
	defer b.Shutdown()

	if _, err := a.WriteTo([]byte("ping"), addr(2).String()); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-b.PacketCh():
		if string(p.Buf) != "ping" || p.From.String() != addr(1).String() {
			t.Fatalf("got %q from %s", p.Buf, p.From)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("packet not delivered")
	}

	accepted := make(chan error, 1)
	go func() {
		c := <-b.StreamCh()
		defer c.Close()
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil {
			accepted <- err
			return
		}
		if string(buf) != "hello" || c.RemoteAddr().String() != addr(1).String() {
			accepted <- fmt.Errorf("stream got %q from %s", buf, c.RemoteAddr())
			return
		}
		_, err := c.Write([]byte("ok"))
		accepted <- err
	}()
	c, err := a.DialTimeout(addr(2).String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 2)
	if _, err := io.ReadFull(c, reply); err != nil || string(reply) != "ok" {
		t.Fatalf("reply %q, %v", reply, err)
	}
	c.Close()
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}
	if st := a.Stats(); st.PacketsOut != 1 || st.StreamsOut != 1 || st.StreamBytesOut != 5 {
		t.Fatalf("sender stats %+v", st)
	}

	// A cut link: packets vanish, dials fail as blocked; nobody there: refused.
	n.Block(addr(1).Addr(), addr(2).Addr())
	if _, err := a.WriteTo([]byte("lost"), addr(2).String()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.DialTimeout(addr(2).String(), time.Second); !errors.Is(err, meshtest.ErrBlocked) {
		t.Fatalf("dial over a cut link: %v, want ErrBlocked", err)
	}
	if _, err := a.DialTimeout(addr(3).String(), time.Second); !errors.Is(err, meshtest.ErrRefused) {
		t.Fatalf("dial to nobody: %v, want ErrRefused", err)
	}
	select {
	case p := <-b.PacketCh():
		t.Fatalf("packet %q crossed a cut link", p.Buf)
	default:
	}
	n.Unblock(addr(1).Addr(), addr(2).Addr())
	if st := a.Stats(); st.PacketsDropped != 1 || st.Blocked != 1 || st.StreamsRefused != 1 {
		t.Fatalf("sender stats after the cut %+v", st)
	}
}

// A stream open when its transport shuts down is closed, so the goroutine
// reading it does not hang.
func TestShutdownClosesStreams(t *testing.T) {
	var n meshtest.Network
	a, _ := n.Listen(addr(1))
	b, _ := n.Listen(addr(2))
	defer a.Shutdown()
	got := make(chan error, 1)
	go func() {
		c := <-b.StreamCh()
		_, err := c.Read(make([]byte, 1))
		got <- err
	}()
	c, err := a.DialTimeout(addr(2).String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b.Shutdown()
	select {
	case err := <-got:
		if err == nil {
			t.Fatal("read on a shut-down transport's stream succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a stream of a shut-down transport stayed open")
	}
}

func startMesh(t *testing.T, n *meshtest.Network, i int) *mesh.Mesh {
	t.Helper()
	return startMeshTiming(t, n, i, mesh.LocalTiming())
}

func startMeshTiming(t *testing.T, n *meshtest.Network, i int, timing mesh.Timing) *mesh.Mesh {
	t.Helper()
	tr, err := n.Listen(addr(i))
	if err != nil {
		t.Fatal(err)
	}
	m, err := mesh.New(mesh.Config{
		Name: fmt.Sprintf("m%d", i), Bind: addr(i).Addr(), Port: int(addr(i).Port()),
		Meta:   mesh.Meta{Protocol: mesh.ProtocolMax, DataPort: 6784, Version: "test"},
		Timing: timing, Transport: tr,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// memberlist runs unchanged over the in-memory network: three members join,
// a cut isolates one, and the mesh is whole again after the heal.
func TestMeshPartitionHeals(t *testing.T) {
	var n meshtest.Network
	ms := []*mesh.Mesh{startMesh(t, &n, 1), startMesh(t, &n, 2), startMesh(t, &n, 3)}
	for _, m := range ms[1:] {
		if err := m.Connect([]string{addr(1).String()}); err != nil {
			t.Fatal(err)
		}
	}
	alive := func(m *mesh.Mesh, want int) func() bool {
		return func() bool { return len(m.AliveNames()) == want }
	}
	for i, m := range ms {
		waitFor(t, fmt.Sprintf("m%d to see 3", i+1), alive(m, 3))
	}
	n.Block(addr(1).Addr(), addr(2).Addr())
	n.Block(addr(1).Addr(), addr(3).Addr())
	waitFor(t, "m1 alone", alive(ms[0], 1))
	waitFor(t, "m2 to see m1 gone", alive(ms[1], 2))
	n.Unblock(addr(1).Addr(), addr(2).Addr())
	n.Unblock(addr(1).Addr(), addr(3).Addr())
	for i, m := range ms {
		waitFor(t, fmt.Sprintf("m%d to see 3 after the heal", i+1), alive(m, 3))
	}
}

// A peer that stops answering probes shows as suspect (from this member's
// own failed probe: memberlist has no callback for it) while the suspicion
// lasts, and as alive again once it answers.
func TestMeshShowsSuspect(t *testing.T) {
	timing := mesh.LocalTiming()
	timing.SuspicionMult = 100 // a long suspicion, so the test sees it
	var n meshtest.Network
	ms := []*mesh.Mesh{startMeshTiming(t, &n, 1, timing), startMeshTiming(t, &n, 2, timing), startMeshTiming(t, &n, 3, timing)}
	for _, m := range ms[1:] {
		if err := m.Connect([]string{addr(1).String()}); err != nil {
			t.Fatal(err)
		}
	}
	for i, m := range ms {
		waitFor(t, fmt.Sprintf("m%d to see 3", i+1), func() bool { return len(m.AliveNames()) == 3 })
	}
	stateOf := func(m *mesh.Mesh, name string) mesh.State {
		for _, p := range m.Members() {
			if p.Name == name {
				return p.State
			}
		}
		return mesh.StateUnknown
	}
	n.Block(addr(1).Addr(), addr(3).Addr())
	n.Block(addr(2).Addr(), addr(3).Addr())
	waitFor(t, "m1 to suspect m3", func() bool { return stateOf(ms[0], "m3") == mesh.StateSuspect })
	if ms[0].IsAlive("m3") || !ms[0].Reachable("m3") {
		t.Fatalf("a suspect: alive %v, reachable %v; want not alive, reachable", ms[0].IsAlive("m3"), ms[0].Reachable("m3"))
	}
	n.Unblock(addr(1).Addr(), addr(3).Addr())
	n.Unblock(addr(2).Addr(), addr(3).Addr())
	for i, m := range ms[:2] {
		waitFor(t, fmt.Sprintf("m%d to see m3 alive again", i+1), func() bool { return stateOf(m, "m3") == mesh.StateAlive })
	}
}

var _ memberlist.NodeAwareTransport = (*meshtest.Transport)(nil)
