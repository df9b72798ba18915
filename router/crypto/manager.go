package crypto

import (
	"bytes"
	"cmp"
	"context"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/internal/logx"
	"github.com/weftnet/weft/router/wire"
)

// Limits of one session.
const (
	// DefaultRekeyAfter is how old a session gets before its initiator
	// replaces it.
	DefaultRekeyAfter = 2 * time.Minute
	// DefaultHandshakeRetry is how long an initiation waits for its response.
	DefaultHandshakeRetry = 5 * time.Second
	// rekeyAfterMessages asks for a new session long before the counter
	// nonce could run out.
	rekeyAfterMessages = 1 << 60
	// rejectAfterMessages is the last counter a session may use; the margin
	// covers counters taken concurrently by other Seal calls.
	rejectAfterMessages = math.MaxUint64 - (1 << 16)
	// A session is refused for sending after rejectFactor rekey intervals,
	// which leaves time for a rekey to complete and for packets sealed with
	// the old session to arrive, and for receiving one HandshakeRetry later.
	rejectFactor = 3
	// maxKeypairsPerPeer bounds the sessions kept for receiving: normally
	// the current one, up to two older ones not yet expired, and one
	// awaiting confirmation; the rest is slack for rekeys in quick succession.
	maxKeypairsPerPeer = 6
)

// Config configures a Manager. Identity, PSK and Send are required.
type Config struct {
	// Identity is this peer's static key (LoadOrCreateIdentity).
	Identity Identity
	// PSK is PasswordKeys.PSK from DerivePasswordKeys.
	PSK [32]byte
	// Send transmits one handshake or keepalive datagram. The Manager never
	// calls it while holding a lock, and never reuses msg afterwards, so Send
	// may keep it.
	Send func(to netip.AddrPort, msg []byte) error
	// RekeyAfter: age at which a session is replaced (default 2 min).
	RekeyAfter time.Duration
	// HandshakeRetry: how long to wait for a response before trying again
	// (default 5 s, or RekeyAfter/4 when that is shorter).
	HandshakeRetry time.Duration
	// OnSession, when set, is called without locks held each time a new
	// session with peer becomes the one to send with: the router then sends
	// the packets that waited for it. It must not block for long.
	OnSession func(peer string)
	// DisableAES makes this host offer only ChaCha20-Poly1305, as a host
	// without AES hardware does. For tests and benchmarks.
	DisableAES bool
	Logger     *slog.Logger
	// Clock returns the current time (default time.Now). Tests pass a fake.
	Clock func() time.Time
}

func (c *Config) validate() error {
	if c.Identity.IsZero() {
		return errors.New("crypto config: identity is not set")
	}
	if c.PSK == [32]byte{} {
		return errors.New("crypto config: PSK is zero; derive it from the password")
	}
	if c.Send == nil {
		return errors.New("crypto config: Send is nil")
	}
	if c.RekeyAfter < 0 || c.HandshakeRetry < 0 {
		return errors.New("crypto config: negative interval")
	}
	if c.RekeyAfter == 0 {
		c.RekeyAfter = DefaultRekeyAfter
	}
	if c.HandshakeRetry == 0 {
		c.HandshakeRetry = min(DefaultHandshakeRetry, c.RekeyAfter/4)
	}
	c.Logger = logx.OrDiscard(c.Logger)
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return nil
}

// keypair is one session: keys for both directions with one peer, made by
// one handshake. Its fields after the atomics are immutable.
type keypair struct {
	sendCounter atomic.Uint64
	sendExpired atomic.Bool // too old to send with; still receives
	expired     atomic.Bool // forgotten: refuses send and receive
	unconfirmed atomic.Bool // responder side: peer has not used it yet
	rekeyAsked  atomic.Bool // the counter passed rekeyAfterMessages

	replayMu sync.Mutex
	replay   replayWindow

	send, recv  cipher.AEAD
	cipher      cipherID
	localIndex  uint32 // the index the peer puts in messages to us
	remoteIndex uint32 // the index we put in messages to the peer
	initiator   bool
	created     time.Time
	seq         uint64 // creation order within this Manager
	peer        *peer
}

