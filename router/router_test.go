package router

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/router/udp"
	"github.com/weftnet/weft/router/wire"
)

var (
	epA = netip.MustParseAddrPort("198.18.0.1:6784")
	epB = netip.MustParseAddrPort("198.18.0.2:6784")
	epC = netip.MustParseAddrPort("198.18.0.3:6784")
)

// routesFor gives host "a" (10.40.1.0/24) and "b" (10.40.2.0/24) views of
// a three-host ring; "c" owns 10.40.3.0/24.
func routesFor(self string) *staticRoutes {
	all := []routeEntry{
		{netip.MustParsePrefix("10.40.1.0/24"), "a", epA},
		{netip.MustParsePrefix("10.40.2.0/24"), "b", epB},
		{netip.MustParsePrefix("10.40.3.0/24"), "c", epC},
	}
	r := &staticRoutes{}
	for _, e := range all {
		if e.name == self {
			r.local = append(r.local, e.prefix)
			continue
		}
		r.peers = append(r.peers, e)
	}
	return r
}

type testHost struct {
	r    *Router
	tun  *fakeTUN
	conn *fakeConn
}

func newHost(t *testing.T, n *fakeNet, name string, ep netip.AddrPort, c Crypto) *testHost {
	t.Helper()
	h := &testHost{tun: newFakeTUN(8, 1464), conn: n.listen(ep)}
	r, err := New(Config{TUN: h.tun, Conn: h.conn, Routes: routesFor(name), Crypto: c, MTU: 1400})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.r = r
	return h
}

func (h *testHost) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func TestForwardBothWays(t *testing.T) {
	for _, tc := range []struct {
		name   string
		crypto func(sender string) Crypto
	}{
		{"plaintext", func(string) Crypto { return nil }},
		{"sealed", func(sender string) Crypto { return &xorCrypto{sender: sender} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var n fakeNet
			a := newHost(t, &n, "a", epA, tc.crypto("b"))
			b := newHost(t, &n, "b", epB, tc.crypto("a"))
			a.run(t)
			b.run(t)

			ping := mkIPv4("10.40.1.5", "10.40.2.7", 100, true)
			a.tun.inject(bytes.Clone(ping))
			if got := b.tun.expectWritten(t); !bytes.Equal(got, ping) {
				t.Fatalf("b got % x\nwant % x", got, ping)
			}
			pong := mkIPv4("10.40.2.7", "10.40.1.5", 1372, true) // exactly the MTU
			b.tun.inject(bytes.Clone(pong))
			if got := a.tun.expectWritten(t); !bytes.Equal(got, pong) {
				t.Fatalf("a got % x\nwant % x", got, pong)
			}
			waitFor(t, "stats", func() bool {
				s := a.r.Stats()
				return len(s) == 1 && s[0].TxPackets == 1 && s[0].RxPackets == 1
			})
			s := a.r.Stats()[0]
			if s.TxBytes != 128 || s.RxBytes != 1400 || s.LastHeard.IsZero() {
				t.Fatalf("a stats = %+v", s)
			}
			if d := a.r.Drops(); len(d) != 0 {
				t.Fatalf("a drops = %v", d)
			}
		})
	}
}

// newDirect builds a router whose paths tests drive directly (no Run).
func newDirect(t testing.TB, self string, c Crypto) (*Router, *fakeTUN, *fakeConn) {
	t.Helper()
	ft := newFakeTUN(16, 1464)
	fc := &fakeConn{local: epA, record: true, closed: make(chan struct{})}
	r, err := New(Config{TUN: ft, Conn: fc, Routes: routesFor(self), Crypto: c, MTU: 1400, LocalID: 0xa})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r, ft, fc
}

// readInto places pkts in the tx buffers as the TUN would.
func readInto(r *Router, pkts ...[]byte) int {
	for i, p := range pkts {
		r.tx.sizes[i] = copy(r.tx.bufs[i][r.tx.off:], p)
	}
	return len(pkts)
}

