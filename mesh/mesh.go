// Package mesh is weft's membership: which peers exist, how to reach them, and
// the carriage of replicated state (the IPAM ring) between them, over
// hashicorp/memberlist gossip.
//
// memberlist forgets a dead node after a while and never looks for it again,
// so a partition would stay split. Mesh keeps its own list of join targets
// (the PEER arguments, `weft connect`, and every peer seen) and re-joins
// those that are not alive, with backoff: the operator's for as long as it
// runs, learnt ones until they have been dead for Timing.TargetExpiry.
package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/weftnet/weft/internal/logx"
)

// Channel tags the user messages and state of one subsystem riding on gossip.
type Channel byte

// Channels in use.
const (
	ChannelIPAM   Channel = 1
	ChannelHealth Channel = 2 // agents' health summaries (weft status mesh)
)

// Handler receives one channel's messages and state.
type Handler interface {
	// HandleMessage gets a broadcast or direct message; it must not keep msg.
	HandleMessage(msg []byte)
	// LocalState is this peer's full state for a push/pull exchange.
	LocalState() []byte
	// MergeState merges a remote peer's full state.
	MergeState(buf []byte) error
}

// Digester is a Handler whose state in a periodic push/pull can be a
// digest of it: joins carry LocalState, the periodic exchanges LocalDigest,
// and a handler whose state differs from a digest it merges fetches the
// full state over its channel. A full state in every periodic exchange
// grows with the mesh (the IPAM ring of a thousand peers is some 100 kB).
type Digester interface {
	LocalDigest() []byte
}

// JoinStater is a Handler whose state in a join is smaller than its full
// state. Every member answers the joins of newcomers with its own state,
// and when a mesh starts they all join the same few peers: N joins of a
// state that grows with N cost those peers N² bytes. A handler whose state
// a newcomer can learn later (from broadcasts and the periodic push/pull)
// sends JoinState instead. Digester's periodic digest is unaffected.
type JoinStater interface {
	JoinState() []byte
}

// Timing are the failure-detection and rejoin intervals.
type Timing struct {
	ProbeInterval    time.Duration // how often one peer is probed
	ProbeTimeout     time.Duration // how long a probe waits for its ack
	SuspicionMult    int           // suspicion lasts SuspicionMult × ProbeInterval (scaled by log of size)
	GossipInterval   time.Duration // how often broadcasts are sent
	PushPullInterval time.Duration // how often full state is exchanged with one random peer
	RejoinInterval   time.Duration // how often targets that are not alive are joined again
	RejoinMaxBackoff time.Duration // backoff cap for a target that keeps failing
	TCPTimeout       time.Duration // dial timeout of a join
	// TargetExpiry is how long a join target learnt from membership is
	// re-dialled after it was last alive; then it is dropped. Targets the
	// operator gave are kept. 0 means DefaultTargetExpiry.
	TargetExpiry time.Duration
}

// DefaultTargetExpiry: a host down for longer than ten minutes is more
// likely gone for good than rebooting; if it comes back it joins by itself
// (its own targets name a live peer) and is learnt again.
const DefaultTargetExpiry = 10 * time.Minute

// DefaultMaxBroadcasts caps the queue of subsystem broadcasts. Each is at
// most one UDP packet (about 1.4 kB); past the cap the most-sent ones are
// dropped (and counted): push/pull repairs what they carried.
const DefaultMaxBroadcasts = 1024

// DefaultTiming suits a LAN or a cloud VPC: a dead peer is noticed in about 5 s
// and a healed partition is whole again within a few seconds of the link.
func DefaultTiming() Timing {
	return Timing{
		ProbeInterval:    time.Second,
		ProbeTimeout:     500 * time.Millisecond,
		SuspicionMult:    4,
		GossipInterval:   200 * time.Millisecond,
		PushPullInterval: 15 * time.Second,
		RejoinInterval:   2 * time.Second,
		RejoinMaxBackoff: 10 * time.Second,
		TCPTimeout:       3 * time.Second,
		TargetExpiry:     DefaultTargetExpiry,
	}
}

// LocalTiming is a preset for meshes inside one machine (loopback, network
// namespaces, an in-memory transport), in the spirit of memberlist's
// DefaultLocalConfig but faster still: a dead peer is noticed in well under
// a second and a healed partition is whole again within about a second. It
// costs about ten times DefaultTiming's gossip traffic, which is nothing on
// one host and too much for a real network; it is for tests and simulations.
func LocalTiming() Timing {
	return Timing{
		ProbeInterval:    100 * time.Millisecond,
		ProbeTimeout:     50 * time.Millisecond,
		SuspicionMult:    2,
		GossipInterval:   20 * time.Millisecond,
		PushPullInterval: time.Second,
		RejoinInterval:   200 * time.Millisecond,
		RejoinMaxBackoff: time.Second,
		TCPTimeout:       500 * time.Millisecond,
	}
}