// peer is a remote host we may hold sessions with.
type peer struct {
	name     string
	pub      [32]byte
	macs     macKeys  // keys of the MACs on messages to this peer
	staticDH [32]byte // DH(our static, its static), fixed per pair

	current atomic.Pointer[keypair] // the session Seal uses
	kicked  atomic.Bool             // Seal asked for a handshake already

	// Guarded by Manager.mu.
	ep            netip.AddrPort
	keypairs      []*keypair // every live session, for receiving
	pending       *initiatorState
	attempts      int // initiations sent since the last success
	lastTimestamp [timestampLen]byte
	established   time.Time
	lastRekey     time.Time
	failures      uint64
}

// dropReason is why Open refused a datagram.
type dropReason int

const (
	dropShort dropReason = iota
	dropMalformed
	dropUnknownSession
	dropExpired
	dropAuth
	dropReplay
	numDropReasons
)

var dropReasonNames = [numDropReasons]string{"short", "malformed", "unknown_session", "expired", "auth", "replay"}

// Manager runs handshakes with peers and seals and opens data-plane
// messages with the resulting sessions.
//
// Seal and Open take no lock on their common path: peers and sessions are
// found in copy-on-write maps behind atomic pointers, which the rare
// control-plane changes replace under mu.
type Manager struct {
	cfg         Config
	log         *slog.Logger
	rejectAfter time.Duration
	tickEvery   time.Duration
	localAES    bool
	ownMACs     macKeys // keys of the MACs on messages to us
	kick        chan struct{}

	peers    atomic.Pointer[map[string]*peer]
	sessions atomic.Pointer[map[uint32]*keypair]

	mu          sync.Mutex
	byKey       map[[32]byte]*peer
	pending     map[uint32]*peer // our initiations in flight, by our index
	limiter     rateLimiter
	lastTS      [timestampLen]byte
	seq         uint64
	lastPSKWarn time.Time

	hsFailures [numFailReasons]atomic.Uint64
	drops      [numDropReasons]atomic.Uint64
	initiated  atomic.Uint64
	completed  atomic.Uint64
	rekeys     atomic.Uint64
	tieDropped atomic.Uint64
	keepalives atomic.Uint64
}

// NewManager checks cfg and makes a Manager with no peers.
func NewManager(cfg Config) (*Manager, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m := &Manager{
		cfg:         cfg,
		log:         cfg.Logger,
		rejectAfter: rejectFactor * cfg.RekeyAfter,
		tickEvery:   min(time.Second, max(5*time.Millisecond, min(cfg.RekeyAfter/20, cfg.HandshakeRetry/5))),
		localAES:    hasAESHardware() && !cfg.DisableAES,
		kick:        make(chan struct{}, 1),
		byKey:       make(map[[32]byte]*peer),
		pending:     make(map[uint32]*peer),
	}
	pub := cfg.Identity.Public()
	m.ownMACs = newMACKeys(&pub, &cfg.PSK)
	m.peers.Store(&map[string]*peer{})
	m.sessions.Store(&map[uint32]*keypair{})
	return m, nil
}

// Overhead is how many bytes Seal adds around a packet.
func (m *Manager) Overhead() int { return wire.EncryptedHeaderLen + wire.TagLen }

// SetPeer adds a peer or updates its endpoint. A new public key for a known
// name (the peer was reinstalled) drops its sessions.
func (m *Manager) SetPeer(name string, pub [32]byte, ep netip.AddrPort) {
	if pub == m.cfg.Identity.Public() {
		m.log.Warn("ignoring peer with our own public key", "peer", name)
		return
	}
	m.mu.Lock()
	p := (*m.peers.Load())[name]
	if p != nil && p.pub == pub {
		p.ep = ep
		m.mu.Unlock()
		m.poke()
		return
	}
	if p != nil {
		m.removePeerLocked(p)
	}
	if other := m.byKey[pub]; other != nil {
		m.log.Warn("public key moved to another peer name", "old", other.name, "new", name)
		m.removePeerLocked(other)
	}
	staticDH, err := dh(&m.cfg.Identity.private, &pub)
	if err != nil {
		m.mu.Unlock()
		m.log.Warn("ignoring peer with an invalid public key", "peer", name)
		return
	}
	p = &peer{name: name, pub: pub, macs: newMACKeys(&pub, &m.cfg.PSK), staticDH: staticDH, ep: ep}
	peers := cloneMap(*m.peers.Load())
	peers[name] = p
	m.peers.Store(&peers)
	m.byKey[pub] = p
	m.mu.Unlock()
	m.poke()
}

// RemovePeer forgets a peer and its sessions.
func (m *Manager) RemovePeer(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := (*m.peers.Load())[name]; p != nil {
		m.removePeerLocked(p)
	}
}

