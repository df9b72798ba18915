package router

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/router/gso"
	"github.com/weftnet/weft/router/tun/tuntest"
	"github.com/weftnet/weft/router/udp"
	"github.com/weftnet/weft/router/udp/udptest"
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
	r := &staticRoutes{self: self}
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
	tun  *tuntest.Device
	conn *udptest.Conn
}

func newHost(t *testing.T, n *udptest.Network, name string, ep netip.AddrPort, c Crypto) *testHost {
	t.Helper()
	conn, err := n.Listen(ep)
	if err != nil {
		t.Fatal(err)
	}
	h := &testHost{tun: tuntest.New(1464), conn: conn}
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
			var n udptest.Network
			a := newHost(t, &n, "a", epA, tc.crypto("b"))
			b := newHost(t, &n, "b", epB, tc.crypto("a"))
			a.run(t)
			b.run(t)

			ping := mkIPv4("10.40.1.5", "10.40.2.7", 100, true)
			a.tun.Inject(bytes.Clone(ping))
			if got := b.tun.ExpectWritten(t).Data; !bytes.Equal(got, ping) {
				t.Fatalf("b got % x\nwant % x", got, ping)
			}
			pong := mkIPv4("10.40.2.7", "10.40.1.5", 1372, true) // exactly the MTU
			b.tun.Inject(bytes.Clone(pong))
			if got := a.tun.ExpectWritten(t).Data; !bytes.Equal(got, pong) {
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
func newDirect(t testing.TB, self string, c Crypto) (*Router, *tuntest.Device, *udptest.Conn) {
	t.Helper()
	ft := tuntest.New(1464)
	fc := udptest.NewConn(epA)
	fc.Record()
	r, err := New(Config{TUN: ft, Conn: fc, Routes: routesFor(self), Crypto: c, MTU: 1400, LocalID: 0xa})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r, ft, fc
}

// forwardPkts passes pkts through the outbound path as if read from the TUN.
func forwardPkts(t testing.TB, r *Router, pkts ...[]byte) {
	t.Helper()
	for _, p := range pkts {
		forwardOffload(t, r, p, gso.Offload{})
	}
}

func forwardOffload(t testing.TB, r *Router, p []byte, o gso.Offload) {
	t.Helper()
	n := copy(r.tx.buf[r.tx.off:], p)
	if err := r.tx.forward(r.tx.buf[r.tx.off:r.tx.off+n], o); err != nil {
		t.Fatal(err)
	}
}

func TestSendOneDatagramPerPacket(t *testing.T) {
	r, _, fc := newDirect(t, "a", nil)
	toB := mkIPv4("10.40.1.5", "10.40.2.7", 1000, true)
	toC := mkIPv4("10.40.1.5", "10.40.3.7", 1000, true)
	forwardPkts(t, r, toB, toC)
	sent := fc.TakeSent()
	if len(sent) != 2 || sent[0].Addr != epB || sent[1].Addr != epC || len(sent[0].Parts) != 1 {
		t.Fatalf("sent = %+v", sent)
	}
	h, inner, err := wire.DecodeData(sent[0].Parts[0])
	if err != nil || h.Index != 0xa || h.Flags != 0 || !bytes.Equal(inner, toB) {
		t.Fatalf("datagram: header %+v err %v inner % x", h, err, inner)
	}
}

// TestSuperPacketCutAndJoined sends a TCP super-packet through the outbound
// path of one router and the segments through the inbound path of another:
// the segments must be what the sender's kernel would have sent, and the
// receiver must join them back into the same super-packet.
func TestSuperPacketCutAndJoined(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    func() Crypto
	}{{"plaintext", func() Crypto { return nil }}, {"encrypted", func() Crypto { return &xorCrypto{sender: "a"} }}} {
		t.Run(tc.name, func(t *testing.T) {
			a, _, fc := newDirect(t, "a", tc.c())
			const mss = 1348
			super := mkTCP("10.40.1.5", "10.40.2.7", 1000, 10000, true)
			o := gso.Offload{GSO: gso.TCPv4, SegSize: mss, HdrLen: 40, NeedsCsum: true, CsumStart: 20, CsumOffset: 16}
			forwardOffload(t, a, super, o)
			sent := fc.TakeSent()
			if len(sent) != 1 || sent[0].Addr != epB || len(sent[0].Parts) != 8 {
				t.Fatalf("sent %d messages (%+v), want one of 8 datagrams", len(sent), sent)
			}
			var train []byte
			for i, d := range sent[0].Parts {
				train = append(train, d...)
				if tc.name != "plaintext" {
					continue
				}
				h, seg, err := wire.DecodeData(d)
				if err != nil || h.Flags != wire.FlagCsumPartial {
					t.Fatalf("segment %d: header %+v err %v", i, h, err)
				}
				want := min(mss, 10000-i*mss)
				if len(seg) != 40+want || int(binary.BigEndian.Uint16(seg[2:4])) != len(seg) || checksum(seg[:20], 0) != 0 {
					t.Fatalf("segment %d: %d bytes, ip header % x", i, len(seg), seg[:20])
				}
				if seq := binary.BigEndian.Uint32(seg[24:28]); seq != 1000+uint32(i*mss) {
					t.Fatalf("segment %d: seq %d", i, seq)
				}
				if psh := seg[33]&0x08 != 0; psh != (i == 7) {
					t.Fatalf("segment %d: PSH %v", i, psh)
				}
				if !bytes.Equal(seg[40:], super[40+i*mss:40+i*mss+want]) {
					t.Fatalf("segment %d: payload differs", i)
				}
			}

			b, bt, _ := newDirect(t, "b", tc.c())
			m := rxMsg(epA, train)
			m.SegSize = len(sent[0].Parts[0])
			if err := b.rx.receive([]udp.Message{m}, 1); err != nil {
				t.Fatal(err)
			}
			got := bt.ExpectWritten(t)
			bt.ExpectNothingWritten(t)
			wantO := gso.Offload{GSO: gso.TCPv4, SegSize: mss, HdrLen: 40, NeedsCsum: true, CsumStart: 20, CsumOffset: 16}
			if got.O != wantO || len(got.Data) != len(super) {
				t.Fatalf("written %d bytes with %+v, want %d with %+v", len(got.Data), got.O, len(super), wantO)
			}
			if err := gso.Complete(got.Data, got.O); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Data[40:], super[40:]) || !bytes.Equal(got.Data[:16], super[:16]) || checksum(got.Data[:20], 0) != 0 {
				t.Fatalf("joined packet differs:\n got % x\nwant % x", got.Data[:40], super[:40])
			}
			if !tcpChecksumOK(got.Data) {
				t.Fatal("joined packet's completed TCP checksum does not verify")
			}
			if s := b.Stats(); len(s) != 1 || s[0].RxPackets != 8 || s[0].RxBytes != uint64(len(super)+7*40) {
				t.Fatalf("receiver stats %+v", s)
			}
		})
	}
}

