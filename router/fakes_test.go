package router

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/router/gso"
	"github.com/weftnet/weft/router/udp"
	"github.com/weftnet/weft/router/wire"
)

// fakeTUN is an in-memory tun.Device: tests inject packets the "kernel"
// sends with inject and see what the router wrote on written. With
// offloads (the default) it passes offload metadata both ways, like the
// Linux offload device; without, it refuses metadata like water.
type fakeTUN struct {
	in       chan tunPacket
	written  chan tunPacket
	mtu      int
	offloads bool
	once     sync.Once
	closed   chan struct{}
}

// tunPacket is a packet crossing the fake TUN with its offload metadata.
type tunPacket struct {
	data []byte
	o    gso.Offload
}

func newFakeTUN(mtu int) *fakeTUN {
	return &fakeTUN{in: make(chan tunPacket, 1024), written: make(chan tunPacket, 1024), mtu: mtu, offloads: true, closed: make(chan struct{})}
}

func (f *fakeTUN) inject(pkt []byte) { f.in <- tunPacket{data: pkt} }

// injectOffload hands the router a packet with metadata, e.g. a super-packet.
func (f *fakeTUN) injectOffload(pkt []byte, o gso.Offload) { f.in <- tunPacket{data: pkt, o: o} }

func (f *fakeTUN) Read(buf []byte, offset int) ([]byte, gso.Offload, error) {
	select {
	case p := <-f.in:
		n := copy(buf[offset:], p.data)
		return buf[offset : offset+n], p.o, nil
	case <-f.closed:
		return nil, gso.Offload{}, os.ErrClosed
	}
}

func (f *fakeTUN) Write(vec [][]byte, o gso.Offload) error {
	if !f.offloads && o != (gso.Offload{}) {
		return errors.New("fake tun: offload metadata on a device without offloads")
	}
	var b []byte
	for _, v := range vec {
		b = append(b, v...)
	}
	f.written <- tunPacket{data: b, o: o}
	return nil
}

func (f *fakeTUN) Offloads() bool { return f.offloads }
func (f *fakeTUN) MTU() int       { return f.mtu }
func (f *fakeTUN) Name() string   { return "fake-tun" }
func (f *fakeTUN) Close() error {
	f.once.Do(func() { close(f.closed) })
	return nil
}

// expectWritten returns the next packet the router wrote to f, failing the
// test when none comes within the deadline.
func (f *fakeTUN) expectWritten(t *testing.T) []byte {
	t.Helper()
	return f.expectWrittenOffload(t).data
}

// expectWrittenOffload is expectWritten with the packet's metadata.
func (f *fakeTUN) expectWrittenOffload(t *testing.T) tunPacket {
	t.Helper()
	select {
	case p := <-f.written:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("no packet written to the TUN within 5s")
		return tunPacket{}
	}
}

func (f *fakeTUN) expectNothingWritten(t *testing.T) {
	t.Helper()
	select {
	case p := <-f.written:
		t.Fatalf("unexpected packet written to the TUN: % x", p.data)
	default:
	}
}

// datagram is one datagram in flight on the fake network.
type datagram struct {
	from netip.AddrPort
	data []byte
}

// fakeNet connects fakeConns by address, like nebula's in-memory harness.
type fakeNet struct {
	mu    sync.Mutex
	conns map[netip.AddrPort]*fakeConn
}

func (n *fakeNet) listen(addr netip.AddrPort) *fakeConn {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conns == nil {
		n.conns = map[netip.AddrPort]*fakeConn{}
	}
	c := &fakeConn{net: n, local: addr, in: make(chan datagram, 1024), closed: make(chan struct{})}
	n.conns[addr] = c
	return c
}

// fakeConn is an in-memory udp.Conn. It records what was sent as sent
// (messages as the router built them) when record is set.
type fakeConn struct {
	net    *fakeNet
	local  netip.AddrPort
	in     chan datagram
	once   sync.Once
	closed chan struct{}

	mu     sync.Mutex
	record bool
	sent   []udp.Message
}