func (m *Manager) removePeerLocked(p *peer) {
	peers := cloneMap(*m.peers.Load())
	delete(peers, p.name)
	m.peers.Store(&peers)
	delete(m.byKey, p.pub)
	m.abandonPending(p)
	m.dropSessions(p.keypairs...)
	p.keypairs = nil
	p.current.Store(nil)
}

// Run drives the timers (rekey, handshake retry, session expiry) until ctx
// ends.
func (m *Manager) Run(ctx context.Context) {
	t := time.NewTicker(m.tickEvery)
	defer t.Stop()
	m.tick()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.kick:
		}
		m.tick()
	}
}

// poke wakes Run without blocking.
func (m *Manager) poke() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

type outMsg struct {
	to  netip.AddrPort
	msg []byte
}

func (m *Manager) sendAll(out []outMsg) {
	for _, o := range out {
		if err := m.cfg.Send(o.to, o.msg); err != nil {
			m.log.Debug("sending handshake failed", "to", o.to, "err", err)
		}
	}
}

// tick expires old sessions, retries lost handshakes and starts the ones
// that are due. Every peer always gets a session, so that the first packet
// to a peer does not wait for a handshake.
func (m *Manager) tick() {
	now := m.cfg.Clock()
	var out []outMsg
	m.mu.Lock()
	for _, p := range *m.peers.Load() {
		m.expireLocked(p, now)
		if st := p.pending; st != nil && now.Sub(st.sentAt) >= m.cfg.HandshakeRetry {
			p.failures++
			m.hsFailures[FailTimeout].Add(1)
			m.abandonPending(p)
		}
		if p.pending == nil && m.handshakeDue(p, now) {
			msg, err := m.initiateLocked(p, now)
			if err != nil {
				m.log.Warn("cannot start handshake", "peer", p.name, "err", err)
				continue
			}
			out = append(out, outMsg{p.ep, msg})
		}
	}
	m.limiter.prune(now)
	m.mu.Unlock()
	m.sendAll(out)
}

func (m *Manager) expireLocked(p *peer, now time.Time) {
	live := p.keypairs[:0]
	var dead []*keypair
	for _, kp := range p.keypairs {
		age := now.Sub(kp.created)
		switch {
		case age >= m.rejectAfter+m.cfg.HandshakeRetry || kp.sendCounter.Load() >= rejectAfterMessages:
			dead = append(dead, kp)
		case age >= m.rejectAfter:
			// The peer made its copy of the session up to a handshake
			// later than we did and may send with it a little longer.
			kp.sendExpired.Store(true)
			live = append(live, kp)
		default:
			live = append(live, kp)
		}
	}
	clear(p.keypairs[len(live):])
	p.keypairs = live
	m.dropSessions(dead...)
	if cur := p.current.Load(); cur != nil && cur.sendExpired.Load() {
		p.current.Store(nil)
	}
}

// handshakeDue says whether we should start a handshake with p now. Only the
// initiator of the current session rekeys it on time, so that the two ends
// do not race; the responder steps in later if that fails.
func (m *Manager) handshakeDue(p *peer, now time.Time) bool {
	if !p.ep.IsValid() {
		return false
	}
	cur := p.current.Load()
	if cur == nil {
		// The peer may just have run a handshake with us whose confirmation
		// is on its way; give it time before starting our own.
		for _, kp := range p.keypairs {
			if kp.unconfirmed.Load() && now.Sub(kp.created) < m.cfg.HandshakeRetry {
				return false
			}
		}
		return true
	}
	age := now.Sub(cur.created)
	switch {
	case cur.rekeyAsked.Load():
		return true
	case cur.initiator:
		return age >= m.cfg.RekeyAfter
	default:
		return age >= m.cfg.RekeyAfter+m.cfg.RekeyAfter/2
	}
}

func (m *Manager) initiateLocked(p *peer, now time.Time) ([]byte, error) {
	m.abandonPending(p)
	idx, err := m.newIndexLocked()
	if err != nil {
		return nil, err
	}
	offer := uint8(offerChaCha)
	if m.localAES {
		offer |= offerAES
	}
	msg, st, err := createInitiation(&m.cfg.Identity, &p.pub, &p.staticDH, &p.macs, idx, m.nextTimestampLocked(now), offer)
	if err != nil {
		return nil, err
	}
	st.sentAt = now
	p.pending = st
	p.attempts++
	m.pending[idx] = p
	m.initiated.Add(1)
	return msg, nil
}

