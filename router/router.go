// Package router is weft's data plane: it carries pod packets between the
// TUN device and the UDP socket. Outbound, a packet's IPv4 destination picks
// the peer that owns it in the IPAM ring (Routes), the packet is framed with
// the wire header in the headroom it was read into (and sealed by Crypto when
// encryption is on) and sent to that peer's endpoint, in GSO trains where
// consecutive packets go to the same peer. Inbound, datagrams are accepted
// only from known peers, with a sane header and a destination inside this
// host's own ranges, and are written to the TUN in batches the device can
// coalesce. Every refused packet is counted by reason.
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/weftnet/weft/internal/logx"
	"github.com/weftnet/weft/router/tun"
	"github.com/weftnet/weft/router/udp"
	"github.com/weftnet/weft/router/wire"
)

// Routes answers the forwarding questions. It is called per packet from two
// goroutines at once, so implementations must be safe for concurrent use and
// should not lock (e.g. an atomic.Pointer to an immutable table).
type Routes interface {
	// Lookup answers everything the data path asks about addr from one
	// search of the IPAM ring: the host that owns it (this host's own name
	// included; empty outside the ring or in a gap), that host's data
	// endpoint (invalid when addr is local or the owner is not reachable),
	// and whether addr is in this host's own ranges. Plain results rather
	// than a struct: they stay in registers across the interface call.
	Lookup(addr netip.Addr) (owner string, ep netip.AddrPort, local bool)
	// PeerAt returns the known peer that sends from the underlay endpoint src.
	PeerAt(src netip.AddrPort) (peer string, ok bool)
}

// Crypto seals and opens data messages (router/crypto). A nil Crypto means
// plaintext TypeData messages.
type Crypto interface {
	// Overhead is the bytes a sealed message adds beyond the plaintext
	// framing; the router reserves at least this much tailroom.
	Overhead() int
	// Seal seals in place: msg[:wire.EncryptedHeaderLen] is room for the
	// header, whose flags byte msg[2] the caller sets and Seal keeps (it
	// is authenticated with the rest of the header),
	// msg[wire.EncryptedHeaderLen:][:plainLen] the plaintext, and cap(msg)
	// leaves room for the tag. It returns the datagram length. On an error
	// (no session yet) the router keeps a copy of the packet in its wait
	// queue, bounded per peer, and sends it once SessionsUp names the peer;
	// starting the handshake is Crypto's business.
	Seal(peer string, msg []byte, plainLen int) (n int, err error)
	// Open opens a TypeEncrypted datagram in place, whose header the
	// router already decoded into h; plain aliases msg.
	Open(from netip.AddrPort, h wire.Header, msg []byte) (plain []byte, peer string, err error)
	// HandleHandshake gets every TypeHandshake datagram. msg aliases a
	// receive buffer that is reused after the call returns: copy to keep.
	// It is called on the receive goroutine and must not block.
	HandleHandshake(from netip.AddrPort, msg []byte)
	// SessionsUp is signalled when one or more peers got a session to send
	// with; TakeSessionsUp appends their names to dst and forgets them.
	// The router's flush goroutine waits on it to send what was queued.
	SessionsUp() <-chan struct{}
	TakeSessionsUp(dst []string) []string
}

// HandshakeSender sends Crypto's own datagrams (handshakes, cookie replies,
// keepalives) on the data-plane socket. It exists before the Router and the
// Crypto that uses it, so neither needs the other to be built first.
type HandshakeSender struct{ conn udp.Conn }

// NewHandshakeSender returns the sender for conn, the socket the Router is
// given too. udp.Conn is safe for concurrent writes.
func NewHandshakeSender(conn udp.Conn) HandshakeSender { return HandshakeSender{conn: conn} }

// SendHandshake sends one framed datagram to a peer. Not for the hot path.
func (s HandshakeSender) SendHandshake(to netip.AddrPort, msg []byte) error {
	if len(msg) < wire.HeaderLen {
		return fmt.Errorf("router: handshake of %d bytes is shorter than the header", len(msg))
	}
	if err := s.conn.WriteBatch([]udp.Message{{Buf: msg, N: len(msg), Addr: to}}); err != nil {
		return fmt.Errorf("send handshake to %s: %w", to, err)
	}
	return nil
}

// Config is what New needs. TUN, Conn and Routes are required.
type Config struct {
	TUN    tun.Device
	Conn   udp.Conn
	Routes Routes
	Crypto Crypto // nil = plaintext
	// MTU is the overlay MTU: a larger packet with DF set is answered with
	// ICMP "fragmentation needed". 0 means TUN.MTU().
	MTU int
	// LocalID goes into the index field of plaintext headers (informational).
	LocalID uint32
	Logger  *slog.Logger
}

