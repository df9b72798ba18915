// Package udptest is an in-memory network of udp.Conns for tests, in the
// spirit of nebula's e2e harness: conns find each other by address, a
// datagram to an address nobody listens on is gone, a full receive queue
// drops, and a GSO train is cut into its datagrams as the kernel would.
package udptest

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/weftnet/weft/router/udp"
)

// Datapath is what a fake Conn reports as its kind.
const Datapath = "fake-udp"

// queueLen is each Conn's receive queue, in datagrams.
const queueLen = 4096

type datagram struct {
	from netip.AddrPort
	data []byte
}

// Network connects Conns by address. The zero value is ready to use.
type Network struct {
	mu      sync.Mutex
	conns   map[netip.AddrPort]*Conn
	blocked map[[2]netip.Addr]bool
}

// Listen opens a Conn at addr; it fails when addr is taken, like bind(2).
func (n *Network) Listen(addr netip.AddrPort) (*Conn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conns == nil {
		n.conns = map[netip.AddrPort]*Conn{}
	}
	if _, taken := n.conns[addr]; taken {
		return nil, fmt.Errorf("udptest: listen %s: address already in use", addr)
	}
	c := &Conn{net: n, local: addr, in: make(chan datagram, queueLen), closed: make(chan struct{})}
	n.conns[addr] = c
	return c, nil
}

// Block drops every datagram between hosts a and b (both ways) until Unblock:
// a link cut for partition tests.
func (n *Network) Block(a, b netip.Addr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.blocked == nil {
		n.blocked = map[[2]netip.Addr]bool{}
	}
	n.blocked[[2]netip.Addr{a, b}] = true
	n.blocked[[2]netip.Addr{b, a}] = true
}

// Unblock heals a link cut by Block.
func (n *Network) Unblock(a, b netip.Addr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.blocked, [2]netip.Addr{a, b})
	delete(n.blocked, [2]netip.Addr{b, a})
}

func (n *Network) route(from, to netip.AddrPort) *Conn {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.blocked[[2]netip.Addr{from.Addr(), to.Addr()}] {
		return nil
	}
	return n.conns[to]
}

func (n *Network) remove(c *Conn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conns[c.local] == c {
		delete(n.conns, c.local)
	}
}

// Conn is an in-memory udp.Conn. With Record set it also keeps what was sent,
// as the router built the messages (TakeSent).
type Conn struct {
	net    *Network
	local  netip.AddrPort
	in     chan datagram
	once   sync.Once
	closed chan struct{}

	mu     sync.Mutex
	record bool
	sent   []udp.Message
}

// NewConn returns a Conn on no network: it sends nowhere and receives only
// what Deliver gives it.
func NewConn(local netip.AddrPort) *Conn {
	return &Conn{local: local, in: make(chan datagram, queueLen), closed: make(chan struct{})}
}

// Record makes the Conn keep copies of what it sends.
func (c *Conn) Record() {
	c.mu.Lock()
	c.record = true
	c.mu.Unlock()
}

// TakeSent returns and forgets what was sent since the last call.
func (c *Conn) TakeSent() []udp.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sent
	c.sent = nil
	return s
}

// Deliver queues a datagram for c as if it came from 'from'; it is dropped
// when the queue is full or c is closed.
func (c *Conn) Deliver(from netip.AddrPort, data []byte) {
	select {
	case <-c.closed:
		return
	default:
	}
	select {
	case c.in <- datagram{from: from, data: bytes.Clone(data)}:
	default:
	}
}

// ReadBatch implements udp.Conn: one datagram per message, no GRO.
func (c *Conn) ReadBatch(msgs []udp.Message) (int, error) {
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

// WriteBatch implements udp.Conn.
func (c *Conn) WriteBatch(msgs []udp.Message) error {
	select {
	case <-c.closed:
		return net.ErrClosed
	default:
	}
	c.mu.Lock()
	if c.record {
		for _, m := range msgs {
			cp := udp.Message{Addr: m.Addr, N: m.N, Buf: bytes.Clone(m.Buf), SegSize: m.SegSize}
			for i := range m.Parts {
				cp.Parts = append(cp.Parts, m.AppendDatagram(nil, i))
			}
			c.sent = append(c.sent, cp)
		}
	}
	c.mu.Unlock()
	if c.net == nil {
		return nil
	}
	for i := range msgs {
		m := &msgs[i]
		dst := c.net.route(c.local, m.Addr)
		if dst == nil {
			continue // like UDP: nobody listening (or the link is cut), silently gone
		}
		switch {
		case m.Parts != nil:
			for j := range m.Parts {
				dst.Deliver(c.local, m.AppendDatagram(nil, j))
			}
		case m.SegSize > 0:
			for b := m.Buf[:m.N]; len(b) > 0; {
				k := min(m.SegSize, len(b))
				dst.Deliver(c.local, b[:k])
				b = b[k:]
			}
		default:
			dst.Deliver(c.local, m.Buf[:m.N])
		}
	}
	return nil
}

func (c *Conn) LocalAddr() netip.AddrPort { return c.local }
func (c *Conn) Datapath() string          { return Datapath }

// Close frees the address and makes ReadBatch return net.ErrClosed.
func (c *Conn) Close() error {
	c.once.Do(func() {
		close(c.closed)
		if c.net != nil {
			c.net.remove(c)
		}
	})
	return nil
}