func (m *Manager) abandonPending(p *peer) {
	if p.pending != nil {
		delete(m.pending, p.pending.sender)
		p.pending = nil
	}
}

// nextTimestampLocked returns a timestamp later than any sent before, even
// if the clock stands still or steps back.
func (m *Manager) nextTimestampLocked(now time.Time) [timestampLen]byte {
	ts := timestamp(now)
	if bytes.Compare(ts[:], m.lastTS[:]) <= 0 {
		ts = m.lastTS
		for i := len(ts) - 1; i >= 0; i-- {
			ts[i]++
			if ts[i] != 0 {
				break
			}
		}
	}
	m.lastTS = ts
	return ts
}

func (m *Manager) newIndexLocked() (uint32, error) {
	sessions := *m.sessions.Load()
	for {
		idx, err := randomIndex()
		if err != nil {
			return 0, fmt.Errorf("session index: %w", err)
		}
		if _, used := sessions[idx]; used {
			continue
		}
		if _, used := m.pending[idx]; used {
			continue
		}
		return idx, nil
	}
}

// HandleHandshake processes one handshake datagram from the data plane.
// Whatever is wrong with it is counted (Counters) and answered with nothing.
func (m *Manager) HandleHandshake(from netip.AddrPort, msg []byte) {
	err := m.handleHandshake(from, msg)
	if err == nil {
		return
	}
	if reason, ok := failReasonOf(err); ok {
		m.hsFailures[reason].Add(1)
		if reason == FailWrongPSK {
			m.warnWrongPSK(from)
		}
	}
	m.log.Debug("handshake refused", "from", from, "err", err)
}

// warnWrongPSK tells the operator, at most once a minute, that a host with
// another password is trying to join; the count is in Counters.
func (m *Manager) warnWrongPSK(from netip.AddrPort) {
	now := m.cfg.Clock()
	m.mu.Lock()
	due := now.Sub(m.lastPSKWarn) >= time.Minute
	if due {
		m.lastPSKWarn = now
	}
	m.mu.Unlock()
	if due {
		m.log.Warn("refused handshake from a host with a different password", "from", from)
	}
}

func (m *Manager) handleHandshake(from netip.AddrPort, msg []byte) error {
	kind, err := parseHandshake(msg)
	if err != nil {
		return err
	}
	if err := m.ownMACs.check(msg); err != nil {
		return err
	}
	if kind == kindInitiation {
		return m.handleInitiation(from, msg)
	}
	return m.handleResponse(from, msg)
}

func (m *Manager) handleInitiation(from netip.AddrPort, msg []byte) error {
	now := m.cfg.Clock()
	m.mu.Lock()
	allowed := m.limiter.allow(from.Addr(), now)
	m.mu.Unlock()
	if !allowed {
		return ErrRateLimited
	}
	in, err := consumeInitiation(&m.cfg.Identity, msg, m.staticDHWith)
	if err != nil {
		return err
	}

	m.mu.Lock()
	p := m.byKey[in.peerPub]
	if p == nil { // removed meanwhile
		m.mu.Unlock()
		return ErrUnknownPeerKey
	}
	if bytes.Compare(in.timestamp[:], p.lastTimestamp[:]) <= 0 {
		m.mu.Unlock()
		return ErrReplayedInitiation
	}
	p.lastTimestamp = in.timestamp
	// Both ends initiated at once: the smaller public key's initiation wins,
	// unless ours already went unanswered (it may not reach the peer).
	if p.pending != nil {
		ourPub := m.cfg.Identity.Public()
		if bytes.Compare(ourPub[:], p.pub[:]) < 0 && p.attempts <= 1 {
			m.mu.Unlock()
			m.tieDropped.Add(1)
			return ErrSimultaneousDropped
		}
		m.abandonPending(p)
	}
	idx, err := m.newIndexLocked()
	if err != nil {
		m.mu.Unlock()
		return err
	}
	resp, keys, err := createResponse(in, &m.cfg.PSK, &p.macs, idx, chooseCipher(in.offer, m.localAES))
	if err != nil {
		m.mu.Unlock()
		return err
	}
	kp, err := m.newKeypairLocked(p, keys, idx, in.sender, false, now)
	if err != nil {
		m.mu.Unlock()
		return err
	}
	kp.unconfirmed.Store(true)
	m.dropUnconfirmedLocked(p)
	m.installLocked(p, kp)
	m.mu.Unlock()
	m.completed.Add(1)
	m.sendAll([]outMsg{{from, resp}})
	return nil
}