// TestPartialChecksumCompletedWithoutOffloads: a receiver whose TUN has no
// offloads computes the checksum the sender left partial.
func TestPartialChecksumCompletedWithoutOffloads(t *testing.T) {
	b, _, _ := newDirect(t, "b", nil)
	bt := tuntest.New(1464, tuntest.NoOffloads())
	b.tun = bt
	pkt := mkTCP("10.40.1.5", "10.40.2.7", 1, 100, true)
	d := make([]byte, wire.HeaderLen, wire.HeaderLen+len(pkt))
	wire.PutData(d, 1, wire.FlagCsumPartial)
	d = append(d, pkt...)
	if err := b.rx.receive([]udp.Message{rxMsg(epA, d)}, 1); err != nil {
		t.Fatal(err)
	}
	got := bt.ExpectWritten(t)
	if got.O != (gso.Offload{}) || !tcpChecksumOK(got.Data) {
		t.Fatalf("written with %+v, checksum ok %v", got.O, tcpChecksumOK(got.Data))
	}
	if d := b.Drops(); len(d) != 0 {
		t.Fatalf("drops %v", d)
	}
}

func TestSendDrops(t *testing.T) {
	r, ft, fc := newDirect(t, "a", nil)
	ipv6 := make([]byte, 40)
	ipv6[0] = 0x60
	bigNoDF := mkIPv4("10.40.1.5", "10.40.2.7", 1400, false)
	forwardPkts(t, r,
		ipv6, // not-ipv4
		mkIPv4("10.40.1.5", "10.40.9.1", 10, true),   // no-route
		mkIPv4("10.40.1.5", "10.40.1.77", 10, true),  // own-range
		mkIPv4("10.40.1.5", "10.40.2.7", 1400, true), // too-big
		bigNoDF, // too big but fragmentable: sent, the underlay fragments it
	)
	want := map[string]uint64{"not-ipv4": 1, "no-route": 1, "own-range": 1, "too-big": 1}
	if got := r.Drops(); !equalCounts(got, want) {
		t.Fatalf("drops = %v, want %v", got, want)
	}
	sent := fc.TakeSent()
	if len(sent) != 1 || len(sent[0].Parts) != 1 || len(sent[0].Parts[0]) != wire.HeaderLen+len(bigNoDF) {
		t.Fatalf("sent = %+v, want the one fragmentable packet", sent)
	}
	ft.ExpectWritten(t) // the ICMP error, checked in TestTooBigICMP
	ft.ExpectNothingWritten(t)
}