// Config of one mesh member.
type Config struct {
	Name      string
	Bind      netip.Addr // underlay address to bind and advertise
	Port      int        // gossip port, TCP and UDP
	Meta      Meta
	SecretKey []byte // 32-byte gossip key, nil for none
	Pins      Pins   // signing keys pinned to names; nil = no pinning (tests)
	Timing    Timing
	// MaxBroadcasts caps the broadcast queue; 0 means DefaultMaxBroadcasts.
	MaxBroadcasts int
	Logger        *slog.Logger
	// StateDir keeps the peers of the last run (KnownPeersFile): a
	// restarted member rejoins them at once, and Members lists them (state
	// unknown) until gossip speaks. "" keeps nothing.
	StateDir string
	// Transport carries gossip in place of memberlist's own UDP and TCP
	// sockets on Bind:Port, e.g. an in-memory network in tests (see
	// mesh/meshtest). It must answer FinalAdvertiseAddr with Bind:Port,
	// which peers use to reach this member. The mesh owns it from New on
	// and shuts it down with memberlist. nil: real sockets.
	Transport memberlist.NodeAwareTransport
	// OnRefusal, if set, is told of every gossip refused for a reason an
	// operator can act on (a different password, ...), unthrottled: the
	// agent turns these into Kubernetes Events. It runs on memberlist's
	// goroutines and must not block.
	OnRefusal func(Refusal)

	// compress gossip with LZW as earlier agents did (tests of a
	// mixed mesh only; see memberlistConfig).
	compress bool
}

// Mesh is this agent's view of the mesh.
type Mesh struct {
	cfg      Config
	log      *slog.Logger
	listp    atomic.Pointer[memberlist.Memberlist] // replaced by Rebind; see ml
	delegate *delegate
	queue    *broadcastQueue
	baseMult int // memberlist's retransmit multiplier
	started  time.Time
	now      func() time.Time // the clock of join targets; tests replace it

	rebindMu sync.Mutex // one Rebind at a time, and none during leave

	mu       sync.Mutex
	bind     netip.Addr // the address bound and advertised now (Config.Bind until a Rebind)
	handlers map[Channel]Handler
	peers    map[string]*peer // every peer ever seen, by name
	// byAddr: the peer last seen at a gossip address (host:port), an
	// alive one kept against one that is not: rejoin asks it of every
	// target at every pass, without listing the members.
	byAddr map[string]*peer
	// aliveNames caches AliveNames; nil when a state changed since.
	aliveNames []string
	// stateGen counts changes of peer states and of targets
	// (changedLocked); scannedGen is the one rejoin's last scan of the
	// targets saw, and down and aliveOthers what it found.
	stateGen, scannedGen uint64
	down                 []*target
	aliveOthers          int
	rejoinScans          atomic.Int64       // scans, read by tests
	targets              map[string]*target // addresses to keep joining, by host:port
	// marked: the peers with suspect set (verifySuspects looks at these
	// only), and verifying: how many of them are being pinged.
	marked    map[string]bool
	verifying int
	onChange  []func()
	closing   bool
	changed   chan struct{} // coalesced membership-change signal, drained by Run

	// KnownPeersFile as last written, whether membership changed since,
	// when it was written, and how many times; Run's goroutine only.
	savedKnown   []byte
	knownDirty   bool
	knownSavedAt time.Time
	knownWrites  atomic.Int64 // read by tests
	// lastChange: when the OnChange callbacks last ran (Run's goroutine).
	lastChange time.Time

	// inbox holds subsystem messages for Run to hand to their handlers:
	// memberlist delivers them on the goroutine that also handles its
	// alive, suspect and dead messages, and a handler that verifies a
	// signature and writes a file there (IPAM) held those up until
	// memberlist's queue overflowed and dropped them (seen at 100 agents).
	inbox        chan []byte
	inboxDropped atomic.Uint64

	// verifyWG: the pings of verifySuspects and the follow-up push/pulls
	// in flight; Run waits for them.
	verifyWG    sync.WaitGroup
	verifyPings atomic.Int64 // sent, read by tests

	// The follow-up push/pulls of the last join (see followUps), under mu.
	followUpsLeft int
	followUpGap   time.Duration
	followUpAt    time.Time
	followUpsDone atomic.Int64 // started, read by tests
}

type peer struct {
	node  memberlist.Node // last seen (a copy: memberlist's own changes under its lock)
	addr  string          // node.Address(), made once
	meta  Meta
	state State // from events: alive, dead, left (or unknown: from the last run)
	// suspect: alive, but this member's own probe of it went unanswered
	// (memberlist says so in its log; see onSuspect). Cleared by any sign
	// of life. Suspicion raised by other members is not seen: memberlist
	// tells no one, and its Members reads nodes it changes under a lock
	// of its own, a data race (-race found it).
	suspect bool
	since   time.Time
	// verifyAt: when this member next pings a peer it marks suspect itself
	// (verifySuspects); verifying: a ping of it is in flight.
	verifyAt  time.Time
	verifying bool
}

