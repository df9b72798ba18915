package fastdp

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
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
//
// How often a peer is probed adapts (issue 21: at 50 peers, a probe of
// every peer each round was most of an idle agent's CPU): a peer is probed
// at every Send until it first answers, and again at every Send while a
// request of its is unanswered (in doubt); a peer whose last request was
// answered is probed only every ProberConfig.SlowEvery Sends, or less often
// when the peers are many (at most about ProberConfig.PerSend answered
// peers per Send, spread over the Sends). A peer is down once a request has
// gone unanswered for the timeout, so a broken path is found within that
// period plus the timeout.
type Prober struct {
	conn      *icmp.PacketConn
	id        int
	timeout   time.Duration
	slowEvery int
	perSend   int
	log       *slog.Logger
	now       func() time.Time
	// write sends one request; the socket's, or a test's.
	write func(msg []byte, ifIndex int, src, dst netip.Addr) error

	// stray counts messages read that are not a reply to this prober;
	// sent counts requests sent.
	stray, sent atomic.Uint64

	mu    sync.Mutex
	seq   int
	round uint64
	rng   *mrand.ChaCha8 // nonces: unpredictable, without a system call each
	peers map[netip.Addr]*probePeer
}

type probePeer struct {
	firstSent time.Time // first request since the last answer, zero if none pending
	lastReply time.Time
	idle      int    // Sends since the last request to this peer
	round     uint64 // the last Send that listed this peer
	nonces    [probeNonces]uint64
	next      int
}

// ProberConfig tunes a Prober.
type ProberConfig struct {
	// Timeout: a peer is down when a request went unanswered this long.
	Timeout time.Duration
	// SlowEvery: a peer that answered its last request is probed on every
	// SlowEvery-th Send only; 0 or 1 probes every peer at every Send.
	SlowEvery int
	// PerSend bounds the answered peers probed per Send: with more than
	// SlowEvery*PerSend peers, each is probed every ceil(peers/PerSend)
	// Sends. 0: no bound.
	PerSend int
	Logger  *slog.Logger
}

// NewProber opens a raw ICMP socket (root or CAP_NET_RAW).
func NewProber(cfg ProberConfig) (*Prober, error) {
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
	p := newProber(cfg)
	p.conn = conn
	pc := conn.IPv4PacketConn()
	p.write = func(msg []byte, ifIndex int, src, dst netip.Addr) error {
		cm := &ipv4.ControlMessage{IfIndex: ifIndex, Src: net.IP(src.AsSlice())}
		_, err := pc.WriteTo(msg, cm, &net.IPAddr{IP: net.IP(dst.AsSlice())})
		return err
	}
	return p, nil
}

// newProber is a Prober without its socket (write and conn unset).
func newProber(cfg ProberConfig) *Prober {
	var seed [32]byte
	_, _ = rand.Read(seed[:])
	return &Prober{
		id: int(binary.BigEndian.Uint16(seed[:2])), timeout: cfg.Timeout, slowEvery: max(cfg.SlowEvery, 1), perSend: cfg.PerSend,
		log: logx.OrDiscard(cfg.Logger), now: time.Now, rng: mrand.NewChaCha8(seed), peers: map[netip.Addr]*probePeer{},
	}
}

// Close closes the socket; Run then returns.
func (p *Prober) Close() error { return p.conn.Close() }

// Sent is the number of requests sent so far.
func (p *Prober) Sent() uint64 { return p.sent.Load() }

// Send sends a request to each target that is due (see Prober) out through
// the device with index ifIndex, from src (this host's underlay address),
// and forgets peers not among targets.
func (p *Prober) Send(ifIndex int, src netip.Addr, targets []netip.Addr) {
	now := p.now()
	p.mu.Lock()
	p.round++
	every := p.slowEvery
	if p.perSend > 0 {
		every = max(every, (len(targets)+p.perSend-1)/p.perSend)
	}
	var dsts []netip.Addr
	var buf []byte // the requests, one after the other
	for _, t := range targets {
		pp := p.peers[t]
		if pp == nil {
			pp = &probePeer{}
			p.peers[t] = pp
		}
		pp.round = p.round
		pp.idle++
		if !pp.firstSent.IsZero() || pp.lastReply.IsZero() || pp.idle >= every {
			nonce := p.rng.Uint64() | 1 // never 0, which marks an empty slot
			pp.nonces[pp.next%probeNonces] = nonce
			pp.next++
			pp.idle = 0
			if pp.lastReply.IsZero() {
				// First contact: once it answers, its slow probes come
				// at a phase of their own, not in step with every peer
				// that answered the same round.
				pp.idle = -int(p.rng.Uint64() % uint64(every))
			}
			if pp.firstSent.IsZero() {
				pp.firstSent = now
			}
			p.seq++
			buf = appendEcho(buf, p.id, p.seq&0xffff, nonce)
			dsts = append(dsts, t)
		}
	}
	for a, pp := range p.peers {
		if pp.round != p.round {
			delete(p.peers, a)
		}
	}
	p.mu.Unlock()
	const size = 8 + probeLen
	for i, dst := range dsts {
		p.sent.Add(1)
		if err := p.write(buf[i*size:(i+1)*size], ifIndex, src, dst); err != nil {
			// ENETUNREACH and friends: the device is down or gone; the
			// peer's state shows it after the timeout.
			p.log.Debug("fastdp probe not sent", "peer", dst, "err", err)
		}
	}
}

// appendEcho appends an ICMP echo request of id and seq carrying nonce.
func appendEcho(b []byte, id, seq int, nonce uint64) []byte {
	n := len(b)
	b = append(b, byte(ipv4.ICMPTypeEcho), 0, 0, 0, byte(id>>8), byte(id), byte(seq>>8), byte(seq))
	b = append(b, probeMagic...)
	b = binary.BigEndian.AppendUint64(b, nonce)
	sum := checksum(b[n:])
	b[n+2], b[n+3] = byte(sum>>8), byte(sum)
	return b
}

// checksum is the Internet checksum (RFC 1071) of b.
func checksum(b []byte) uint16 {
	var s uint32
	for ; len(b) >= 2; b = b[2:] {
		s += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
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
// for anything else. By hand: a reply is read per answered probe, and the
// generic ICMP parser allocates for each.
func parseReply(b []byte, id int) (uint64, bool) {
	if len(b) != 8+probeLen || b[0] != byte(ipv4.ICMPTypeEchoReply) || int(binary.BigEndian.Uint16(b[4:6])) != id ||
		!bytes.HasPrefix(b[8:], probeMagic) {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[8+len(probeMagic):]), true
}

// State is what the probes say of the peer at addr now: down once a request
// went unanswered for the timeout, else up once it answered, else pending.
func (p *Prober) State(addr netip.Addr) ProbeState {
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	pp := p.peers[addr]
	switch {
	case pp == nil:
		return ProbePending
	case !pp.firstSent.IsZero() && now.Sub(pp.firstSent) >= p.timeout:
		return ProbeDown
	case !pp.lastReply.IsZero():
		return ProbeUp
	}
	return ProbePending // never answered, not yet given up
}
