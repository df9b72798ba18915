package router

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/router/gso"
	"github.com/weftnet/weft/router/wire"
)

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

func (s *staticRoutes) Lookup(addr netip.Addr) (string, netip.AddrPort, bool) {
	for i := range s.local {
		if s.local[i].Contains(addr) {
			return s.self, netip.AddrPort{}, true
		}
	}
	for i := range s.peers {
		if e := &s.peers[i]; e.prefix.Contains(addr) {
			return e.name, e.ep, false
		}
	}
	return "", netip.AddrPort{}, false
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
	up         []string
	upCh       chan struct{}
	failNext   map[string]int // Seal fails this many more times for a peer
}

// sessionUp marks peer's session as established and signals the router.
func (x *xorCrypto) sessionUp(peer string) {
	ch := x.SessionsUp()
	x.mu.Lock()
	delete(x.noSession, peer)
	x.up = append(x.up, peer)
	x.mu.Unlock()
	select {
	case x.upCh <- struct{}{}:
	default:
	}
	_ = ch
}

func (x *xorCrypto) SessionsUp() <-chan struct{} {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.upCh == nil {
		x.upCh = make(chan struct{}, 1)
	}
	return x.upCh
}

func (x *xorCrypto) TakeSessionsUp(dst []string) []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	dst = append(dst, x.up...)
	x.up = nil
	return dst
}

func (x *xorCrypto) Overhead() int { return wire.CounterLen + wire.TagLen }

func (x *xorCrypto) Seal(peer string, msg []byte, plainLen int) (int, error) {
	x.mu.Lock()
	no := x.noSession[peer]
	if x.failNext[peer] > 0 {
		x.failNext[peer]--
		no = true
	}
	x.counter++
	counter := x.counter
	x.mu.Unlock()
	if no {
		return 0, errors.New("no session")
	}
	n := wire.EncryptedHeaderLen + plainLen + wire.TagLen
	if cap(msg) < n {
		return 0, errors.New("short buffer")
	}
	msg = msg[:n]
	wire.PutEncrypted(msg, 7, counter, msg[2])
	for i := wire.EncryptedHeaderLen; i < n-wire.TagLen; i++ {
		msg[i] ^= 0x5a
	}
	for i := n - wire.TagLen; i < n; i++ {
		msg[i] = 0xee
	}
	return n, nil
}

func (x *xorCrypto) Open(from netip.AddrPort, h wire.Header, msg []byte) ([]byte, string, error) {
	if eh, err := wire.DecodeEncrypted(msg); err != nil || eh.Header != h {
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