// staticDHWith returns the precomputed DH with a known peer's static key.
func (m *Manager) staticDHWith(pub [32]byte) ([32]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.byKey[pub]
	if p == nil {
		return [32]byte{}, ErrUnknownPeerKey
	}
	return p.staticDH, nil
}

func (m *Manager) handleResponse(from netip.AddrPort, msg []byte) error {
	idx := binary.BigEndian.Uint32(msg[4:8])
	m.mu.Lock()
	p := m.pending[idx]
	var st *initiatorState
	if p != nil {
		st = p.pending
	}
	m.mu.Unlock()
	if st == nil {
		return ErrUnknownIndex
	}
	keys, remote, err := consumeResponse(st, &m.cfg.Identity, &m.cfg.PSK, msg)
	if err != nil {
		m.mu.Lock()
		p.failures++
		m.mu.Unlock()
		return err
	}

	now := m.cfg.Clock()
	m.mu.Lock()
	if p.pending != st { // superseded by a retry, or the peer was removed
		m.mu.Unlock()
		return ErrUnknownIndex
	}
	delete(m.pending, idx)
	p.pending = nil
	kp, err := m.newKeypairLocked(p, keys, idx, remote, true, now)
	if err != nil {
		m.mu.Unlock()
		return err
	}
	m.installLocked(p, kp)
	m.makeCurrentLocked(p, kp, now)
	// The responder sends with the new session only once it has received
	// on it; an empty message confirms it without waiting for traffic.
	keepalive := make([]byte, m.Overhead())
	sealWith(kp, keepalive, 0)
	m.mu.Unlock()
	m.completed.Add(1)
	m.sendAll([]outMsg{{from, keepalive}})
	m.sessionUp(p.name)
	return nil
}

func (m *Manager) sessionUp(peer string) {
	if m.cfg.OnSession != nil {
		m.cfg.OnSession(peer)
	}
}

func (m *Manager) newKeypairLocked(p *peer, keys sessionKeys, local, remote uint32, initiator bool, now time.Time) (*keypair, error) {
	send, err := newAEAD(keys.cipher, &keys.send)
	if err != nil {
		return nil, err
	}
	recv, err := newAEAD(keys.cipher, &keys.recv)
	if err != nil {
		return nil, err
	}
	m.seq++
	return &keypair{
		send: send, recv: recv, cipher: keys.cipher,
		localIndex: local, remoteIndex: remote, initiator: initiator,
		created: now, seq: m.seq, peer: p,
	}, nil
}

// dropUnconfirmedLocked forgets responder sessions the peer never used. A
// new initiation means the peer gave up on its earlier ones (it refuses late
// responses to them), so they can never be confirmed.
func (m *Manager) dropUnconfirmedLocked(p *peer) {
	var dead []*keypair
	p.keypairs = slices.DeleteFunc(p.keypairs, func(kp *keypair) bool {
		if kp.unconfirmed.Load() {
			dead = append(dead, kp)
			return true
		}
		return false
	})
	m.dropSessions(dead...)
}

// installLocked makes kp receivable, evicting the oldest session beyond the
// per-peer bound (never the current one).
func (m *Manager) installLocked(p *peer, kp *keypair) {
	p.keypairs = append(p.keypairs, kp)
	sessions := cloneMap(*m.sessions.Load())
	sessions[kp.localIndex] = kp
	for len(p.keypairs) > maxKeypairsPerPeer {
		cur := p.current.Load()
		i := slices.IndexFunc(p.keypairs, func(k *keypair) bool { return k != cur })
		old := p.keypairs[i]
		p.keypairs = slices.Delete(p.keypairs, i, i+1)
		old.sendExpired.Store(true)
		old.expired.Store(true)
		delete(sessions, old.localIndex)
	}
	m.sessions.Store(&sessions)
}

func (m *Manager) makeCurrentLocked(p *peer, kp *keypair, now time.Time) {
	if p.current.Swap(kp) != nil {
		m.rekeys.Add(1)
	}
	if p.established.IsZero() {
		p.established = now
	}
	p.lastRekey = now
	p.attempts = 0
	p.kicked.Store(false)
}