func TestSendGroupsTrainsPerPeer(t *testing.T) {
	r, _, fc := newDirect(t, "a", nil)
	toB := mkIPv4("10.40.1.5", "10.40.2.7", 1000, true)
	toC := mkIPv4("10.40.1.5", "10.40.3.7", 1000, true)
	short := mkIPv4("10.40.1.5", "10.40.2.9", 10, false)
	n := readInto(r, toB, toB, short, toC, toB)
	if err := r.tx.forward(n); err != nil {
		t.Fatal(err)
	}
	sent := fc.takeSent()
	want := []struct {
		ep    netip.AddrPort
		parts int
	}{{epB, 3}, {epC, 1}, {epB, 1}}
	if len(sent) != len(want) {
		t.Fatalf("sent %d messages, want %d: %+v", len(sent), len(want), sent)
	}
	for i, w := range want {
		if sent[i].Addr != w.ep || len(sent[i].Parts) != w.parts {
			t.Fatalf("message %d to %s with %d parts, want %s with %d", i, sent[i].Addr, len(sent[i].Parts), w.ep, w.parts)
		}
	}
	d := sent[0].Parts[2]
	h, inner, err := wire.DecodeData(d)
	if err != nil || h.Index != 0xa || !bytes.Equal(inner, short) {
		t.Fatalf("third datagram: header %+v err %v inner % x", h, err, inner)
	}
}

func TestSendDrops(t *testing.T) {
	r, ft, fc := newDirect(t, "a", nil)
	ipv6 := make([]byte, 40)
	ipv6[0] = 0x60
	bigNoDF := mkIPv4("10.40.1.5", "10.40.2.7", 1400, false)
	n := readInto(r,
		ipv6, // not-ipv4
		mkIPv4("10.40.1.5", "10.40.9.1", 10, true),   // no-route
		mkIPv4("10.40.1.5", "10.40.1.77", 10, true),  // own-range
		mkIPv4("10.40.1.5", "10.40.2.7", 1400, true), // too-big
		bigNoDF, // too big but fragmentable: sent, the underlay fragments it
	)
	if err := r.tx.forward(n); err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{"not-ipv4": 1, "no-route": 1, "own-range": 1, "too-big": 1}
	if got := r.Drops(); !equalCounts(got, want) {
		t.Fatalf("drops = %v, want %v", got, want)
	}
	sent := fc.takeSent()
	if len(sent) != 1 || len(sent[0].Parts) != 1 || len(sent[0].Parts[0]) != wire.HeaderLen+len(bigNoDF) {
		t.Fatalf("sent = %+v, want the one fragmentable packet", sent)
	}
	ft.expectWritten(t) // the ICMP error, checked in TestTooBigICMP
	ft.expectNothingWritten(t)
}

func TestSendNoSessionCountsPerPeer(t *testing.T) {
	c := &xorCrypto{noSession: map[string]bool{"b": true}}
	r, _, fc := newDirect(t, "a", c)
	n := readInto(r, mkIPv4("10.40.1.5", "10.40.2.7", 10, true), mkIPv4("10.40.1.5", "10.40.3.7", 10, true))
	if err := r.tx.forward(n); err != nil {
		t.Fatal(err)
	}
	if got := r.Drops(); !equalCounts(got, map[string]uint64{"no-session": 1}) {
		t.Fatalf("drops = %v", got)
	}
	stats := r.Stats()
	if len(stats) != 2 || stats[0].Peer != "b" || stats[0].Drops["no-session"] != 1 || stats[1].TxPackets != 1 {
		t.Fatalf("stats = %+v", stats)
	}
	sent := fc.takeSent()
	if len(sent) != 1 || sent[0].Addr != epC {
		t.Fatalf("sent = %+v", sent)
	}
	if l := len(sent[0].Parts[0]); l != wire.EncryptedHeaderLen+38+wire.TagLen {
		t.Fatalf("sealed datagram is %d bytes", l)
	}
}

