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
	// Lookup returns the owner of dst in the IPAM ring and its data endpoint.
	Lookup(dst netip.Addr) (peer string, ep netip.AddrPort, ok bool)
	// IsLocal reports whether dst is in this host's own ranges.
	IsLocal(dst netip.Addr) bool
	// Owner returns the host that owns addr in the IPAM ring (this host's
	// own name included); ok is false outside the ring or in a gap.
	Owner(addr netip.Addr) (peer string, ok bool)
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
	// is authenticated with the rest of the header), msg[wire.EncryptedHeaderLen:][:plainLen] the plaintext, and
	// cap(msg) leaves room for the tag. It returns the datagram length.
	// An error (e.g. no session yet) drops the packet; starting a handshake
	// is Crypto's business.
	Seal(peer string, msg []byte, plainLen int) (n int, err error)
	// Open opens a TypeEncrypted datagram in place; plain aliases msg.
	Open(from netip.AddrPort, msg []byte) (plain []byte, peer string, err error)
	// HandleHandshake gets every TypeHandshake datagram. msg aliases a
	// receive buffer that is reused after the call returns: copy to keep.
	HandleHandshake(from netip.AddrPort, msg []byte)
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

	// Packets waiting for an encrypted session, and the sender that
	// flushes them (its own buffers: it runs outside the tx goroutine).
	waiting waitQueue
	flushMu sync.Mutex
	flushTx *txPath

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
	errc := make(chan error, 2)
	go func() { errc <- r.tx.run() }()
	go func() { errc <- r.rx.run() }()

	var first error
	got := 0
	select {
	case <-ctx.Done():
	case first = <-errc:
		got = 1
	}
	// Closing the devices is what unblocks the loops still running.
	_ = r.tun.Close()
	_ = r.conn.Close()
	for ; got < 2; got++ {
		<-errc
	}
	if first != nil && ctx.Err() == nil {
		r.log.Error("data plane stopped", "err", first)
		return fmt.Errorf("router: %w", first)
	}
	return nil
}

// SendHandshake sends one of Crypto's own datagrams (a handshake, or an
// empty sealed keepalive), already framed, to a peer. Not for the hot path;
// it is safe to call concurrently with Run. Fits crypto.Config.Send.
func (r *Router) SendHandshake(to netip.AddrPort, msg []byte) error {
	if len(msg) < wire.HeaderLen {
		return fmt.Errorf("router: handshake of %d bytes is shorter than the header", len(msg))
	}
	if err := r.conn.WriteBatch([]udp.Message{{Buf: msg, N: len(msg), Addr: to}}); err != nil {
		return fmt.Errorf("send handshake to %s: %w", to, err)
	}
	return nil
}

// isClosed reports whether err means the device or socket went away.
func isClosed(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed)
}
