package router

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/router/udp"
	"github.com/weftnet/weft/router/wire"
)

// discardTUN swallows writes; reads are driven by the benchmark itself.
type discardTUN struct{ fakeTUN }

func (d *discardTUN) Write(bufs [][]byte, offset int) (int, error) { return len(bufs), nil }

// tagOnlyCrypto writes the encrypted framing but leaves the plaintext alone,
// so a benchmark can reseal the same batch; it measures framing, not AEAD.
type tagOnlyCrypto struct{}

func (tagOnlyCrypto) Overhead() int { return wire.CounterLen + wire.TagLen }
func (tagOnlyCrypto) Seal(peer string, msg []byte, plainLen int) (int, error) {
	n := wire.EncryptedHeaderLen + plainLen + wire.TagLen
	wire.PutEncrypted(msg[:n], 1, 1)
	return n, nil
}
func (tagOnlyCrypto) Open(netip.AddrPort, []byte) ([]byte, string, error) {
	return nil, "", errors.New("not for opening")
}
func (tagOnlyCrypto) HandleHandshake(netip.AddrPort, []byte) {}

func newBenchRouter(b *testing.B, self string, c Crypto) *Router {
	b.Helper()
	ft := &discardTUN{fakeTUN: *newFakeTUN(64, 1464)}
	r, err := New(Config{TUN: ft, Conn: &fakeConn{local: epA, closed: make(chan struct{})}, Routes: routesFor(self), Crypto: c, MTU: 1464})
	if err != nil {
		b.Fatal(err)
	}
	return r
}

// BenchmarkForward measures the outbound path without I/O: 64 packets of
// 1464 bytes per batch (one TSO super-packet's worth) framed into trains.
// It must not allocate.
func BenchmarkForward(b *testing.B) {
	for _, tc := range []struct {
		name string
		c    Crypto
	}{{"plaintext", nil}, {"sealed-framing", tagOnlyCrypto{}}} {
		b.Run(tc.name, func(b *testing.B) {
			r := newBenchRouter(b, "a", tc.c)
			pkt := mkIPv4("10.40.1.5", "10.40.2.7", 1464-28, true)
			pkts := make([][]byte, 64)
			for i := range pkts {
				pkts[i] = pkt
			}
			n := readInto(r, pkts...)
			b.SetBytes(int64(n * len(pkt)))
			b.ReportAllocs()
			for b.Loop() {
				if err := r.tx.forward(n); err != nil {
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
// 44 datagrams split, checked and queued for the TUN. It must not allocate.
func BenchmarkReceive(b *testing.B) {
	r := newBenchRouter(b, "b", nil)
	pkt := dataMsg(mkIPv4("10.40.1.5", "10.40.2.7", 1464-28, true))
	var train []byte
	for range 44 {
		train = append(train, pkt...)
	}
	msgs := []udp.Message{rxMsg(epA, train)}
	msgs[0].SegSize = len(pkt)
	b.SetBytes(int64(len(train)))
	b.ReportAllocs()
	for b.Loop() {
		if err := r.rx.receive(msgs, 1); err != nil {
			b.Fatal(err)
		}
	}
	if d := r.Drops(); len(d) != 0 {
		b.Fatalf("drops %v", d)
	}
}

func TestHotPathsDoNotAllocate(t *testing.T) {
	r, _, fc := newDirect(t, "a", nil)
	fc.record = false
	pkt := mkIPv4("10.40.1.5", "10.40.2.7", 1000, true)
	n := readInto(r, pkt, pkt, pkt, mkIPv4("10.40.1.5", "10.40.9.9", 10, true))
	if a := testing.AllocsPerRun(100, func() { _ = r.tx.forward(n) }); a != 0 {
		t.Fatalf("forward allocates %v per batch", a)
	}
	rb, _, _ := newDirect(t, "b", nil)
	rb.tun = &discardTUN{}
	msgs := []udp.Message{rxMsg(epA, dataMsg(pkt)), rxMsg(netip.MustParseAddrPort("192.0.2.1:1"), dataMsg(pkt))}
	if a := testing.AllocsPerRun(100, func() { _ = rb.rx.receive(msgs, 1) }); a != 0 {
		t.Fatalf("receive allocates %v per batch", a)
	}
}
