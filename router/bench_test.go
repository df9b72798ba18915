package router

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/router/gso"
	"github.com/weftnet/weft/router/lookup"
	"github.com/weftnet/weft/router/tun/tuntest"
	"github.com/weftnet/weft/router/udp"
	"github.com/weftnet/weft/router/udp/udptest"
	"github.com/weftnet/weft/router/wire"
)

// discardTUN swallows writes; reads are driven by the benchmark itself.
type discardTUN struct{ *tuntest.Device }

func (d *discardTUN) Write([][]byte, gso.Offload) error { return nil }

// tagOnlyCrypto writes the encrypted framing but leaves the plaintext alone,
// so a benchmark can reseal the same batch; it measures framing, not AEAD.
type tagOnlyCrypto struct{}

func (tagOnlyCrypto) Overhead() int { return wire.CounterLen + wire.TagLen }
func (tagOnlyCrypto) Seal(peer string, msg []byte, plainLen int) (int, error) {
	n := wire.EncryptedHeaderLen + plainLen + wire.TagLen
	wire.PutEncrypted(msg[:n], 1, 1, msg[2])
	return n, nil
}
func (tagOnlyCrypto) Open(netip.AddrPort, wire.Header, []byte) ([]byte, string, error) {
	return nil, "", errors.New("not for opening")
}
func (tagOnlyCrypto) HandleHandshake(netip.AddrPort, []byte) {}
func (tagOnlyCrypto) SessionsUp() <-chan struct{}            { return nil }
func (tagOnlyCrypto) TakeSessionsUp(dst []string) []string   { return dst }

func newBenchRouter(b *testing.B, self string, c Crypto) *Router {
	b.Helper()
	ft := &discardTUN{tuntest.New(1464)}
	r, err := New(Config{TUN: ft, Conn: udptest.NewConn(epA), Routes: routesFor(self), Crypto: c, MTU: 1464})
	if err != nil {
		b.Fatal(err)
	}
	return r
}

// BenchmarkForward measures the outbound path without I/O: one 64 KiB TCP
// super-packet cut into 47 segments and framed. It must not allocate.
func BenchmarkForward(b *testing.B) {
	for _, tc := range []struct {
		name string
		c    Crypto
	}{{"plaintext", nil}, {"sealed-framing", tagOnlyCrypto{}}} {
		b.Run(tc.name, func(b *testing.B) {
			r := newBenchRouter(b, "a", tc.c)
			super := mkTCP("10.40.1.5", "10.40.2.7", 1, 65535-40, true)
			o := gso.Offload{GSO: gso.TCPv4, SegSize: 1400, HdrLen: 40, NeedsCsum: true, CsumStart: 20, CsumOffset: 16}
			n := copy(r.tx.buf[r.tx.off:], super)
			pkt := r.tx.buf[r.tx.off : r.tx.off+n]
			b.SetBytes(int64(len(super)))
			b.ReportAllocs()
			for b.Loop() {
				if err := r.tx.forward(pkt, o); err != nil {
					b.Fatal(err)
				}
			}
			if d := r.Drops(); len(d) != 0 {
				b.Fatalf("drops %v", d)
			}
		})
	}
}

// BenchmarkReceive measures the inbound path without I/O: one GRO train of
// 44 segments of a TCP flow checked and joined into one TUN write. It must
// not allocate.
func BenchmarkReceive(b *testing.B) {
	r := newBenchRouter(b, "b", nil)
	var train []byte
	var seg int
	for i := range 44 {
		d := make([]byte, wire.HeaderLen, 1500)
		wire.PutData(d, 1, wire.FlagCsumPartial)
		d = append(d, mkTCP("10.40.1.5", "10.40.2.7", uint32(1+i*1400), 1400, true)...)
		d[wire.HeaderLen+33] = 0x10 // ACK only: PSH would end the run
		seg = len(d)
		train = append(train, d...)
	}
	msgs := []udp.Message{rxMsg(epA, train)}
	msgs[0].SegSize = seg
	b.SetBytes(int64(len(train)))
	b.ReportAllocs()
	for b.Loop() {
		// Joining rewrites the first segment's headers in the receive
		// buffer, as the kernel would refill it: restore it, untimed.
		b.StopTimer()
		copy(msgs[0].Buf, train)
		b.StartTimer()
		if err := r.rx.receive(msgs, 1); err != nil {
			b.Fatal(err)
		}
	}
	if d := r.Drops(); len(d) != 0 {
		b.Fatalf("drops %v", d)
	}
}

func TestHotPathsDoNotAllocate(t *testing.T) {
	r, _, _ := newDirect(t, "a", nil)
	r.conn = udptest.NewConn(epA) // not recording: recording copies
	super := mkTCP("10.40.1.5", "10.40.2.7", 1, 20000, true)
	o := gso.Offload{GSO: gso.TCPv4, SegSize: 1348, HdrLen: 40, NeedsCsum: true, CsumStart: 20, CsumOffset: 16}
	n := copy(r.tx.buf[r.tx.off:], super)
	pkt := r.tx.buf[r.tx.off : r.tx.off+n]
	if a := testing.AllocsPerRun(100, func() { _ = r.tx.forward(pkt, o) }); a != 0 {
		t.Fatalf("forward allocates %v per super-packet", a)
	}
	rb, _, _ := newDirect(t, "b", nil)
	rb.tun = &discardTUN{tuntest.New(1464)}
	one := mkIPv4("10.40.1.5", "10.40.2.7", 1000, true)
	msgs := []udp.Message{rxMsg(epA, dataMsg(one)), rxMsg(epA, dataMsg(one)), rxMsg(netip.MustParseAddrPort("192.0.2.1:1"), dataMsg(one))}
	if a := testing.AllocsPerRun(100, func() { _ = rb.rx.receive(msgs, 1) }); a != 0 {
		t.Fatalf("receive allocates %v per batch", a)
	}
}

// tableRoutes serves the router's per-packet question from the lookup
// table the agent builds.
type tableRoutes struct{ *lookup.Table }

func (tableRoutes) PeerAt(netip.AddrPort) (string, bool) { return "", false }

// BenchmarkLookup4000 is the router's per-packet routing question (issue
// 21) as the forwarding path asks it, through its Routes interface: a mesh
// of 1,000 peers whose ring has 4,000 ranges over the default /12, each peer
// owning four ranges spread over the ring. Goal: <= 50 ns, 0 allocations.
// The lookup structure itself is measured in router/lookup.
func BenchmarkLookup4000(b *testing.B) {
	const ranges, peers, size = 4000, 1000, 1 << 20
	prefix := netip.MustParsePrefix("10.32.0.0/12")
	spans := make([]lookup.Span, ranges)
	for i := range spans {
		spans[i] = lookup.Span{Start: uint64(i) * size / ranges, End: uint64(i+1) * size / ranges,
			Owner: fmt.Sprintf("host%04d", (i*7)%peers+1)}
	}
	tbl, err := lookup.New(prefix, spans, "host0001", func(name string) (netip.AddrPort, bool) {
		return netip.MustParseAddrPort("198.18.0.2:6784"), true
	})
	if err != nil {
		b.Fatal(err)
	}
	var routes Routes = tableRoutes{tbl}
	addrs := make([]netip.Addr, 1024)
	for i := range addrs {
		off := uint32((uint64(i) * 2654435761) % size)
		addrs[i] = netip.AddrFrom4([4]byte{10, 32 | byte(off>>16), byte(off >> 8), byte(off)})
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if owner, _, _ := routes.Lookup(addrs[i&1023]); owner == "" {
			b.Fatal("address without owner")
		}
	}
}
