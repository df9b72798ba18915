// Package meshtest is an in-memory network for memberlist: many mesh members
// in one process, each at an address of its own, without sockets or root,
// and with links that can be cut (Block) and healed (Unblock) to make
// partitions.
//
// Why not loopback: 127.0.0.x addresses need free ports, a thousand members
// need thousands of sockets, and a partition cannot be made on loopback
// without root (nftables). An in-memory transport has none of those limits,
// so the same harness serves the 5-agent tests and a 1,000-member
// simulation. What it does not test is memberlist's own socket code, which
// the end-to-end tests in network namespaces cover.
//
// Packets behave like UDP (a full queue, a cut link or nobody listening: the
// packet is gone without an error); streams behave like TCP (a cut link or
// nobody listening: the dial fails) and are in-memory pipes with a send
// buffer (see pipe), which honour the
// deadlines memberlist sets.
package meshtest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Errors of dials, in the words of the socket errors they stand for, so that
// logs read the same as on a real network.
var (
	ErrRefused  = errors.New("meshtest: connection refused")
	ErrBlocked  = errors.New("meshtest: i/o timeout (link blocked)")
	ErrShutdown = errors.New("meshtest: transport shut down")
)

// packetQueue is each transport's receive queue, in packets. memberlist
// drains it on one goroutine; a burst beyond this is dropped as a full UDP
// socket buffer would drop it.
const packetQueue = 1024

// Network connects Transports by address. The zero value is ready to use.
//
// Every packet and dial of every member looks up its destination here, and
// members come and go and links are cut rarely: the maps are sync.Maps,
// read without a lock. With a mutex (even a read-write one), a thousand
// members sending at once queued on it, and a member starting (Listen, a
// writer) stalled every sender until the readers of the moment, scheduled
// late on a loaded machine, were done.
type Network struct {
	nodes   sync.Map     // netip.AddrPort -> *Transport
	blocked sync.Map     // [2]netip.Addr -> struct{}, both directions
	nblock  atomic.Int64 // entries in blocked: none is the common case
}

// Listen returns a transport bound to addr; it fails when addr is taken,
// like bind(2). Give it to mesh.Config.Transport with the same address as
// Bind and Port.
func (n *Network) Listen(addr netip.AddrPort) (*Transport, error) {
	if !addr.IsValid() || addr.Port() == 0 {
		return nil, fmt.Errorf("meshtest: listen %s: need an address and a port", addr)
	}
	t := &Transport{
		net:     n,
		local:   addr,
		from:    net.UDPAddrFromAddrPort(addr),
		packets: make(chan *memberlist.Packet, packetQueue),
		streams: make(chan net.Conn),
		done:    make(chan struct{}),
		conns:   map[net.Conn]struct{}{},
	}
	if _, taken := n.nodes.LoadOrStore(addr, t); taken {
		return nil, fmt.Errorf("meshtest: listen %s: address already in use", addr)
	}
	return t, nil
}

// Block cuts every packet and new stream between hosts a and b, both ways,
// until Unblock.
func (n *Network) Block(a, b netip.Addr) {
	for _, k := range [][2]netip.Addr{{a, b}, {b, a}} {
		if _, had := n.blocked.LoadOrStore(k, struct{}{}); !had {
			n.nblock.Add(1)
		}
	}
}

// Unblock heals a link cut by Block.
func (n *Network) Unblock(a, b netip.Addr) {
	for _, k := range [][2]netip.Addr{{a, b}, {b, a}} {
		if _, had := n.blocked.LoadAndDelete(k); had {
			n.nblock.Add(-1)
		}
	}
}

// route finds the transport at to, or why there is none.
func (n *Network) route(from netip.Addr, to string) (*Transport, error) {
	dst, err := netip.ParseAddrPort(to)
	if err != nil {
		return nil, fmt.Errorf("meshtest: address %q: %w", to, err)
	}
	if n.nblock.Load() > 0 {
		if _, cut := n.blocked.Load([2]netip.Addr{from, dst.Addr()}); cut {
			return nil, ErrBlocked
		}
	}
	t, ok := n.nodes.Load(dst)
	if !ok {
		return nil, ErrRefused
	}
	return t.(*Transport), nil
}

func (n *Network) remove(t *Transport) {
	n.nodes.CompareAndDelete(t.local, t)
}

// Stats are one transport's counters: what memberlist sent and received as
// packets (probes, gossip) and how many streams (joins, push/pull, reliable
// messages) it opened and accepted.
type Stats struct {
	PacketsOut, PacketsIn   uint64
	BytesOut, BytesIn       uint64
	PacketsDropped          uint64 // sent but lost: link cut, nobody there, queue full
	StreamsOut, StreamsIn   uint64
	StreamBytesOut          uint64 // bytes written on streams this transport opened or accepted
	StreamBytesIn           uint64
	StreamsRefused, Blocked uint64 // dials that failed: nobody listening, link cut
}

// Transport is one member's end of the Network; it implements
// memberlist.NodeAwareTransport.
type Transport struct {
	net     *Network
	local   netip.AddrPort
	from    *net.UDPAddr // local, as the From of every packet sent (memberlist only reads it)
	packets chan *memberlist.Packet
	streams chan net.Conn
	done    chan struct{}
	once    sync.Once

	mu    sync.Mutex
	conns map[net.Conn]struct{} // open stream ends of this side, closed on Shutdown

	packetsOut, packetsIn, bytesOut, bytesIn, dropped    atomic.Uint64
	streamsOut, streamsIn, streamBytesOut, streamBytesIn atomic.Uint64
	refused, blocked                                     atomic.Uint64
}

var _ memberlist.NodeAwareTransport = (*Transport)(nil)