type target struct {
	addr      string // host:port
	explicit  bool   // given by the operator, not learned
	failures  int
	next      time.Time
	lastErr   string
	lastAlive time.Time // last seen alive, or learnt; expiry counts from here
	wasAlive  bool      // alive at the last scan of the targets
}

// New binds the gossip ports and starts memberlist; it does not join anyone yet.
func New(cfg Config) (*Mesh, error) {
	cfg.Logger = logx.OrDiscard(cfg.Logger)
	if cfg.Timing == (Timing{}) {
		cfg.Timing = DefaultTiming()
	}
	if cfg.Timing.TargetExpiry <= 0 {
		cfg.Timing.TargetExpiry = DefaultTargetExpiry
	}
	if cfg.MaxBroadcasts <= 0 {
		cfg.MaxBroadcasts = DefaultMaxBroadcasts
	}
	meta, err := cfg.Meta.Encode()
	if err != nil {
		return nil, fmt.Errorf("node metadata: %w", err)
	}
	m := &Mesh{
		cfg:      cfg,
		log:      cfg.Logger,
		handlers: map[Channel]Handler{},
		peers:    map[string]*peer{},
		byAddr:   map[string]*peer{},
		targets:  map[string]*target{},
		marked:   map[string]bool{},
		started:  time.Now(),
		now:      time.Now,
		changed:  make(chan struct{}, 1),
		inbox:    make(chan []byte, inboxSize),
	}
	if cfg.StateDir != "" {
		// On disk, so not trusted blindly: a file that does not check out
		// is ignored (and replaced at the next membership change).
		known, err := LoadKnownPeers(cfg.StateDir)
		if err != nil {
			m.log.Warn("ignoring the peers of the last run", "err", err)
		} else if len(known) > 0 {
			m.seedKnown(known)
			m.log.Info("rejoining the peers of the last run", "peers", len(known))
		}
	}
	d := &delegate{m: m}
	d.meta.Store(&meta)
	m.delegate = d

	m.bind = cfg.Bind
	mc := m.memberlistConfig(cfg.Bind, cfg.Bind, cfg.Transport)
	mc.Delegate = d
	mc.Events = d
	mc.Alive = d
	mc.Merge = d
	mc.Conflict = d
	mc.Ping = d
	// Subsystem broadcasts (ring changes) matter more than memberlist's own
	// chatter and a lost one is only repaired at the next push/pull: send
	// each more often than memberlist's default. Made before Create: its
	// gossip goroutines ask for broadcasts at once (a data race with an
	// assignment after it, seen under -race).
	m.queue = newBroadcastQueue(func() int {
		if l := m.ml(); l != nil {
			return l.NumMembers()
		}
		return 1
	}, 3*mc.RetransmitMult, cfg.MaxBroadcasts)
	m.baseMult = mc.RetransmitMult
	list, err := memberlist.Create(mc)
	if err != nil {
		if cfg.Transport != nil {
			// memberlist shuts a transport down only once it has started.
			_ = cfg.Transport.Shutdown()
		}
		return nil, fmt.Errorf("start gossip on %s:%d: %w", cfg.Bind, cfg.Port, err)
	}
	m.listp.Store(list)
	m.log.Info("listening for gossip", "address", net.JoinHostPort(cfg.Bind.String(), strconv.Itoa(cfg.Port)),
		"encrypted", len(cfg.SecretKey) > 0)
	return m, nil
}

// memberlistConfig is memberlist's configuration for this member bound to
// bind and advertising advertise, without the delegates.
func (m *Mesh) memberlistConfig(bind, advertise netip.Addr, transport memberlist.NodeAwareTransport) *memberlist.Config {
	cfg := m.cfg
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr = bind.String()
	mc.BindPort = cfg.Port
	mc.AdvertiseAddr = advertise.String()
	mc.AdvertisePort = cfg.Port
	mc.ProbeInterval = cfg.Timing.ProbeInterval
	mc.ProbeTimeout = cfg.Timing.ProbeTimeout
	mc.SuspicionMult = cfg.Timing.SuspicionMult
	mc.GossipInterval = cfg.Timing.GossipInterval
	mc.PushPullInterval = cfg.Timing.PushPullInterval
	mc.TCPTimeout = cfg.Timing.TCPTimeout
	// No LZW: memberlist compresses every packet it sends, pings and acks
	// included, and Go's LZW writer and reader zero about 64 kB and 20 kB
	// of tables per message. In a simulated mesh of 1,000 agents that was
	// the largest CPU cost of all; it saves little on packets of a few
	// hundred bytes, and a LAN has bandwidth to spare (site/benchmarks.md
	// has the figures). Peers that still compress are understood: memberlist
	// decodes compressed messages whatever its own setting.
	mc.EnableCompression = cfg.compress
	mc.Logger = newMemberlistLogger(cfg.Logger, m.suspected, cfg.OnRefusal)
	if transport != nil {
		mc.Transport = transport
	}
	if len(cfg.SecretKey) > 0 {
		mc.SecretKey = cfg.SecretKey
		mc.GossipVerifyIncoming = true
		mc.GossipVerifyOutgoing = true
	}
	return mc
}

