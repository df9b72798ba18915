package fastdp

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/weftnet/weft/internal/logx"
)

// The probe is an ICMP echo request to the peer's underlay address, sent
// out through the VXLAN device (the neighbour and FDB entries of the peer
// put it in a VXLAN frame to the peer's VTEP). The peer's kernel answers it,
// not its agent: a peer whose agent restarts keeps answering, so a restart
// never moves a pair off the fast path. The answer comes back over the
// underlay; what the probe proves is the direction it tests, this host to
// the peer through VXLAN, which is the direction this host's routes choose.
// A blocked VXLAN port, a peer without the device or with another VNI, and
// a dead host all leave it unanswered.
//
// Requests carry a random identifier and a fresh 8-byte nonce each; a reply
// counts only from the probed address, with an outstanding nonce.

// probeMagic starts every probe payload.
var probeMagic = []byte("weft-fastdp\x00")

const (
	probeNonces = 8 // outstanding nonces kept per peer
	probeLen    = 12 + 8
)

// Prober sends the probes and tracks the answers.
type Prober struct {
	conn    *icmp.PacketConn
	pc      *ipv4.PacketConn
	id      int
	timeout time.Duration
	log     *slog.Logger
	now     func() time.Time

	// stray counts messages read that are not a reply to this prober.
	stray atomic.Uint64

	mu    sync.Mutex
	seq   int
	peers map[netip.Addr]*probePeer
}

type probePeer struct {
	firstSent time.Time // first request since the last answer, zero if none pending
	lastReply time.Time
	nonces    [probeNonces]uint64
	next      int
}

// NewProber opens a raw ICMP socket (root or CAP_NET_RAW). A peer counts as
// down when no request was answered for timeout.
func NewProber(timeout time.Duration, log *slog.Logger) (*Prober, error) {
	conn, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return nil, fmt.Errorf("fastdp: probe socket: %w", err)
	}
	// Echo replies only. A raw ICMP socket is otherwise handed a copy of
	// every ICMP message the host receives, the peers' own probes (echo
	// requests) among them: one wake-up and parse per peer per round for
	// nothing, half of the prober's reads, and with 50 agents on one
	// machine a visible share of an idle agent's CPU (issue 21).
	var f ipv4.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv4.ICMPTypeEchoReply)
	if err := conn.IPv4PacketConn().SetICMPFilter(&f); err != nil {
		conn.Close()
		return nil, fmt.Errorf("fastdp: probe socket filter: %w", err)
	}
	var id [2]byte
	_, _ = rand.Read(id[:])
	return &Prober{
		conn: conn, pc: conn.IPv4PacketConn(), id: int(binary.BigEndian.Uint16(id[:])),
		timeout: timeout, log: logx.OrDiscard(log), now: time.Now, peers: map[netip.Addr]*probePeer{},
	}, nil
}

// Close closes the socket; Run then returns.
func (p *Prober) Close() error { return p.conn.Close() }

// Send sends one request to each target out through the device with index
// ifIndex, from src (this host's underlay address), and forgets peers not
// among targets.
func (p *Prober) Send(ifIndex int, src netip.Addr, targets []netip.Addr) {
	now := p.now()
	p.mu.Lock()
	keep := make(map[netip.Addr]bool, len(targets))
	type out struct {
		dst netip.Addr
		msg []byte
	}
	var msgs []out
	for _, t := range targets {
		keep[t] = true
		pp := p.peers[t]
		if pp == nil {
			pp = &probePeer{}
			p.peers[t] = pp
		}
		var nb [8]byte
		_, _ = rand.Read(nb[:])
		nonce := binary.BigEndian.Uint64(nb[:])
		pp.nonces[pp.next%probeNonces] = nonce
		pp.next++
		if pp.firstSent.IsZero() {
			pp.firstSent = now
		}
		p.seq++
		body := append(append(make([]byte, 0, probeLen), probeMagic...), nb[:]...)
		msg, err := (&icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: p.id, Seq: p.seq & 0xffff, Data: body}}).Marshal(nil)
		if err != nil {
			continue
		}
		msgs = append(msgs, out{t, msg})
	}
	for a := range p.peers {
		if !keep[a] {
			delete(p.peers, a)
		}
	}
	p.mu.Unlock()
	cm := &ipv4.ControlMessage{IfIndex: ifIndex, Src: net.IP(src.AsSlice())}
	for _, m := range msgs {
		if _, err := p.pc.WriteTo(m.msg, cm, &net.IPAddr{IP: net.IP(m.dst.AsSlice())}); err != nil {
			// ENETUNREACH and friends: the device is down or gone; the
			// peer's state shows it after the timeout.
			p.log.Debug("fastdp probe not sent", "peer", m.dst, "err", err)
		}
	}
}

// Run reads answers until ctx is done or the socket is closed.
func (p *Prober) Run(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() { p.conn.Close() })
	defer stop()
	buf := make([]byte, 1500)
	for {
		n, from, err := p.conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			p.log.Warn("fastdp probe socket", "err", err)
			continue
		}
		ipa, ok := from.(*net.IPAddr)
		if !ok {
			continue
		}
		addr, ok := netip.AddrFromSlice(ipa.IP)
		if !ok {
			continue
		}
		p.answer(addr.Unmap(), buf[:n])
	}
}

// answer records a reply from addr if it is one of ours.
func (p *Prober) answer(from netip.Addr, b []byte) {
	nonce, ok := parseReply(b, p.id)
	if !ok {
		p.stray.Add(1)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	pp := p.peers[from]
	if pp == nil {
		return
	}
	for _, n := range pp.nonces {
		if n == nonce && n != 0 {
			pp.lastReply = p.now()
			pp.firstSent = time.Time{}
			return
		}
	}
}

// parseReply returns the nonce of an echo reply to a request of id, or false
// for anything else.
func parseReply(b []byte, id int) (uint64, bool) {
	m, err := icmp.ParseMessage(1, b)
	if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
		return 0, false
	}
	e, ok := m.Body.(*icmp.Echo)
	if !ok || e.ID != id || len(e.Data) != probeLen || !bytes.HasPrefix(e.Data, probeMagic) {
		return 0, false
	}
	return binary.BigEndian.Uint64(e.Data[len(probeMagic):]), true
}

// State is what the probes say of the peer at addr now.
func (p *Prober) State(addr netip.Addr) ProbeState {
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	pp := p.peers[addr]
	switch {
	case pp == nil:
		return ProbePending
	case !pp.lastReply.IsZero() && now.Sub(pp.lastReply) < p.timeout:
		return ProbeUp
	case pp.lastReply.IsZero() && now.Sub(pp.firstSent) < p.timeout:
		return ProbePending // never answered, not yet given up
	}
	return ProbeDown
}