// Addr is the address the transport listens on.
func (t *Transport) Addr() netip.AddrPort { return t.local }

// Stats returns the counters so far.
func (t *Transport) Stats() Stats {
	return Stats{
		PacketsOut: t.packetsOut.Load(), PacketsIn: t.packetsIn.Load(),
		BytesOut: t.bytesOut.Load(), BytesIn: t.bytesIn.Load(),
		PacketsDropped: t.dropped.Load(),
		StreamsOut:     t.streamsOut.Load(), StreamsIn: t.streamsIn.Load(),
		StreamBytesOut: t.streamBytesOut.Load(), StreamBytesIn: t.streamBytesIn.Load(),
		StreamsRefused: t.refused.Load(), Blocked: t.blocked.Load(),
	}
}

// FinalAdvertiseAddr implements memberlist.Transport: the configured
// advertise address when it is another one than the listening address (as
// memberlist's own transport honours it, and as mesh.Rebind needs it), else
// the listening address.
func (t *Transport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	if a, err := netip.ParseAddr(ip); err == nil && port > 0 && !a.IsUnspecified() {
		return a.AsSlice(), port, nil
	}
	return t.local.Addr().AsSlice(), int(t.local.Port()), nil
}

// WriteTo implements memberlist.Transport.
func (t *Transport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress implements memberlist.NodeAwareTransport. Like a UDP send,
// it succeeds whether or not the packet arrives.
func (t *Transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	now := time.Now()
	if t.closed() {
		return now, ErrShutdown
	}
	t.packetsOut.Add(1)
	t.bytesOut.Add(uint64(len(b)))
	dst, err := t.net.route(t.local.Addr(), a.Addr)
	if err != nil {
		t.dropped.Add(1)
		return now, nil
	}
	// memberlist reuses its send buffers: the receiver gets a copy.
	p := &memberlist.Packet{
		Buf:       append([]byte(nil), b...),
		From:      t.from,
		Timestamp: now,
	}
	if !dst.deliver(p) {
		t.dropped.Add(1)
	}
	return now, nil
}

func (t *Transport) deliver(p *memberlist.Packet) bool {
	if t.closed() {
		return false
	}
	select {
	case t.packets <- p:
		t.packetsIn.Add(1)
		t.bytesIn.Add(uint64(len(p.Buf)))
		return true
	default:
		return false
	}
}

// PacketCh implements memberlist.Transport.
func (t *Transport) PacketCh() <-chan *memberlist.Packet { return t.packets }

// DialTimeout implements memberlist.Transport.
func (t *Transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport: a stream to
// the transport at a.Addr, accepted by its memberlist within timeout.
func (t *Transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.closed() {
		return nil, ErrShutdown
	}
	dst, err := t.net.route(t.local.Addr(), a.Addr)
	if err != nil {
		if errors.Is(err, ErrBlocked) {
			t.blocked.Add(1)
		} else {
			t.refused.Add(1)
		}
		return nil, fmt.Errorf("dial %s: %w", a.Addr, err)
	}
	// The far side's address is made up: memberlist only logs it.
	mine, theirs := newPipe(tcpAddr(t.local), tcpAddr(dst.local))
	local := &conn{Conn: mine, local: tcpAddr(t.local), remote: tcpAddr(dst.local), owner: t}
	remote := &conn{Conn: theirs, local: tcpAddr(dst.local), remote: tcpAddr(t.local), owner: dst}
	if !dst.track(remote) {
		mine.Close()
		t.refused.Add(1)
		return nil, fmt.Errorf("dial %s: %w", a.Addr, ErrRefused)
	}
	t.track(local)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case dst.streams <- remote:
		t.streamsOut.Add(1)
		dst.streamsIn.Add(1)
		return local, nil
	case <-dst.done:
		err = ErrRefused
	case <-t.done:
		err = ErrShutdown
	case <-timer.C:
		err = errors.New("meshtest: i/o timeout (not accepted)")
	}
	local.Close()
	remote.Close()
	return nil, fmt.Errorf("dial %s: %w", a.Addr, err)
}

// StreamCh implements memberlist.Transport.
func (t *Transport) StreamCh() <-chan net.Conn { return t.streams }

// Shutdown implements memberlist.Transport: the address is free again, and
// every stream end still open on this side is closed so that no goroutine
// stays blocked on it. It may be called more than once.
func (t *Transport) Shutdown() error {
	t.once.Do(func() {
		close(t.done)
		t.net.remove(t)
		t.mu.Lock()
		conns := t.conns
		t.conns = nil
		t.mu.Unlock()
		for c := range conns {
			c.Close()
		}
	})
	return nil
}

func (t *Transport) closed() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

// track records an open stream end; false once shut down.
func (t *Transport) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.conns == nil {
		return false
	}
	t.conns[c] = struct{}{}
	return true
}

func (t *Transport) untrack(c net.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.conns, c)
}

func tcpAddr(ap netip.AddrPort) *net.TCPAddr { return net.TCPAddrFromAddrPort(ap) }

// conn is one end of a stream with real-looking addresses and byte counts.
type conn struct {
	net.Conn
	local, remote net.Addr
	owner         *Transport
	once          sync.Once
}

func (c *conn) LocalAddr() net.Addr  { return c.local }
func (c *conn) RemoteAddr() net.Addr { return c.remote }

func (c *conn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.owner.streamBytesIn.Add(uint64(n))
	return n, err
}

func (c *conn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.owner.streamBytesOut.Add(uint64(n))
	return n, err
}

func (c *conn) Close() error {
	c.once.Do(func() { c.owner.untrack(c) })
	return c.Conn.Close()
}