// clock is m.now, or the wall clock for a Mesh made without New (tests).
func (m *Mesh) clock() time.Time {
	if m.now == nil {
		return time.Now()
	}
	return m.now()
}

// ml is the memberlist of this member now.
func (m *Mesh) ml() *memberlist.Memberlist { return m.listp.Load() }

// Handle registers the handler of one channel; call before Run.
func (m *Mesh) Handle(ch Channel, h Handler) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.handlers[ch] = h
}

// OnChange registers f to be called (from a mesh goroutine) after membership changes.
func (m *Mesh) OnChange(f func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.onChange = append(m.onChange, f)
}

// inboxSize bounds the subsystem messages waiting for their handler; past
// it they are dropped (and counted), as memberlist would drop them: gossip
// retransmits and push/pull repair what they carried.
const inboxSize = 4096

// Run keeps joining targets and delivers subsystem messages until ctx is
// done, then leaves the mesh cleanly.
func (m *Mesh) Run(ctx context.Context) {
	tick := time.NewTicker(m.cfg.Timing.RejoinInterval / 4)
	defer tick.Stop()
	knownTick := time.NewTicker(knownSaveEvery)
	defer knownTick.Stop()
	verifyTick := time.NewTicker(max(m.cfg.Timing.ProbeTimeout, 10*time.Millisecond))
	defer verifyTick.Stop()
	delivered := make(chan struct{})
	go func() {
		defer close(delivered)
		for {
			select {
			case <-ctx.Done():
				return
			case b := <-m.inbox:
				m.deliver(b)
			}
		}
	}()
	defer func() { <-delivered }()
	defer m.verifyWG.Wait()
	m.rejoin(ctx)
	// A change that comes sooner than changeSpacing after the last one
	// handled waits for this timer (nil channel: none pending).
	var pending <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			if m.knownDirty {
				m.saveKnown()
			}
			m.leave()
			return
		case <-tick.C:
			m.rejoin(ctx)
			m.followUp(ctx, m.now())
		case <-verifyTick.C:
			m.verifySuspects(ctx)
		case <-knownTick.C:
			if m.knownDirty && m.knownDue() {
				m.saveKnown()
			}
		case <-m.changed:
			if pending != nil {
				continue // handled when the timer fires, this change too
			}
			if wait := m.changeWait(); wait > 0 {
				pending = time.After(wait)
				continue
			}
			m.notifyChange()
		case <-pending:
			pending = nil
			m.notifyChange()
		}
	}
}

// changeSpacingPerPeer spaces the handling of membership changes (the
// OnChange callbacks) by this much per member. Each handling reads the
// whole membership (routes, metrics, IPAM's view: O(N)), and while a mesh
// forms every member sees N changes: N² work at each of N members. At a
// thousand members changes are handled at most every half second (about
// 2 ms of CPU a second while the mesh forms), at fifty every 25 ms.
const changeSpacingPerPeer = 500 * time.Microsecond

// changeWait is how long the next membership change must wait to be
// handled (Run's goroutine).
func (m *Mesh) changeWait() time.Duration {
	m.mu.Lock()
	n := len(m.peers)
	m.mu.Unlock()
	return m.lastChange.Add(time.Duration(n) * changeSpacingPerPeer).Sub(time.Now())
}

func (m *Mesh) leave() {
	m.rebindMu.Lock()
	defer m.rebindMu.Unlock()
	m.mu.Lock()
	m.closing = true
	m.mu.Unlock()
	leaving := m.cfg.Meta
	leaving.Leaving = true
	if b, err := leaving.Encode(); err == nil {
		m.delegate.meta.Store(&b)
		if err := m.ml().UpdateNode(time.Second); err != nil {
			m.log.Debug("announcing leave", "err", err)
		}
	}
	if err := m.ml().Leave(2 * time.Second); err != nil {
		m.log.Warn("leaving the mesh", "err", err)
	} else {
		m.log.Info("left the mesh")
	}
	if err := m.ml().Shutdown(); err != nil {
		m.log.Warn("stopping gossip", "err", err)
	}
}