func TestTooBigICMP(t *testing.T) {
	r, ft, _ := newDirect(t, "a", nil)
	orig := mkIPv4("10.40.1.5", "10.40.2.7", 1500, true)
	if err := r.tx.forward(readInto(r, orig)); err != nil {
		t.Fatal(err)
	}
	icmp := ft.expectWritten(t)
	if len(icmp) != 20+8+28 {
		t.Fatalf("icmp length %d, want 56: % x", len(icmp), icmp)
	}
	ip, msg := icmp[:20], icmp[20:]
	if ip[0] != 0x45 || ip[9] != 1 || binary.BigEndian.Uint16(ip[2:4]) != 56 || ip[8] != 64 {
		t.Fatalf("ip header % x", ip)
	}
	if checksum(ip, 0) != 0 {
		t.Fatalf("ip header checksum does not verify: % x", ip)
	}
	if !bytes.Equal(ip[12:16], orig[16:20]) || !bytes.Equal(ip[16:20], orig[12:16]) {
		t.Fatalf("addresses src % x dst % x, want reversed", ip[12:16], ip[16:20])
	}
	if msg[0] != 3 || msg[1] != 4 || binary.BigEndian.Uint16(msg[6:8]) != 1400 || msg[4] != 0 || msg[5] != 0 {
		t.Fatalf("icmp header % x", msg[:8])
	}
	if checksum(msg, 0) != 0 {
		t.Fatalf("icmp checksum does not verify: % x", msg)
	}
	if !bytes.Equal(msg[8:], orig[:28]) {
		t.Fatalf("quoted % x, want % x", msg[8:], orig[:28])
	}
	// No ICMP error about an ICMP error.
	icmpErr := bytes.Clone(orig)
	icmpErr[9] = 1
	icmpErr[20] = 3
	if err := r.tx.forward(readInto(r, icmpErr)); err != nil {
		t.Fatal(err)
	}
	ft.expectNothingWritten(t)
}

// rxMsg makes a received message from 'from' holding data.
func rxMsg(from netip.AddrPort, data []byte) udp.Message {
	buf := make([]byte, udp.RecvBufSize)
	return udp.Message{Buf: buf, N: copy(buf, data), Addr: from}
}

func dataMsg(pkt []byte) []byte {
	d := make([]byte, wire.HeaderLen+len(pkt))
	wire.PutData(d, 2)
	copy(d[wire.HeaderLen:], pkt)
	return d
}