// dropSessions makes keypairs unusable and forgets their indices.
func (m *Manager) dropSessions(kps ...*keypair) {
	if len(kps) == 0 {
		return
	}
	sessions := cloneMap(*m.sessions.Load())
	for _, kp := range kps {
		kp.sendExpired.Store(true)
		kp.expired.Store(true)
		delete(sessions, kp.localIndex)
	}
	m.sessions.Store(&sessions)
}

// confirm makes a responder-side session current once the peer has used it.
func (m *Manager) confirm(kp *keypair) {
	now := m.cfg.Clock()
	m.mu.Lock()
	if !kp.unconfirmed.Swap(false) || kp.expired.Load() {
		m.mu.Unlock()
		return
	}
	p := kp.peer
	made := false
	if cur := p.current.Load(); cur == nil || cur.seq < kp.seq {
		m.makeCurrentLocked(p, kp, now)
		made = true
	}
	m.mu.Unlock()
	if made {
		m.sessionUp(p.name)
	}
}

// Seal encrypts one packet in place for peer. msg[:16] is room for the
// header (msg[2], the flags, is kept as the caller set it), the plaintext is msg[16:16+plainLen], and cap(msg) must leave room
// for the 16-byte tag. It returns the length of the datagram to send,
// msg[:n]. With no usable session it returns ErrNoSession and a handshake is
// started in the background; the caller drops the packet.
func (m *Manager) Seal(peerName string, msg []byte, plainLen int) (int, error) {
	total := wire.EncryptedHeaderLen + plainLen + wire.TagLen
	if plainLen < 0 || cap(msg) < total {
		return 0, ErrShortBuffer
	}
	p := (*m.peers.Load())[peerName]
	if p == nil {
		return 0, ErrUnknownPeer
	}
	kp := p.current.Load()
	if kp == nil || kp.sendExpired.Load() {
		m.askHandshake(p)
		return 0, ErrNoSession
	}
	n, ok := sealWith(kp, msg[:total], plainLen)
	if !ok {
		m.askHandshake(p)
		return 0, ErrNoSession
	}
	return n, nil
}

// sealWith seals msg[16:16+plainLen] in place with kp. It reports false
// when kp has used up its counters.
func sealWith(kp *keypair, msg []byte, plainLen int) (int, bool) {
	counter := kp.sendCounter.Add(1) - 1
	if counter >= rekeyAfterMessages {
		if counter >= rejectAfterMessages {
			return 0, false
		}
		kp.rekeyAsked.Store(true)
	}
	msg = msg[:wire.EncryptedHeaderLen+plainLen+wire.TagLen]
	wire.PutEncrypted(msg, kp.remoteIndex, counter, msg[2]) // the caller's flags stay, authenticated
	// The nonce is the receiver's index and the counter, msg[4:16]: unique
	// per key (a key serves one index in one direction) and already in the
	// buffer, so sealing allocates nothing. The header is the AD.
	body := msg[wire.EncryptedHeaderLen:wire.EncryptedHeaderLen]
	kp.send.Seal(body, msg[4:wire.EncryptedHeaderLen], msg[wire.EncryptedHeaderLen:wire.EncryptedHeaderLen+plainLen], msg[:wire.EncryptedHeaderLen])
	return len(msg), true
}

func (m *Manager) askHandshake(p *peer) {
	if !p.kicked.Swap(true) {
		m.poke()
	}
}