// Connect adds operator-given join targets (host or host:port).
func (m *Mesh) Connect(addrs []string) error {
	norm := make([]string, 0, len(addrs))
	for _, a := range addrs {
		n, err := NormalizeTarget(a, m.cfg.Port)
		if err != nil {
			return err
		}
		norm = append(norm, n)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, a := range norm {
		t := m.targets[a]
		if t == nil {
			t = &target{addr: a}
			m.targets[a] = t
		}
		t.explicit = true
		t.next, t.failures = time.Time{}, 0
	}
	m.changedLocked()
	return nil
}

// Forget removes join targets; peers already joined stay until they leave.
func (m *Mesh) Forget(addrs []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, a := range addrs {
		n, err := NormalizeTarget(a, m.cfg.Port)
		if err != nil {
			return err
		}
		delete(m.targets, n)
	}
	m.changedLocked()
	return nil
}

// NormalizeTarget turns "host" or "host:port" into host:port.
func NormalizeTarget(s string, defaultPort int) (string, error) {
	if s == "" {
		return "", errors.New("empty peer address")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		// No port given (or a bare IPv6 address).
		host, port = s, strconv.Itoa(defaultPort)
	}
	if host == "" {
		return "", fmt.Errorf("peer %q: no host", s)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return "", fmt.Errorf("peer %q: bad port %q", s, port)
	}
	return net.JoinHostPort(host, port), nil
}

// rejoin joins every target that is due and not an alive member, each in its
// own goroutine so one unreachable address does not hold up the others.
//
// A pass runs every quarter rejoin interval at every member; looking up
// every target's peer at each (as it did) was an O(N) pass twice a second
// at each of N members, the largest cost of weft's own in a simulated mesh
// of 300 idle agents. So the targets are scanned only when a peer's state
// or the targets changed since the last scan (stateGen), which keeps the
// ones not alive (down); passes in between look at those only.
func (m *Mesh) rejoin(ctx context.Context) {
	now := m.now()
	var due, learnt []*target
	m.mu.Lock()
	self := net.JoinHostPort(m.bind.String(), strconv.Itoa(m.cfg.Port))
	if m.scannedGen != m.stateGen || m.scannedGen == 0 {
		m.scanTargetsLocked(now)
	}
	kept := m.down[:0]
	for _, t := range m.down {
		if m.targets[t.addr] != t {
			continue // forgotten or replaced
		}
		if !t.explicit && now.Sub(t.lastAlive) > m.cfg.Timing.TargetExpiry {
			delete(m.targets, t.addr)
			m.log.Info("dropped a join target dead for too long", "target", t.addr,
				"dead_for", now.Sub(t.lastAlive).Round(time.Second), "expiry", m.cfg.Timing.TargetExpiry)
			continue
		}
		kept = append(kept, t)
		if t.addr == self || now.Before(t.next) {
			continue
		}
		if t.explicit {
			due = append(due, t)
		} else {
			learnt = append(learnt, t)
		}
	}
	clear(m.down[len(kept):])
	m.down = kept
	due = append(due, pickLearnt(learnt, m.aliveOthers)...)
	for _, t := range due {
		// Mark as in flight so the next tick does not start a second join.
		t.next = now.Add(m.cfg.Timing.RejoinMaxBackoff + m.cfg.Timing.TCPTimeout)
	}
	m.mu.Unlock()
	for _, t := range due {
		go m.joinOne(ctx, t)
	}
}

// scanTargetsLocked counts the alive peers and lists the targets that are
// not alive (m.down). A target alive now was last alive now; one that was
// alive at the last scan and is not any more was alive until about now
// (its state changed since, or there would be no scan).
func (m *Mesh) scanTargetsLocked(now time.Time) {
	m.scannedGen = m.stateGen
	m.rejoinScans.Add(1)
	m.aliveOthers = 0
	for name, p := range m.peers {
		if name != m.cfg.Name && p.current() == StateAlive {
			m.aliveOthers++
		}
	}
	clear(m.down)
	m.down = m.down[:0]
	for _, t := range m.targets {
		alive := m.aliveAtLocked(t.addr)
		if alive || t.wasAlive {
			t.lastAlive = now
		}
		t.wasAlive = alive
		if !alive {
			m.down = append(m.down, t)
		}
	}
}

// changedLocked notes a change of a peer's state or of the targets: the
// cached alive names and the rejoin pass's scan are out of date.
func (m *Mesh) changedLocked() {
	m.aliveNames = nil
	m.stateGen++
}

// Learnt join targets that are not alive are peers this member lost: a
// partition, a crash. One join across a healed partition is enough, as
// memberlist's gossip then tells both sides about each other; every member
// re-dialling every peer it lost, each join a full state exchange, is N²
// joins when a big mesh heals. So a member with alive peers joins one lost
// peer per pass with a chance that makes about rejoinFanout joins per pass
// in the whole mesh; a member alone tries up to maxLearntJoins per pass.
const (
	rejoinFanout   = 2
	maxLearntJoins = 4
)

// pickLearnt chooses the learnt targets to join in this pass.
func pickLearnt(learnt []*target, aliveOthers int) []*target {
	if len(learnt) == 0 {
		return nil
	}
	n := maxLearntJoins
	if aliveOthers > 0 {
		n = 0
		if rand.Float64()*float64(aliveOthers) < rejoinFanout {
			n = 1
		}
	}
	rand.Shuffle(len(learnt), func(i, j int) { learnt[i], learnt[j] = learnt[j], learnt[i] })
	return learnt[:min(n, len(learnt))]
}

// joinBackoff is the wait before the next join of a target that failed
// failures times: doubling from RejoinInterval up to RejoinMaxBackoff, and
// drawn (r in [0,1)) from its upper half. When a whole mesh starts at once,
// every agent joins the same first peer; under that load the joins time
// out together, and retries at the same moments time out together again.
// The draw spreads them out.
func joinBackoff(t Timing, failures int, r float64) time.Duration {
	b := min(t.RejoinInterval<<min(failures-1, 4), t.RejoinMaxBackoff)
	return b/2 + time.Duration(r*float64(b/2))
}

func (m *Mesh) joinOne(ctx context.Context, t *target) {
	if ctx.Err() != nil {
		return
	}
	m.log.Debug("joining", "target", t.addr)
	before := m.ml().NumMembers()
	n, err := m.ml().Join([]string{t.addr})
	// Never call memberlist with m.mu held: memberlist calls the delegate,
	// which takes m.mu, with its node lock held (a deadlock seen with 100
	// agents joining at once).
	members := m.ml().NumMembers()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil || n == 0 {
		t.failures++
		backoff := joinBackoff(m.cfg.Timing, t.failures, rand.Float64())
		t.next = m.now().Add(backoff)
		msg := explainJoinError(err)
		if msg != t.lastErr || t.failures == 1 {
			level := slog.LevelWarn
			if !t.explicit {
				level = slog.LevelDebug
			}
			m.log.Log(ctx, level, "could not join peer, will retry", "target", t.addr, "reason", msg, "retry_in", backoff)
		}
		t.lastErr = msg
		return
	}
	if t.failures > 0 || t.lastErr != "" || t.explicit {
		m.log.Info("joined", "target", t.addr, "peers", members)
	}
	t.failures, t.lastErr = 0, ""
	t.lastAlive = m.now()
	t.next = t.lastAlive.Add(m.cfg.Timing.RejoinInterval)
	if members > before {
		m.followUpsLeft, m.followUpGap = followUps, 2*m.cfg.Timing.RejoinInterval
		m.followUpAt = t.lastAlive.Add(m.followUpGap)
	}
}

// A join is a push/pull with one peer: this member learns the members that
// peer knew then, and nothing more until gossip tells it. When a mesh
// starts, everyone joins the same first peer at once, and the early
// joiners hear of the later ones only from gossip, whose every message is
// retransmitted a bounded number of times to the members each sender knew
// then: in a simulated mesh of 100, a few agents still missed a few peers
// 20 s after the others had them all, until memberlist's periodic
// push/pull (every 45 s at 100 members, 90 s at 1,000) filled the gap.
// So after a join a member does followUps more push/pulls with a random
// alive member, each after twice the wait of the one before (2, 4 and 8
// rejoin intervals): the last one comes after most of a starting mesh has
// joined. Each is a join's exchange (the node list, and the small join
// state of IPAM and health), and there are followUps per join, not per
// member: a restart or a mesh's start costs each agent three. A join that
// brought no member this one did not have (a rejoin of a peer it marked
// suspect, say) schedules none: it is not catching up, and in a mesh of
// hundreds, where some peer is suspect now and then, every such rejoin
// started three more exchanges of the whole member list, so the follow-ups
// never ended.
const followUps = 3

// FollowUpsPending is how many follow-up push/pulls of the last join are
// still to come: until then a member that joined is still catching up,
// and its traffic is that of a join, not of a steady state.
func (m *Mesh) FollowUpsPending() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.followUpsLeft
}