// Overhead is what carrying a packet costs on the underlay: outer IPv4 and
// UDP headers plus the weft framing. Overlay MTU = underlay MTU - Overhead.
func Overhead(encrypted bool) int {
	const ipv4UDP = 20 + 8
	if encrypted {
		return ipv4UDP + wire.EncryptedHeaderLen + wire.TagLen
	}
	return ipv4UDP + wire.HeaderLen
}

// Router moves packets both ways between TUN and UDP.
type Router struct {
	tun      tun.Device
	conn     udp.Conn
	routes   Routes
	crypto   Crypto
	mtu      int
	localID  uint32
	tailroom int
	datapath string
	log      *slog.Logger

	counters
	tx *txPath
	rx *rxPath

	// Packets waiting for an encrypted session, and the send path that
	// flushes them once Crypto signals the session (its own buffers: it
	// runs on the flush goroutine, beside the tx goroutine).
	waiting waitQueue
	flushMu sync.Mutex
	flushTx *txPath
	upNames []string      // reused by the flush goroutine
	recheck chan struct{} // tx asks the flush goroutine to look again

	runOnce sync.Once
}

// New checks cfg and allocates every buffer the data path will use.
func New(cfg Config) (*Router, error) {
	if cfg.TUN == nil || cfg.Conn == nil || cfg.Routes == nil {
		return nil, errors.New("router: TUN, Conn and Routes are required")
	}
	log := logx.OrDiscard(cfg.Logger)
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = cfg.TUN.MTU()
	}
	if mtu < 576 || mtu > 65535-Overhead(true) {
		return nil, fmt.Errorf("router: overlay mtu %d out of range 576..%d", mtu, 65535-Overhead(true))
	}
	r := &Router{
		tun:     cfg.TUN,
		conn:    cfg.Conn,
		routes:  cfg.Routes,
		crypto:  cfg.Crypto,
		mtu:     mtu,
		localID: cfg.LocalID,
		log:     log,
	}
	if cfg.Crypto != nil {
		r.tailroom = max(cfg.Crypto.Overhead(), wire.TagLen)
	}
	r.datapath = tun.DatapathOf(cfg.TUN) + "+" + cfg.Conn.Datapath()
	r.initCounters()
	r.recheck = make(chan struct{}, 1)
	r.tx = newTxPath(r)
	r.tx.queueNoSession = cfg.Crypto != nil
	r.rx = newRxPath(r)
	if cfg.Crypto != nil {
		r.flushTx = newTxPath(r)
	}
	return r, nil
}

// Datapath describes the I/O in use, e.g. "tun-offload+udp-gso".
func (r *Router) Datapath() string { return r.datapath }

// MTU is the overlay MTU the router enforces.
func (r *Router) MTU() int { return r.mtu }

// Run forwards in both directions until ctx is done or an I/O error is fatal
// (device or socket closed under it). The Router owns TUN and Conn from now
// on: Run closes both before it returns, which is also how it stops the
// blocked reads. It returns nil after ctx is done. Run may be called once.
func (r *Router) Run(ctx context.Context) error {
	started := false
	r.runOnce.Do(func() { started = true })
	if !started {
		return errors.New("router: Run called twice")
	}
	r.log.Info("data plane running", "datapath", r.datapath, "mtu", r.mtu, "encrypted", r.crypto != nil)
	loops := []func(stop <-chan struct{}) error{
		func(<-chan struct{}) error { return r.tx.run() },
		func(<-chan struct{}) error { return r.rx.run() },
	}
	if r.crypto != nil {
		loops = append(loops, r.flushLoop)
	}
	stop := make(chan struct{})
	errc := make(chan error, len(loops))
	for _, loop := range loops {
		go func() { errc <- loop(stop) }()
	}

	var first error
	got := 0
	select {
	case <-ctx.Done():
	case first = <-errc:
		got = 1
	}
	// Closing the devices is what unblocks the loops still running.
	close(stop)
	_ = r.tun.Close()
	_ = r.conn.Close()
	for ; got < len(loops); got++ {
		<-errc
	}
	if first != nil && ctx.Err() == nil {
		r.log.Error("data plane stopped", "err", first)
		return fmt.Errorf("router: %w", first)
	}
	return nil
}

// flushLoop sends the packets that waited for a session once Crypto says the
// session is up, or once more when the tx path queued a packet right after
// such a flush (waitQueue.upAt). It runs beside the tx goroutine with its
// own buffers, so neither the receive goroutine nor Crypto ever sends pod
// packets.
func (r *Router) flushLoop(stop <-chan struct{}) error {
	up := r.crypto.SessionsUp()
	for {
		select {
		case <-stop:
			return nil
		case <-up:
			r.upNames = r.crypto.TakeSessionsUp(r.upNames[:0])
		case <-r.recheck:
			r.upNames = r.waiting.takeAgain(r.upNames[:0])
		}
		for _, peer := range r.upNames {
			if err := r.sessionUp(peer); err != nil {
				return err
			}
		}
	}
}

// isClosed reports whether err means the device or socket went away.
func isClosed(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed)
}