// deliver queues a datagram for c as if it came from 'from'.
func (c *fakeConn) deliver(from netip.AddrPort, data []byte) {
	c.in <- datagram{from: from, data: bytes.Clone(data)}
}

func (c *fakeConn) ReadBatch(msgs []udp.Message) (int, error) {
	var d datagram
	select {
	case d = <-c.in:
	case <-c.closed:
		return 0, net.ErrClosed
	}
	n := 0
	for {
		msgs[n].N = copy(msgs[n].Buf, d.data)
		msgs[n].Addr = d.from
		msgs[n].SegSize = 0
		n++
		if n == len(msgs) {
			return n, nil
		}
		select {
		case d = <-c.in:
		default:
			return n, nil
		}
	}
}

func (c *fakeConn) WriteBatch(msgs []udp.Message) error {
	select {
	case <-c.closed:
		return net.ErrClosed
	default:
	}
	if c.record {
		c.mu.Lock()
		for _, m := range msgs {
			cp := udp.Message{Addr: m.Addr, N: m.N, Buf: bytes.Clone(m.Buf), SegSize: m.SegSize}
			for i := range m.Parts {
				cp.Parts = append(cp.Parts, m.AppendDatagram(nil, i))
			}
			c.sent = append(c.sent, cp)
		}
		c.mu.Unlock()
	}
	if c.net == nil {
		return nil
	}
	for _, m := range msgs {
		c.net.mu.Lock()
		dst := c.net.conns[m.Addr]
		c.net.mu.Unlock()
		if dst == nil {
			continue // like UDP: nobody listening, silently gone
		}
		if m.Parts != nil {
			for i := range m.Parts {
				dst.deliver(c.local, m.AppendDatagram(nil, i))
			}
			continue
		}
		dst.deliver(c.local, m.Buf[:m.N])
	}
	return nil
}

func (c *fakeConn) LocalAddr() netip.AddrPort { return c.local }
func (c *fakeConn) Datapath() string          { return "fake-udp" }
func (c *fakeConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

func (c *fakeConn) takeSent() []udp.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sent
	c.sent = nil
	return s
}

// staticRoutes is a fixed table: a slice scan allocates nothing.
type staticRoutes struct {
	self  string
	local []netip.Prefix
	peers []routeEntry
}

type routeEntry struct {
	prefix netip.Prefix
	name   string
	ep     netip.AddrPort
}

func (s *staticRoutes) Lookup(dst netip.Addr) (string, netip.AddrPort, bool) {
	for _, e := range s.peers {
		if e.prefix.Contains(dst) {
			return e.name, e.ep, true
		}
	}
	return "", netip.AddrPort{}, false
}

func (s *staticRoutes) IsLocal(dst netip.Addr) bool {
	for _, p := range s.local {
		if p.Contains(dst) {
			return true
		}
	}
	return false
}

func (s *staticRoutes) Owner(addr netip.Addr) (string, bool) {
	if s.IsLocal(addr) {
		return s.self, true
	}
	name, _, ok := s.Lookup(addr)
	return name, ok
}

func (s *staticRoutes) PeerAt(src netip.AddrPort) (string, bool) {
	for _, e := range s.peers {
		if e.ep == src {
			return e.name, true
		}
	}
	return "", false
}

// xorCrypto is a stand-in for router/crypto that exercises the framing
// contract: header and counter in the headroom, a 16-byte "tag" in the
// tailroom. It is not encryption.
type xorCrypto struct {
	mu         sync.Mutex
	counter    uint64
	noSession  map[string]bool
	handshakes [][]byte
	sender     string // the peer name Open reports; the session knows it
}

func (x *xorCrypto) Overhead() int { return wire.CounterLen + wire.TagLen }