// followUp does the next follow-up push/pull if it is due (rejoin's pass).
func (m *Mesh) followUp(ctx context.Context, now time.Time) {
	m.mu.Lock()
	if m.followUpsLeft == 0 || now.Before(m.followUpAt) {
		m.mu.Unlock()
		return
	}
	m.followUpsLeft--
	m.followUpGap *= 2
	m.followUpAt = now.Add(m.followUpGap)
	var addrs []string
	for name, p := range m.peers {
		if name != m.cfg.Name && p.current() == StateAlive {
			addrs = append(addrs, p.addr)
		}
	}
	m.mu.Unlock()
	if len(addrs) == 0 {
		return
	}
	addr := addrs[rand.IntN(len(addrs))]
	m.followUpsDone.Add(1)
	m.verifyWG.Add(1)
	go func() {
		defer m.verifyWG.Done()
		if ctx.Err() != nil {
			return
		}
		if _, err := m.ml().Join([]string{addr}); err != nil {
			m.log.Debug("follow-up push/pull after a join", "peer", addr, "err", err)
		}
	}()
}

// Broadcast gossips msg on channel ch to every peer, eventually.
func (m *Mesh) Broadcast(ch Channel, msg []byte) { m.enqueue(ch, "", msg) }

// BroadcastKeyed is Broadcast of a message that replaces the one on channel
// ch with the same key still queued: only the latest state of a key (e.g.
// one ring entry) is worth sending.
func (m *Mesh) BroadcastKeyed(ch Channel, key string, msg []byte) {
	m.enqueue(ch, string([]byte{byte(ch)})+key, msg)
}