// Packets for a peer without a session wait for the handshake instead of
// being lost; what does not fit is dropped and counted for that peer.
func TestNoSessionWaitsForHandshake(t *testing.T) {
	c := &xorCrypto{noSession: map[string]bool{"b": true}}
	r, _, fc := newDirect(t, "a", c)
	first := mkIPv4("10.40.1.5", "10.40.2.7", 10, true)
	super := mkTCP("10.40.1.5", "10.40.2.7", 1, 5000, true)
	forwardPkts(t, r, first, mkIPv4("10.40.1.5", "10.40.3.7", 10, true))
	forwardOffload(t, r, super, gso.Offload{GSO: gso.TCPv4, SegSize: 1348, HdrLen: 40, NeedsCsum: true, CsumStart: 20, CsumOffset: 16})
	if got := r.Drops(); len(got) != 0 {
		t.Fatalf("drops = %v, want none: the packets wait", got)
	}
	sent := fc.TakeSent()
	if len(sent) != 1 || sent[0].Addr != epC {
		t.Fatalf("sent = %+v, want only the packet to c", sent)
	}

	c.sessionUp("b")
	if err := r.sessionUp("b"); err != nil {
		t.Fatal(err)
	}
	sent = fc.TakeSent()
	if len(sent) != 2 || sent[0].Addr != epB || len(sent[0].Parts) != 1 || len(sent[1].Parts) != 4 {
		t.Fatalf("after the handshake sent %+v, want the waiting packet then 4 segments", sent)
	}
	if l := len(sent[0].Parts[0]); l != wire.EncryptedHeaderLen+len(first)+wire.TagLen {
		t.Fatalf("sealed datagram is %d bytes", l)
	}
	if err := r.sessionUp("b"); err != nil { // nothing left
		t.Fatal(err)
	}
	if sent := fc.TakeSent(); len(sent) != 0 {
		t.Fatalf("a second sessionUp sent %+v", sent)
	}

	// A queue is bounded: beyond it packets are dropped and counted.
	c.mu.Lock()
	c.noSession["b"] = true
	c.mu.Unlock()
	big := mkIPv4("10.40.1.5", "10.40.2.7", 1300, false)
	for range waitMaxBytes/len(big) + 3 {
		forwardPkts(t, r, big)
	}
	stats := r.Stats()
	if len(stats) != 2 || stats[0].Peer != "b" || stats[0].Drops["no-session"] != 3 {
		t.Fatalf("stats = %+v, want 3 no-session drops for b", stats)
	}
}

func TestTooBigICMP(t *testing.T) {
	r, ft, _ := newDirect(t, "a", nil)
	orig := mkIPv4("10.40.1.5", "10.40.2.7", 1500, true)
	forwardPkts(t, r, orig)
	icmp := ft.ExpectWritten(t).Data
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
	forwardPkts(t, r, icmpErr)
	ft.ExpectNothingWritten(t)
}

// rxMsg makes a received message from 'from' holding data.
func rxMsg(from netip.AddrPort, data []byte) udp.Message {
	buf := make([]byte, udp.RecvBufSize)
	return udp.Message{Buf: buf, N: copy(buf, data), Addr: from}
}