// Open checks and decrypts one TypeEncrypted datagram in place. It returns
// the plaintext (a sub-slice of msg) and the sending peer's name. An empty
// plaintext is a keepalive: there is nothing to deliver. Errors are the
// sentinels ErrShort, ErrMalformed, ErrUnknownSession, ErrExpired, ErrAuth
// and ErrReplay, unwrapped, and each is counted.
func (m *Manager) Open(from netip.AddrPort, msg []byte) ([]byte, string, error) {
	if len(msg) < wire.EncryptedHeaderLen+wire.TagLen {
		return nil, "", m.drop(dropShort, ErrShort)
	}
	if msg[0] != wire.Version || wire.Type(msg[1]) != wire.TypeEncrypted || msg[3] != 0 {
		return nil, "", m.drop(dropMalformed, ErrMalformed)
	}
	kp := (*m.sessions.Load())[binary.BigEndian.Uint32(msg[4:8])]
	if kp == nil {
		return nil, "", m.drop(dropUnknownSession, ErrUnknownSession)
	}
	if kp.expired.Load() {
		return nil, "", m.drop(dropExpired, ErrExpired)
	}
	counter := binary.BigEndian.Uint64(msg[wire.HeaderLen:wire.EncryptedHeaderLen])
	// Cheap check first, so that a flood of replayed datagrams costs no
	// decryption; the authoritative check follows the tag.
	kp.replayMu.Lock()
	maybeFresh := kp.replay.mayAccept(counter, rejectAfterMessages)
	kp.replayMu.Unlock()
	if !maybeFresh {
		return nil, "", m.drop(dropReplay, ErrReplay)
	}
	body := msg[wire.EncryptedHeaderLen:]
	plain, err := kp.recv.Open(body[:0], msg[4:wire.EncryptedHeaderLen], body, msg[:wire.EncryptedHeaderLen])
	if err != nil {
		return nil, "", m.drop(dropAuth, ErrAuth)
	}
	// The window is updated only after the tag verified, so forged
	// counters cannot move it.
	kp.replayMu.Lock()
	fresh := kp.replay.accept(counter, rejectAfterMessages)
	kp.replayMu.Unlock()
	if !fresh {
		return nil, "", m.drop(dropReplay, ErrReplay)
	}
	if kp.unconfirmed.Load() {
		m.confirm(kp)
	}
	if len(plain) == 0 {
		m.keepalives.Add(1)
	}
	return plain, kp.peer.name, nil
}

func (m *Manager) drop(r dropReason, err error) error {
	m.drops[r].Add(1)
	return err
}

// SessionInfo describes the session with one peer, for status output.
type SessionInfo struct {
	Peer      string
	PublicKey [32]byte
	Endpoint  netip.AddrPort
	State     SessionState
	// Cipher of the current session: "aes-256-gcm" or "chacha20-poly1305";
	// empty without a session.
	Cipher string
	// Established is when the first session with the peer was made in this
	// run; LastRekey when the current one was made. Zero if never.
	Established time.Time
	LastRekey   time.Time
	// HandshakeFailures counts handshakes with this peer that timed out or
	// whose response did not verify.
	HandshakeFailures uint64
}

// Sessions reports every peer, sorted by name.
func (m *Manager) Sessions() []SessionInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []SessionInfo
	for _, p := range *m.peers.Load() {
		si := SessionInfo{
			Peer: p.name, PublicKey: p.pub, Endpoint: p.ep, State: SessionNone,
			Established: p.established, LastRekey: p.lastRekey, HandshakeFailures: p.failures,
		}
		if cur := p.current.Load(); cur != nil && !cur.sendExpired.Load() {
			si.State, si.Cipher = SessionEstablished, cur.cipher.String()
		} else if p.pending != nil {
			si.State = SessionHandshake
		}
		out = append(out, si)
	}
	slices.SortFunc(out, func(a, b SessionInfo) int { return cmp.Compare(a.Peer, b.Peer) })
	return out
}

// Counters returns event and failure counts for metrics. Keys:
// handshake_failed_<reason> (malformed, bad_mac, wrong_psk, decrypt,
// replayed_initiation, rate_limited, unknown_peer, unknown_index, timeout),
// open_dropped_<reason> (short, malformed, unknown_session, expired, auth,
// replay), handshake_initiated, handshake_completed, rekeys,
// handshake_tiebreak_dropped, keepalives_received.
func (m *Manager) Counters() map[string]uint64 {
	c := make(map[string]uint64, int(numFailReasons)+int(numDropReasons)+5)
	for r := FailReason(0); r < numFailReasons; r++ {
		c["handshake_failed_"+snake(r.String())] = m.hsFailures[r].Load()
	}
	for r := dropReason(0); r < numDropReasons; r++ {
		c["open_dropped_"+dropReasonNames[r]] = m.drops[r].Load()
	}
	c["handshake_initiated"] = m.initiated.Load()
	c["handshake_completed"] = m.completed.Load()
	c["rekeys"] = m.rekeys.Load()
	c["handshake_tiebreak_dropped"] = m.tieDropped.Load()
	c["keepalives_received"] = m.keepalives.Load()
	return c
}

func snake(s string) string {
	b := []byte(s)
	for i, ch := range b {
		if ch == '-' {
			b[i] = '_'
		}
	}
	return string(b)
}

func cloneMap[K comparable, V any](src map[K]V) map[K]V {
	dst := make(map[K]V, len(src)+1)
	for k, v := range src {
		dst[k] = v
	}
	return dst
}