func (m *Mesh) enqueue(ch Channel, key string, msg []byte) {
	b := make([]byte, 1+len(msg))
	b[0] = byte(ch)
	copy(b[1:], msg)
	mult := m.queue.mult
	if ch == ChannelHealth {
		// Informational, and refreshed by its sender: memberlist's own
		// count is enough. Every retransmit is paid by every member, and
		// in a big mesh these summaries were most of the steady gossip.
		mult = m.baseMult
	}
	if dropped := m.queue.addMult(key, b, mult); dropped > 0 && m.queue.droppedTotal() == uint64(dropped) {
		m.log.Warn("gossip broadcast queue full: dropping the most-sent broadcasts (push/pull repairs them); further drops are only counted",
			"cap", m.cfg.MaxBroadcasts)
	}
}

// BroadcastStats are the counters of the broadcast queue.
type BroadcastStats struct {
	Queued  int    // not yet sent as often as planned
	Dropped uint64 // dropped by the cap since start
	// InboxDropped counts received messages dropped because their handler
	// was too far behind.
	InboxDropped uint64
}

// BroadcastStats reads the broadcast queue's counters.
func (m *Mesh) BroadcastStats() BroadcastStats {
	return BroadcastStats{Queued: m.queue.len(), Dropped: m.queue.droppedTotal(), InboxDropped: m.inboxDropped.Load()}
}

// SendTo sends msg on channel ch to the named peer over TCP.
func (m *Mesh) SendTo(name string, ch Channel, msg []byte) error {
	m.mu.Lock()
	p := m.peers[name]
	var node memberlist.Node
	if p != nil {
		node = p.node // a copy: memberlist reads it while we may change ours
	}
	reachable := p != nil && p.state.Reachable() // under m.mu: record changes it
	m.mu.Unlock()
	if !reachable {
		return fmt.Errorf("peer %s is not a member", name)
	}
	b := make([]byte, 1+len(msg))
	b[0] = byte(ch)
	copy(b[1:], msg)
	if err := m.ml().SendReliable(&node, b); err != nil {
		return fmt.Errorf("send to %s: %w", name, err)
	}
	return nil
}

// Transport adapts one channel of the mesh to what a replicated subsystem needs.
type Transport struct {
	Mesh    *Mesh
	Channel Channel
}

func (t Transport) Broadcast(msg []byte)                  { t.Mesh.Broadcast(t.Channel, msg) }
func (t Transport) BroadcastKeyed(key string, msg []byte) { t.Mesh.BroadcastKeyed(t.Channel, key, msg) }
func (t Transport) SendTo(peer string, msg []byte) error  { return t.Mesh.SendTo(peer, t.Channel, msg) }

// PeerInfo is a peer's reachability for the data plane.
type PeerInfo struct {
	Name  string
	Addr  netip.Addr
	Meta  Meta
	State State
}