func TestReceiveDrops(t *testing.T) {
	r, ft, _ := newDirect(t, "b", nil)
	good := mkIPv4("10.40.1.5", "10.40.2.7", 50, true)
	badVersion := dataMsg(good)
	badVersion[0] = 9
	truncatedInner := dataMsg(good[:30])
	msgs := []udp.Message{
		rxMsg(epA, dataMsg(good)), // accepted
		rxMsg(netip.MustParseAddrPort("192.0.2.1:6784"), dataMsg(good)), // unknown-peer
		rxMsg(epA, badVersion),      // bad-header
		rxMsg(epA, []byte{1, 1, 0}), // bad-header (short)
		rxMsg(epA, dataMsg(mkIPv4("10.40.1.5", "10.40.3.7", 50, true))), // not-local
		rxMsg(epA, truncatedInner),                                      // bad-packet
		rxMsg(epA, append([]byte{1, 3, 0, 0, 0, 0, 0, 0}, "hs"...)),     // handshake without crypto: bad-header
		{Buf: make([]byte, 10), N: 0, Addr: epA},                        // truncated
	}
	if err := r.rx.receive(msgs, 1); err != nil {
		t.Fatal(err)
	}
	if got := ft.expectWritten(t); !bytes.Equal(got, good) {
		t.Fatalf("written % x", got)
	}
	ft.expectNothingWritten(t)
	want := map[string]uint64{"unknown-peer": 1, "bad-header": 3, "not-local": 1, "bad-packet": 1, "truncated": 1}
	if got := r.Drops(); !equalCounts(got, want) {
		t.Fatalf("drops = %v, want %v", got, want)
	}
	s := r.Stats()
	if len(s) != 1 || s[0].Peer != "a" || s[0].RxPackets != 1 || s[0].Drops["not-local"] != 1 || s[0].Drops["bad-header"] != 3 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestReceiveSplitsGROTrain(t *testing.T) {
	r, ft, _ := newDirect(t, "b", nil)
	p1 := mkIPv4("10.40.1.5", "10.40.2.7", 100, true)
	p2 := mkIPv4("10.40.1.5", "10.40.2.8", 100, true)
	p3 := mkIPv4("10.40.1.5", "10.40.2.9", 20, true)
	var train []byte
	for _, p := range [][]byte{p1, p2, p3} {
		train = append(train, dataMsg(p)...)
	}
	m := rxMsg(epA, train)
	m.SegSize = wire.HeaderLen + len(p1)
	if err := r.rx.receive([]udp.Message{m}, 1); err != nil {
		t.Fatal(err)
	}
	for i, want := range [][]byte{p1, p2, p3} {
		if got := ft.expectWritten(t); !bytes.Equal(got, want) {
			t.Fatalf("packet %d = % x, want % x", i, got, want)
		}
	}
}

func TestReceiveWithCrypto(t *testing.T) {
	c := &xorCrypto{}
	r, ft, _ := newDirect(t, "b", c)
	good := mkIPv4("10.40.1.5", "10.40.2.7", 50, true)
	sealed := make([]byte, wire.EncryptedHeaderLen+len(good), wire.EncryptedHeaderLen+len(good)+wire.TagLen)
	copy(sealed[wire.EncryptedHeaderLen:], good)
	n, err := (&xorCrypto{}).Seal("b", sealed, len(good))
	if err != nil {
		t.Fatal(err)
	}
	keepalive := make([]byte, wire.EncryptedHeaderLen, wire.EncryptedHeaderLen+wire.TagLen)
	kn, err := (&xorCrypto{}).Seal("b", keepalive, 0)
	if err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Clone(sealed[:n])
	tampered[n-1] ^= 1
	hs := append([]byte{1, 3, 0, 0, 0, 0, 0, 0}, "hello"...)
	msgs := []udp.Message{
		rxMsg(epA, sealed[:n]),                            // accepted
		rxMsg(epA, keepalive[:kn]),                        // keepalive: no drop, nothing written
		rxMsg(epA, tampered),                              // decrypt
		rxMsg(epA, dataMsg(good)),                         // plaintext
		rxMsg(netip.MustParseAddrPort("192.0.2.9:1"), hs), // handshake from anywhere goes to crypto
	}
	if err := r.rx.receive(msgs, 1); err != nil {
		t.Fatal(err)
	}
	if got := ft.expectWritten(t); !bytes.Equal(got, good) {
		t.Fatalf("written % x", got)
	}
	if got := r.Drops(); !equalCounts(got, map[string]uint64{"decrypt": 1, "plaintext": 1}) {
		t.Fatalf("drops = %v", got)
	}
	if len(c.handshakes) != 1 || !bytes.Equal(c.handshakes[0], hs) {
		t.Fatalf("handshakes = %q", c.handshakes)
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("New without devices succeeded")
	}
	_, err := New(Config{TUN: newFakeTUN(1, 100), Conn: &fakeConn{}, Routes: routesFor("a")})
	if err == nil {
		t.Fatal("New with mtu 100 succeeded")
	}
	if Overhead(false) != 36 || Overhead(true) != 60 {
		t.Fatalf("Overhead = %d/%d", Overhead(false), Overhead(true))
	}
}

func TestRunStopsOnClosedDevice(t *testing.T) {
	r, ft, _ := newDirect(t, "a", nil)
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	_ = ft.Close()
	if err := <-done; err == nil || !isClosed(errors.Unwrap(err)) && !isClosed(err) {
		t.Fatalf("Run = %v, want a closed-device error", err)
	}
}

func equalCounts(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