func dataMsg(pkt []byte) []byte {
	d := make([]byte, wire.HeaderLen+len(pkt))
	wire.PutData(d, 2, 0)
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
		rxMsg(epA, dataMsg(mkIPv4("10.40.3.5", "10.40.2.7", 50, true))), // spoofed-source: c's address from a
		rxMsg(epA, dataMsg(mkIPv4("10.40.2.5", "10.40.2.7", 50, true))), // spoofed-source: b's own address from a
		rxMsg(epA, append([]byte{1, 3, 0, 0, 0, 0, 0, 0}, "hs"...)),     // handshake without crypto: bad-header
		{Buf: make([]byte, 10), N: 0, Addr: epA},                        // truncated
	}
	if err := r.rx.receive(msgs, 1); err != nil {
		t.Fatal(err)
	}
	if got := ft.ExpectWritten(t).Data; !bytes.Equal(got, good) {
		t.Fatalf("written % x", got)
	}
	ft.ExpectNothingWritten(t)
	// A source outside the ring (a client outside the cluster) passes.
	outside := mkIPv4("192.0.2.77", "10.40.2.7", 50, true)
	if err := r.rx.receive([]udp.Message{rxMsg(epA, dataMsg(outside))}, 1); err != nil {
		t.Fatal(err)
	}
	if got := ft.ExpectWritten(t).Data; !bytes.Equal(got, outside) {
		t.Fatalf("written % x, want the packet from outside the ring", got)
	}
	want := map[string]uint64{"unknown-peer": 1, "bad-header": 3, "not-local": 1, "bad-packet": 1, "truncated": 1, "spoofed-source": 2}
	if got := r.Drops(); !equalCounts(got, want) {
		t.Fatalf("drops = %v, want %v", got, want)
	}
	s := r.Stats()
	if len(s) != 1 || s[0].Peer != "a" || s[0].RxPackets != 2 || s[0].Drops["not-local"] != 1 || s[0].Drops["bad-header"] != 3 || s[0].Drops["spoofed-source"] != 2 {
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
		if got := ft.ExpectWritten(t).Data; !bytes.Equal(got, want) {
			t.Fatalf("packet %d = % x, want % x", i, got, want)
		}
	}
}

func TestReceiveWithCrypto(t *testing.T) {
	c := &xorCrypto{sender: "a"}
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
	if got := ft.ExpectWritten(t).Data; !bytes.Equal(got, good) {
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
	_, err := New(Config{TUN: tuntest.New(100), Conn: udptest.NewConn(epA), Routes: routesFor("a")})
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

// A packet that waited for a session goes out when Crypto signals the
// session, from the router's own flush goroutine: nothing but the signal
// passes from Crypto to the router.
func TestWaitingPacketsSentOnSessionSignal(t *testing.T) {
	var n udptest.Network
	ca := &xorCrypto{sender: "b", noSession: map[string]bool{"b": true}}
	a := newHost(t, &n, "a", epA, ca)
	b := newHost(t, &n, "b", epB, &xorCrypto{sender: "a"})
	a.run(t)
	b.run(t)
	ping := mkIPv4("10.40.1.5", "10.40.2.7", 100, true)
	a.tun.Inject(bytes.Clone(ping))
	waitFor(t, "the packet to wait", func() bool {
		a.r.waiting.mu.Lock()
		defer a.r.waiting.mu.Unlock()
		return a.r.waiting.peers["b"] != nil
	})
	b.tun.ExpectNothingWritten(t)
	ca.sessionUp("b")
	if got := b.tun.ExpectWritten(t).Data; !bytes.Equal(got, ping) {
		t.Fatalf("b got % x\nwant % x", got, ping)
	}
	if d := a.r.Drops(); len(d) != 0 {
		t.Fatalf("a drops = %v", d)
	}
}

// The race the recheck closes: Seal fails just before the session comes up,
// the flush finds nothing waiting, and the packet is queued just after. The
// tx path notices the recent flush and has the flush goroutine look again.
func TestPacketQueuedJustAfterFlushIsSent(t *testing.T) {
	var n udptest.Network
	ca := &xorCrypto{sender: "b", noSession: map[string]bool{"b": true}}
	a := newHost(t, &n, "a", epA, ca)
	b := newHost(t, &n, "b", epB, &xorCrypto{sender: "a"})
	a.run(t)
	b.run(t)
	ca.sessionUp("b")
	waitFor(t, "the flush on the signal", func() bool {
		a.r.waiting.mu.Lock()
		defer a.r.waiting.mu.Unlock()
		_, ok := a.r.waiting.upAt["b"]
		return ok
	})
	ca.mu.Lock()
	ca.failNext = map[string]int{"b": 1} // the Seal that lost the race
	ca.mu.Unlock()
	ping := mkIPv4("10.40.1.5", "10.40.2.7", 100, true)
	a.tun.Inject(bytes.Clone(ping))
	if got := b.tun.ExpectWritten(t).Data; !bytes.Equal(got, ping) {
		t.Fatalf("b got % x\nwant % x", got, ping)
	}
	if d := a.r.Drops(); len(d) != 0 {
		t.Fatalf("a drops = %v", d)
	}
}