// Members returns every peer ever seen, this one included, sorted by name.
func (m *Mesh) Members() []PeerInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]PeerInfo, 0, len(m.peers))
	for name, p := range m.peers {
		addr, _ := netip.AddrFromSlice(p.node.Addr)
		out = append(out, PeerInfo{Name: name, Addr: addr.Unmap(), Meta: p.meta, State: p.current()})
	}
	// SortFunc, not sort.Slice: membership handling lists every member
	// at each change, and sort.Slice's reflection showed in profiles.
	slices.SortFunc(out, func(a, b PeerInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// AliveNames returns the names of alive members, this one included, sorted.
// IPAM asks it at every membership check: the sorted list is kept until a
// member's state changes, and each call gets a copy.
func (m *Mesh) AliveNames() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.aliveNames == nil {
		out := make([]string, 0, len(m.peers))
		for name, p := range m.peers {
			if p.current() == StateAlive {
				out = append(out, name)
			}
		}
		sort.Strings(out)
		m.aliveNames = out
	}
	if len(m.aliveNames) == 0 {
		return nil
	}
	return slices.Clone(m.aliveNames)
}

// IsAlive reports whether name is an alive member.
func (m *Mesh) IsAlive(name string) bool { return m.stateOf(name) == StateAlive }

// Reachable reports whether name is an alive or suspect member: a suspect
// may be only slow, and routing still sends to it, so it is never taken over.
func (m *Mesh) Reachable(name string) bool { return m.stateOf(name).Reachable() }

func (m *Mesh) stateOf(name string) State {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.peers[name]; p != nil {
		return p.current()
	}
	return StateUnknown
}

// aliveAddrsLocked are the gossip addresses of the alive peers, this one
// left out.
func (m *Mesh) aliveAddrsLocked() map[string]bool {
	alive := map[string]bool{}
	for name, p := range m.peers {
		if name != m.cfg.Name && p.current() == StateAlive {
			alive[p.addr] = true
		}
	}
	return alive
}

// aliveAtLocked reports whether a peer other than this one is alive at
// gossip address addr.
func (m *Mesh) aliveAtLocked(addr string) bool {
	p := m.byAddr[addr]
	return p != nil && p.addr == addr && p.node.Name != m.cfg.Name && p.current() == StateAlive
}

// indexAddrLocked records p (just changed) at its address, unless an
// alive peer is there already.
func (m *Mesh) indexAddrLocked(p *peer) {
	if m.byAddr == nil {
		m.byAddr = map[string]*peer{}
	}
	if old := m.byAddr[p.addr]; old == nil || old == p || old.addr != p.addr || old.current() != StateAlive {
		m.byAddr[p.addr] = p
	}
}

// current is the peer's state with this member's suspicion applied.
func (p *peer) current() State {
	if p.state == StateAlive && p.suspect {
		return StateSuspect
	}
	return p.state
}

// Peer is one member as `weft status peers` shows it.
type Peer struct {
	Name     string
	Address  string // underlay host:port of gossip
	DataPort int    // UDP port of the data plane
	State    State
	Local    bool
	Version  string
	Protocol int
	Since    time.Time // last state change seen
}

// Peers lists every peer ever seen, the local one first, then by name.
func (m *Mesh) Peers() []Peer {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Peer, 0, len(m.peers))
	for name, p := range m.peers {
		out = append(out, Peer{
			Name:     name,
			Address:  p.addr,
			DataPort: int(p.meta.DataPort),
			State:    p.current(),
			Local:    name == m.cfg.Name,
			Version:  p.meta.Version,
			Protocol: int(p.meta.Protocol),
			Since:    p.since,
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Local != out[j].Local {
			return out[i].Local
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Targets lists the addresses this agent keeps joining, sorted.
func (m *Mesh) Targets() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for a, t := range m.targets {
		if t.explicit {
			out = append(out, a)
		}
	}
	sort.Strings(out)
	return out
}

// Counts returns members known and alive, this one included.
func (m *Mesh) Counts() (known, alive int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	known = len(m.peers)
	for _, p := range m.peers {
		if p.current() == StateAlive {
			alive++
		}
	}
	return known, alive
}

func (m *Mesh) notifyChange() {
	m.lastChange = time.Now()
	m.mu.Lock()
	fs := append([]func(){}, m.onChange...)
	m.mu.Unlock()
	for _, f := range fs {
		f()
	}
	m.knownDirty = true
	if m.knownDue() {
		m.saveKnown()
	}
}

// knownSaveEvery spaces the writes of KnownPeersFile: it lists every peer,
// and a mesh forming changes with every peer that joins, so a write per
// change was N writes of N peers at every agent (a thousand agents forming
// wrote about 100 MB each). The last change is written at most this late,
// in a mesh of up to knownSaveEvery / knownSavePerPeer members; in a larger
// one the spacing grows with it (knownSpacing), so that an agent writes
// about the same bytes a second whatever the mesh's size: a thousand
// agents each writing their 100 kB file and fsyncing it every second was
// 100 MB/s for the machine (a simulation) or the disk (each host). What a
// restart misses of the last seconds is harmless: it rejoins any of the
// peers it lists, and learns the rest from it.
const (
	knownSaveEvery   = time.Second
	knownSavePerPeer = 20 * time.Millisecond
)

// knownSpacing is the least time between two writes of KnownPeersFile in a
// mesh of n members.
func knownSpacing(n int) time.Duration {
	return max(knownSaveEvery, time.Duration(n)*knownSavePerPeer)
}

// knownDue: a write of KnownPeersFile may happen now (Run's goroutine).
func (m *Mesh) knownDue() bool {
	m.mu.Lock()
	n := len(m.peers)
	m.mu.Unlock()
	return time.Since(m.knownSavedAt) >= knownSpacing(n)
}

// Shutdown stops gossip without leaving, for a start that is abandoned
// before Run.
func (m *Mesh) Shutdown() {
	if err := m.ml().Shutdown(); err != nil {
		m.log.Debug("stopping gossip", "err", err)
	}
}

// StateSize is the size in bytes of what this member sends in a push/pull
// exchange on top of memberlist's own node list: every channel's state.
func (m *Mesh) StateSize() int { return len(m.delegate.LocalState(true)) }