func (x *xorCrypto) Seal(peer string, msg []byte, plainLen int) (int, error) {
	if x.noSession[peer] {
		return 0, errors.New("no session")
	}
	n := wire.EncryptedHeaderLen + plainLen + wire.TagLen
	if cap(msg) < n {
		return 0, errors.New("short buffer")
	}
	msg = msg[:n]
	x.counter++
	wire.PutEncrypted(msg, 7, x.counter, msg[2])
	for i := wire.EncryptedHeaderLen; i < n-wire.TagLen; i++ {
		msg[i] ^= 0x5a
	}
	for i := n - wire.TagLen; i < n; i++ {
		msg[i] = 0xee
	}
	return n, nil
}

func (x *xorCrypto) Open(from netip.AddrPort, msg []byte) ([]byte, string, error) {
	if _, err := wire.DecodeEncrypted(msg); err != nil {
		return nil, "", err
	}
	tag := msg[len(msg)-wire.TagLen:]
	for _, b := range tag {
		if b != 0xee {
			return nil, "", errors.New("bad tag")
		}
	}
	plain := msg[wire.EncryptedHeaderLen : len(msg)-wire.TagLen]
	for i := range plain {
		plain[i] ^= 0x5a
	}
	if x.sender == "" {
		return plain, "peer-from-session", nil
	}
	return plain, x.sender, nil
}

func (x *xorCrypto) HandleHandshake(from netip.AddrPort, msg []byte) {
	x.mu.Lock()
	x.handshakes = append(x.handshakes, bytes.Clone(msg))
	x.mu.Unlock()
}

// mkIPv4 builds an IPv4/UDP packet with payloadLen bytes of payload; df sets
// the Don't Fragment bit.
func mkIPv4(src, dst string, payloadLen int, df bool) []byte {
	p := make([]byte, 28+payloadLen)
	putIPv4(p, 17, src, dst, df)
	binary.BigEndian.PutUint16(p[20:22], 40000)
	binary.BigEndian.PutUint16(p[22:24], 7)
	binary.BigEndian.PutUint16(p[24:26], uint16(8+payloadLen))
	for i := 28; i < len(p); i++ {
		p[i] = byte(i)
	}
	return p
}

// putIPv4 writes a 20-byte IPv4 header for the whole of p.
func putIPv4(p []byte, proto byte, src, dst string, df bool) {
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:6], 0x1234)
	if df {
		p[6] = 0x40
	}
	p[8] = 64
	p[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	binary.BigEndian.PutUint16(p[10:12], checksum(p[:20], 0))
}

// mkTCP builds a TCP/IPv4 packet (ACK, PSH) with payloadLen bytes of
// payload starting at sequence number seq; with partial, its checksum field
// holds the pseudo-header sum, as the kernel leaves it for offload.
func mkTCP(src, dst string, seq uint32, payloadLen int, partial bool) []byte {
	p := make([]byte, 40+payloadLen)
	putIPv4(p, 6, src, dst, true)
	tcp := p[20:]
	binary.BigEndian.PutUint16(tcp[0:2], 40000)
	binary.BigEndian.PutUint16(tcp[2:4], 5201)
	binary.BigEndian.PutUint32(tcp[4:8], seq)
	binary.BigEndian.PutUint32(tcp[8:12], 77)
	tcp[12] = 5 << 4
	tcp[13] = 0x18 // ACK, PSH
	binary.BigEndian.PutUint16(tcp[14:16], 512)
	for i := 20; i < len(tcp); i++ {
		tcp[i] = byte(i * 7)
	}
	pseudo := gso.Sum(p[12:20], uint64(6+len(tcp)))
	if partial {
		binary.BigEndian.PutUint16(tcp[16:18], gso.Fold(pseudo))
	} else {
		binary.BigEndian.PutUint16(tcp[16:18], ^gso.Fold(gso.Sum(tcp, pseudo)))
	}
	return p
}

// tcpChecksumOK verifies the TCP checksum of an IPv4 packet without options.
func tcpChecksumOK(p []byte) bool {
	tcp := p[20:]
	return gso.Fold(gso.Sum(tcp, gso.Sum(p[12:20], uint64(6+len(tcp))))) == 0xffff
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
