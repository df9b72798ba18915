package udp

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

func listenLoopback(t *testing.T) Conn {
	t.Helper()
	c, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), nil)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// received reads until want datagrams arrived (splitting GRO trains),
// within a deadline.
func received(t *testing.T, c Conn, want int) (dgrams [][]byte, from netip.AddrPort) {
	t.Helper()
	msgs := make([]Message, 8)
	for i := range msgs {
		msgs[i].Buf = make([]byte, RecvBufSize)
	}
	done := make(chan struct{})
	timer := time.AfterFunc(5*time.Second, func() {
		select {
		case <-done:
		default:
			_ = c.Close() // unblocks ReadBatch; the test then fails below
		}
	})
	defer timer.Stop()
	defer close(done)
	for len(dgrams) < want {
		n, err := c.ReadBatch(msgs)
		if err != nil {
			t.Fatalf("ReadBatch after %d of %d datagrams: %v", len(dgrams), want, err)
		}
		for _, m := range msgs[:n] {
			from = m.Addr
			seg := m.SegSize
			if seg == 0 {
				seg = m.N
			}
			for off := 0; off < m.N; off += seg {
				dgrams = append(dgrams, bytes.Clone(m.Buf[off:min(off+seg, m.N)]))
			}
		}
	}
	return dgrams, from
}

func TestWriteBatchShapes(t *testing.T) {
	a, b := listenLoopback(t), listenLoopback(t)
	if dp := a.Datapath(); dp != DatapathGSO && dp != DatapathMMsg {
		t.Fatalf("Datapath = %q", dp)
	}
	t.Logf("datapath %s", a.Datapath())
	mk := func(n int, fill byte) []byte { return bytes.Repeat([]byte{fill}, n) }
	parts := [][]byte{mk(1000, 1), mk(1000, 2), mk(1000, 3), mk(400, 4), mk(1200, 5)}
	contiguous := append(append(mk(500, 6), mk(500, 7)...), mk(100, 8)...)
	msgs := []Message{
		{Addr: b.LocalAddr(), Parts: parts},
		{Addr: b.LocalAddr(), Buf: contiguous, N: len(contiguous), SegSize: 500},
		{Addr: b.LocalAddr(), Buf: mk(64, 9), N: 64},
	}
	if err := a.WriteBatch(msgs); err != nil {
		t.Fatalf("WriteBatch: %v", err)
	}
	want := [][]byte{parts[0], parts[1], parts[2], parts[3], parts[4], mk(500, 6), mk(500, 7), mk(100, 8), mk(64, 9)}
	got, from := received(t, b, len(want))
	if from != a.LocalAddr() {
		t.Fatalf("from %s, want %s", from, a.LocalAddr())
	}
	if len(got) != len(want) {
		t.Fatalf("got %d datagrams, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("datagram %d: %d bytes of %d, want %d bytes of %d", i, len(got[i]), got[i][0], len(want[i]), want[i][0])
		}
	}
}

func TestLongTrainIsCut(t *testing.T) {
	a, b := listenLoopback(t), listenLoopback(t)
	parts := make([][]byte, 3*MaxSegments+5)
	for i := range parts {
		parts[i] = bytes.Repeat([]byte{byte(i)}, 1400)
	}
	if err := a.WriteBatch([]Message{{Addr: b.LocalAddr(), Parts: parts}}); err != nil {
		t.Fatalf("WriteBatch: %v", err)
	}
	got, _ := received(t, b, len(parts))
	for i := range parts {
		if !bytes.Equal(got[i], parts[i]) {
			t.Fatalf("datagram %d differs", i)
		}
	}
}

// TestHeadsAndParts: datagrams made of a head and a part go out as trains
// (cut where the sum would pass MaxDatagram) and arrive joined.
func TestHeadsAndParts(t *testing.T) {
	a, b := listenLoopback(t), listenLoopback(t)
	const n = 2*MaxSegments + 3
	heads, parts := make([][]byte, n), make([][]byte, n)
	var want [][]byte
	for i := range n {
		heads[i] = bytes.Repeat([]byte{0xf0 | byte(i%16)}, 60)
		size := 1412
		if i == n-1 {
			size = 300 // the last one is shorter
		}
		parts[i] = bytes.Repeat([]byte{byte(i)}, size)
		want = append(want, append(bytes.Clone(heads[i]), parts[i]...))
	}
	if err := a.WriteBatch([]Message{{Addr: b.LocalAddr(), Heads: heads, Parts: parts}}); err != nil {
		t.Fatalf("WriteBatch: %v", err)
	}
	got, _ := received(t, b, n)
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("datagram %d: %d bytes, want %d", i, len(got[i]), len(want[i]))
		}
	}
}

func TestClosed(t *testing.T) {
	a := listenLoopback(t)
	_ = a.Close()
	if _, err := a.ReadBatch([]Message{{Buf: make([]byte, 10)}}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ReadBatch after Close = %v, want net.ErrClosed", err)
	}
	if err := a.WriteBatch([]Message{{Addr: a.LocalAddr(), Buf: []byte{1}, N: 1}}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("WriteBatch after Close = %v, want net.ErrClosed", err)
	}
}

func TestWriteAndReadDoNotAllocate(t *testing.T) {
	a, b := listenLoopback(t), listenLoopback(t)
	parts := [][]byte{make([]byte, 1000), make([]byte, 1000)}
	out := []Message{{Addr: b.LocalAddr(), Parts: parts}}
	in := []Message{{Buf: make([]byte, RecvBufSize)}, {Buf: make([]byte, RecvBufSize)}}
	allocs := testing.AllocsPerRun(50, func() {
		if err := a.WriteBatch(out); err != nil {
			t.Fatal(err)
		}
		if _, err := b.ReadBatch(in); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per write+read", allocs)
	}
}
