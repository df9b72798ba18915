package crypto

// The Manager and its peer table.

import (
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/router/wire"
)

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
	upCh        chan struct{} // doorbell of sessionUp, capacity 1
	upMu        sync.Mutex
	up          []string // peers with a new session, not yet taken

	// Handshake datagrams wait here for the handshake worker (Run), so
	// that the receive goroutine never does a Diffie-Hellman.
	hsQueue chan hsJob
	// hsPriority is the queue of datagrams from known peers' underlay
	// addresses (knownEPs): the worker serves it first, so a flood from
	// other addresses never starves the peers' own handshakes.
	hsPriority chan hsJob
	knownEPs   atomic.Pointer[map[netip.Addr]struct{}]
	// epPeers finds a peer by its data endpoint, for Open's drop path.
	epPeers atomic.Pointer[map[netip.AddrPort]*peer]
	dedupMu sync.Mutex
	dedup   dedup // recent initiations, by mac1
	cookies *cookieJar
	// forceLoad makes the Manager act as under load (tests).
	forceLoad atomic.Bool

	peers    atomic.Pointer[map[string]*peer]
	sessions atomic.Pointer[map[uint32]*keypair]

	mu          sync.Mutex
	byKey       map[[32]byte]*peer
	pending     map[uint32]*peer // our initiations in flight, by our index
	limiter     rateLimiter
	lastTS      [timestampLen]byte
	seq         uint64
	lastPSKWarn time.Time
	loadUntil   time.Time // under load until then (at least)

	hsFailures [numFailReasons]atomic.Uint64
	drops      [numDropReasons]atomic.Uint64
	initiated  atomic.Uint64
	completed  atomic.Uint64
	rekeys     atomic.Uint64
	tieDropped atomic.Uint64
	keepalives atomic.Uint64

	cookieSent     atomic.Uint64
	cookieReceived atomic.Uint64
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
		hsQueue:     make(chan hsJob, hsQueueLen),
		hsPriority:  make(chan hsJob, hsPriorityLen),
		upCh:        make(chan struct{}, 1),
		byKey:       make(map[[32]byte]*peer),
		pending:     make(map[uint32]*peer),
	}
	pub := cfg.Identity.Public()
	m.ownMACs = newMACKeys(&pub, &cfg.PSK)
	m.cookies = newCookieJar(&pub, &cfg.PSK, cfg.Clock)
	m.peers.Store(&map[string]*peer{})
	m.knownEPs.Store(&map[netip.Addr]struct{}{})
	m.epPeers.Store(&map[netip.AddrPort]*peer{})
	m.sessions.Store(&map[uint32]*keypair{})
	return m, nil
}

// Overhead is how many bytes Seal adds around a packet.
func (m *Manager) Overhead() int { return wire.EncryptedHeaderLen + wire.TagLen }

// peer is a remote host we may hold sessions with.
type peer struct {
	name     string
	pub      [32]byte
	macs     macKeys  // keys of the MACs on messages to this peer
	cookieKy [32]byte // key of the cookie replies this peer sends us
	staticDH [32]byte // DH(our static, its static), fixed per pair

	current atomic.Pointer[keypair] // the session Seal uses
	kicked  atomic.Bool             // Seal asked for a handshake already
	// unknownAt (Clock, Unix nanoseconds) is when data in a session we do
	// not know last made us hurry a handshake (see Open); it rate-limits that.
	unknownAt atomic.Int64
	hurry     atomic.Bool // tick: retry a pending initiation now, not after HandshakeRetry

	// Guarded by Manager.mu.
	ep            netip.AddrPort
	keypairs      []*keypair // every live session, for receiving
	pending       *initiatorState
	attempts      int // initiations sent since the last success
	lastInit      time.Time
	lastTimestamp [timestampLen]byte
	established   time.Time
	lastRekey     time.Time
	failures      uint64
	cookie        [cookieLen]byte // the peer's cookie for our address
	cookieAt      time.Time       // when it came; zero: none
}

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
		m.knownAddrsLocked()
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
	p = &peer{name: name, pub: pub, macs: newMACKeys(&pub, &m.cfg.PSK), cookieKy: cookieKey(&pub, &m.cfg.PSK), staticDH: staticDH, ep: ep}
	peers := cloneMap(*m.peers.Load())
	peers[name] = p
	m.peers.Store(&peers)
	m.byKey[pub] = p
	m.knownAddrsLocked()
	m.mu.Unlock()
	m.poke()
}

// knownAddrsLocked gives the known peers' underlay addresses their own
// rate-limit buckets.
func (m *Manager) knownAddrsLocked() {
	var addrs []netip.Addr
	eps := make(map[netip.AddrPort]*peer)
	for _, p := range *m.peers.Load() {
		if p.ep.IsValid() {
			addrs = append(addrs, p.ep.Addr())
			eps[netip.AddrPortFrom(p.ep.Addr().Unmap(), p.ep.Port())] = p
		}
	}
	m.epPeers.Store(&eps)
	m.limiter.setKnown(addrs)
	known := make(map[netip.Addr]struct{}, len(addrs))
	for _, a := range addrs {
		known[a.Unmap()] = struct{}{}
	}
	m.knownEPs.Store(&known)
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
	m.knownAddrsLocked()
}

func cloneMap[K comparable, V any](src map[K]V) map[K]V {
	dst := make(map[K]V, len(src)+1)
	for k, v := range src {
		dst[k] = v
	}
	return dst
}
