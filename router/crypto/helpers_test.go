package crypto

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/router/wire"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// testNet delivers datagrams between managers in memory: at once (inside
// Send, which also proves the Manager holds no lock while sending) or, while
// held, queued until flush.
type testNet struct {
	mu       sync.Mutex
	nodes    map[netip.AddrPort]*Manager
	held     bool
	queue    []datagram
	sent     map[netip.AddrPort]int // datagrams sent, by sender
	captured []datagram             // every datagram, for replay tests
	dropAll  bool
	openErrs []error // errors of Open on delivered data-plane datagrams
}

type datagram struct {
	from, to netip.AddrPort
	msg      []byte
}

func newTestNet() *testNet {
	return &testNet{nodes: map[netip.AddrPort]*Manager{}, sent: map[netip.AddrPort]int{}}
}

func (n *testNet) sender(from netip.AddrPort) HandshakeSender {
	return sendFunc(func(to netip.AddrPort, msg []byte) error {
		d := datagram{from, to, append([]byte(nil), msg...)}
		n.mu.Lock()
		n.sent[from]++
		n.captured = append(n.captured, datagram{from, to, append([]byte(nil), msg...)})
		if n.dropAll {
			n.mu.Unlock()
			return nil
		}
		if n.held {
			n.queue = append(n.queue, d)
			n.mu.Unlock()
			return nil
		}
		n.mu.Unlock()
		n.deliver(d)
		return nil
	})
}

func (n *testNet) deliver(d datagram) {
	n.mu.Lock()
	m := n.nodes[d.to]
	n.mu.Unlock()
	if m == nil {
		return
	}
	if wire.Type(d.msg[1]) == wire.TypeHandshake {
		m.handshakeNow(d.from, d.msg)
		return
	}
	if _, _, err := openMsg(m, d.from, d.msg); err != nil {
		n.mu.Lock()
		n.openErrs = append(n.openErrs, err)
		n.mu.Unlock()
	}
}

func (n *testNet) flush() {
	for {
		n.mu.Lock()
		q := n.queue
		n.queue = nil
		n.mu.Unlock()
		if len(q) == 0 {
			return
		}
		for _, d := range q {
			n.deliver(d)
		}
	}
}

func (n *testNet) sentBy(a netip.AddrPort) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sent[a]
}

var (
	addrA = netip.MustParseAddrPort("198.18.0.1:6784")
	addrB = netip.MustParseAddrPort("198.18.0.2:6784")
)

func testPSK(b byte) [32]byte {
	var k [32]byte
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

type nodeOpts struct {
	psk        [32]byte
	disableAES bool
	rekey      time.Duration
}

func (n *testNet) newNode(t testing.TB, addr netip.AddrPort, clock *fakeClock, o nodeOpts) *Manager {
	t.Helper()
	id, err := GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	if o.psk == ([32]byte{}) {
		o.psk = testPSK(1)
	}
	m, err := NewManager(Config{
		Identity: id, PSK: o.psk, Send: n.sender(addr),
		RekeyAfter: o.rekey, DisableAES: o.disableAES, Clock: clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	n.mu.Lock()
	n.nodes[addr] = m
	n.mu.Unlock()
	return m
}

// pair makes managers "a" and "b" that know each other, and runs the
// handshake a starts.
func pair(t testing.TB, oa, ob nodeOpts) (a, b *Manager, net *testNet, clock *fakeClock) {
	t.Helper()
	net, clock = newTestNet(), newFakeClock()
	a = net.newNode(t, addrA, clock, oa)
	b = net.newNode(t, addrB, clock, ob)
	a.SetPeer("b", b.cfg.Identity.Public(), addrB)
	b.SetPeer("a", a.cfg.Identity.Public(), addrA)
	a.tick()
	b.tick()
	return a, b, net, clock
}

// packet returns a buffer laid out as the data plane passes it to Seal.
func packet(m *Manager, payload []byte) []byte {
	buf := make([]byte, wire.EncryptedHeaderLen+len(payload), wire.EncryptedHeaderLen+len(payload)+wire.TagLen)
	copy(buf[wire.EncryptedHeaderLen:], payload)
	return buf
}

// sealTo seals payload for peer and returns the datagram.
func sealTo(t testing.TB, m *Manager, peer string, payload []byte) []byte {
	t.Helper()
	buf := packet(m, payload)
	n, err := m.Seal(peer, buf, len(payload))
	if err != nil {
		t.Fatalf("Seal to %s: %v", peer, err)
	}
	return buf[:n]
}

// openMsg opens msg as the data plane does: the header decoded once, then
// Open. A header that does not decode is ErrMalformed.
func openMsg(m *Manager, from netip.AddrPort, msg []byte) ([]byte, string, error) {
	h, err := wire.Decode(msg)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return m.Open(from, h, msg)
}

// sendFunc adapts a function to HandshakeSender.
type sendFunc func(to netip.AddrPort, msg []byte) error

func (f sendFunc) SendHandshake(to netip.AddrPort, msg []byte) error { return f(to, msg) }
