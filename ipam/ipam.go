// Package ipam splits the mesh's pod address range between peers and hands
// out addresses to containers.
//
// The split is a ring (see ring.go): a CRDT of range keys, each written only
// by its owner, merged by version. Peers carry it over the mesh: changed keys
// as small broadcasts, the whole ring through push/pull. The ring is created
// once, by a fixed seed list, by single-decree Paxos among a quorum of peers
// (paxos.go), or learnt from others (observer). Allocation is local to the
// ranges a peer owns; a peer that runs out asks another for a donation.
package ipam

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/internal/logx"
)

// Errors at the API boundary; the agent maps them to api.Code* values.
var (
	ErrNotReady     = errors.New("IPAM not ready")
	ErrExhausted    = errors.New("address range exhausted")
	ErrNotFound     = errors.New("not found")
	ErrPeerAlive    = errors.New("peer is alive")
	ErrConflict     = errors.New("address conflict")
	ErrRingMismatch = errors.New("IPAM ring mismatch")
	ErrPeerSuspect  = errors.New("peer is suspect (slow or briefly unreachable, not dead)")
	// ErrUnauthenticated: a message not signed by the pinned key of the
	// peer it names, or a replay of one already seen.
	ErrUnauthenticated = errors.New("unauthenticated IPAM message")
)

// HostContainerID is the container ID under which the agent allocates
// addresses for the host itself (the bridge gateway). GC never releases it.
const HostContainerID = "weft:host"

// Transport carries IPAM messages between peers (mesh.Transport).
type Transport interface {
	Broadcast(msg []byte)
	SendTo(peer string, msg []byte) error
}

// Config of one peer's IPAM.
type Config struct {
	Name      string
	Range     netip.Prefix
	Init      Init
	StateDir  string // "" = no persistence (tests)
	Transport Transport
	Logger    *slog.Logger
	// Alive is membership's view of a peer (mesh.IsAlive); nil = all alive.
	Alive func(name string) bool
	// Reachable: alive or suspect (mesh.Reachable). Such a peer's ranges are
	// never taken over, by this peer or by anyone this peer listens to;
	// nil = Alive.
	Reachable func(name string) bool
	// Peers lists the alive members, this one included or not (mesh.AliveNames).
	// Consensus proposes to them; nil = the peers heard from so far.
	Peers func() []string
	Clock func() time.Time // nil = time.Now
	// Signer is this peer's long-term signing key (identity.Signer); every
	// message and ring entry it writes is signed with it. Required.
	Signer Signer
	// PeerKey is the signing key pinned to a peer's name (mesh.PeerKey).
	// Messages and entries of a peer without one are refused.
	PeerKey func(name string) (ed25519.PublicKey, bool)
	// PeerGone is told (outside IPAM's lock) the name of a peer whose last
	// range was taken over, here or by anyone: it is gone for good, and
	// the agent clears its pinned key, so a reinstalled host of that name
	// is trusted afresh and the pins do not grow with every name ever seen.
	PeerGone func(name string)
}

// Timing of the background work; zero fields take defaults.
const (
	tickInterval     = 200 * time.Millisecond
	paxosTimeout     = 2 * time.Second // a proposal not chosen by then is retried higher
	rankDelay        = 300 * time.Millisecond
	getStateInterval = 2 * time.Second
	refusalMemory    = 2 * time.Second // a donor that said no is skipped this long
	saveInterval     = 5 * time.Second // others' ring changes are saved this often

	// membershipEvery: membership is compared with the last view at least
	// this often, and at once on a change.
	membershipEvery = time.Second
	// ringCapEvery: the ring key cap follows the mesh size, counted this
	// often (a count lists every member: per tick it costs N² in a mesh).
	ringCapEvery = 2 * time.Second
	// missedMargin: a peer may have missed a broadcast of ours sent up to
	// this long before we noticed it gone (failure detection is not
	// instant), so such a write is announced again when it comes back.
	missedMargin = 30 * time.Second
)

// IPAM is one peer's address manager. All methods are safe for concurrent use.
type IPAM struct {
	cfg      Config
	log      *slog.Logger
	size     uint64
	rangeStr string
	store    *store // nil: no persistence
	now      func() time.Time

	owners  atomic.Pointer[ownerTable]
	changes chan struct{}
	kick    chan struct{} // PeersChanged: run a tick now
	// announce: membership changed; see at the next tick whether a peer
	// came back that may have missed our own entries.
	announce atomic.Bool

	// donationRetry is how often a waiting Allocate asks again; tests shorten it.
	donationRetry time.Duration

	mu     sync.Mutex
	ring   *ring // nil until created or learnt
	allocs map[Attachment]*Allocation
	used   []uint64 // sorted offsets of allocs
	left   bool     // handed everything over; no more allocation
	dirty  bool     // own free counts changed since the last broadcast
	// persistPending: others' entries changed since the last save.
	persistPending bool
	lastSave       time.Time
	wake           chan struct{}
	outbox         []outMsg
	reported       map[uint64]bool // allocations already reported as lost, by offset

	acceptor       persistedAcceptor
	proposal       *proposal
	maxRound       uint64
	nextTry        time.Time             // earliest next proposal
	senders        map[string]*sender    // authenticated peers heard from: replay windows
	inc, seq       uint64                // this peer's incarnation and last sequence number
	started        time.Time             // when New ran (Clock)
	takeoverWarned time.Time             // last refused takeover logged
	ringCap        int                   // ringCapLocked, counted at each tick
	takenOver      map[string]bool       // peers a takeover was accepted of, since the last flush
	refused        map[string]time.Time  // donors that had nothing, when
	asked          map[string]askedDonor // donors asked while this peer had no space
	lastGet        time.Time
	// Push/pull digests found equal to this peer's ring, and full states
	// asked because they differed; digestAsked is when each peer was last
	// asked (bounded: cleared past maxDigestAsked peers).
	digestsEqual, digestAsks uint64
	digestAsked              map[string]time.Time
	// stateAsked: peers asked for their full ring, when (askStateLocked).
	stateAsked map[string]time.Time
	// lastGapAsk: when this peer last asked for the ring because its own
	// had a gap; gapAsks counts such asks.
	lastGapAsk time.Time
	gapAsks    uint64
	// gapRun counts the asks for the current gap, gapFrom is where their
	// turn through the alive peers started.
	gapRun, gapFrom int
	acks            map[uint64]chan struct{}
	nonce           uint64
	rng             *rand.Rand
	mismatchN       int // ring mismatches logged (rate limit)
	// Membership as last checked (checkReturnsLocked): who was alive, who
	// went away and when, and when this peer last wrote one of its keys.
	aliveSeen      map[string]bool
	departed       map[string]time.Time
	lastMembership time.Time
	ownWritten     time.Time
	lastRingCap    time.Time // when ringCap was counted
}

type outMsg struct {
	to  string // "" = broadcast
	msg []byte
}

// New validates cfg and restores this peer's state from cfg.StateDir.
func New(cfg Config) (*IPAM, error) {
	cfg.Logger = logx.OrDiscard(cfg.Logger)
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Alive == nil {
		cfg.Alive = func(string) bool { return true }
	}
	if err := validName(cfg.Name); err != nil {
		return nil, fmt.Errorf("ipam: %w", err)
	}
	size, err := rangeSize(cfg.Range)
	if err != nil {
		return nil, fmt.Errorf("ipam: %w", err)
	}
	if cfg.Transport == nil {
		return nil, errors.New("ipam: no transport")
	}
	if cfg.Signer == nil {
		return nil, errors.New("ipam: no signing key")
	}
	switch cfg.Init.Mode {
	case ModeSeed:
		cfg.Init.Seeds = slices.Clone(cfg.Init.Seeds)
		sort.Strings(cfg.Init.Seeds)
		if err := validNames(cfg.Init.Seeds, "seeds"); err != nil {
			return nil, fmt.Errorf("ipam: seed list: %w", err)
		}
	case ModeConsensus:
		if cfg.Init.Quorum < 1 {
			return nil, fmt.Errorf("ipam: consensus needs at least 1 peer, got %d", cfg.Init.Quorum)
		}
	case ModeObserver:
	default:
		return nil, fmt.Errorf("ipam: unknown init mode %q", cfg.Init.Mode)
	}
	p := &IPAM{
		started:       cfg.Clock(),
		cfg:           cfg,
		log:           cfg.Logger.With("component", "ipam"),
		size:          size,
		rangeStr:      cfg.Range.String(),
		now:           cfg.Clock,
		changes:       make(chan struct{}, 1),
		kick:          make(chan struct{}, 1),
		donationRetry: time.Second,
		allocs:        map[Attachment]*Allocation{},
		wake:          make(chan struct{}),
		reported:      map[uint64]bool{},
		senders:       map[string]*sender{},
		takenOver:     map[string]bool{},
		refused:       map[string]time.Time{},
		asked:         map[string]askedDonor{},
		acks:          map[uint64]chan struct{}{},
		aliveSeen:     map[string]bool{},
		departed:      map[string]time.Time{},
		rng:           rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
	}
	if cfg.StateDir != "" {
		if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
			return nil, fmt.Errorf("ipam: state dir: %w", err)
		}
		p.store = newStore(cfg.StateDir)
		if p.inc, err = p.store.nextIncarnation(); err != nil {
			return nil, err
		}
		st, err := p.store.load()
		if err != nil {
			return nil, err
		}
		if st != nil {
			if err := p.restore(st); err != nil {
				return nil, fmt.Errorf("IPAM state %s: %w", p.store.path(), err)
			}
		}
	}
	if p.store == nil {
		// No state: a fresh incarnation each start is enough.
		p.inc = uint64(time.Now().UnixNano())
	}
	if p.ring == nil && cfg.Init.Mode == ModeSeed {
		p.ring = newSeededRing(p.rangeStr, size, cfg.Init.Seeds)
	}
	if p.ring != nil && cfg.Init.Mode == ModeSeed && p.ring.ID != ringID(p.rangeStr, cfg.Init.Seeds) {
		p.log.Warn("ring restored from state was seeded differently from --ipalloc-init; keeping the state",
			"state_seeds", p.ring.Seeds, "init_seeds", cfg.Init.Seeds)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.signOwnLocked()
	p.refreshOwnLocked()
	p.publishLocked()
	p.checkLostLocked()
	if err := p.persistLocked(); err != nil {
		return nil, err
	}
	p.outbox = nil // nothing to say before Run; push/pull will carry the ring
	return p, nil
}

func (p *IPAM) restore(st *persisted) error {
	if st.Name != p.cfg.Name {
		return fmt.Errorf("belongs to peer %q, not %q (each peer needs its own --state-dir)", st.Name, p.cfg.Name)
	}
	if st.Range != p.rangeStr {
		return fmt.Errorf("is for range %s but --ipalloc-range is %s (use the old range, or move the state away to start afresh)", st.Range, p.rangeStr)
	}
	if st.Ring != nil {
		p.ring = st.Ring.toRing()
	}
	for _, a := range st.Allocations {
		a := a
		off, _ := offsetOf(p.cfg.Range, a.Addr)
		p.allocs[Attachment{a.ContainerID, a.IfName}] = &a
		p.used = insertSorted(p.used, off)
	}
	if st.Paxos != nil {
		p.acceptor = *st.Paxos
		p.maxRound = min(max(st.Paxos.Promised.Round, st.Paxos.Accepted.Round), maxRound)
	}
	p.log.Info("restored IPAM state", "file", p.store.path(), "allocations", len(st.Allocations), "ring", st.Ring != nil)
	return nil
}

// Run does the background work until ctx ends: consensus rounds, broadcasts
// of changed free counts, asking for the ring when this peer has none.
func (p *IPAM) Run(ctx context.Context) {
	t := time.NewTicker(tickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.kick:
		}
		p.tick()
	}
}

// PeersChanged tells IPAM that membership changed.
func (p *IPAM) PeersChanged() {
	// A peer may be back from a partition: the next tick checks whether it
	// missed changes of our ranges (checkReturnsLocked). No lock:
	// membership may call this from its own callbacks.
	p.announce.Store(true)
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *IPAM) tick() {
	p.mu.Lock()
	now := p.now()
	if p.ringCap == 0 || now.Sub(p.lastRingCap) >= ringCapEvery {
		p.ringCap, p.lastRingCap = p.countRingCapLocked(), now
	}
	if p.ring == nil && !p.left {
		if p.cfg.Init.Mode == ModeConsensus {
			p.consensusTickLocked(now)
		}
		if p.ring == nil {
			p.askForRingLocked(now, getStateInterval)
		}
	}
	if p.persistPending && now.Sub(p.lastSave) >= saveInterval {
		if err := p.persistLocked(); err != nil {
			p.log.Error("could not persist IPAM state", "err", err)
		}
	}
	p.askForGapLocked(now)
	if p.checkReturnsLocked(now, p.announce.Swap(false)) {
		p.dirty = true
	}
	if p.ring != nil && p.dirty {
		p.dirty = false
		idx, _ := p.ring.ownedBy(p.cfg.Name)
		var es []entry
		for _, i := range idx {
			es = append(es, p.ring.entries[i])
		}
		p.broadcastEntriesLocked(es)
	}
	p.flushUnlock()
}

// checkReturnsLocked reports whether this peer should broadcast its own
// keys because a peer came back (from a partition, a crash) that may have
// missed a change of them. Only then: every peer broadcasting its keys on
// every membership change is N² signed messages while a mesh forms, which
// stalled a simulated mesh at 100 agents; a newcomer learns the whole ring
// by its join's push/pull anyway.
func (p *IPAM) checkReturnsLocked(now time.Time, changed bool) bool {
	if p.cfg.Peers == nil {
		return changed // no view of membership: announce on every change
	}
	if !changed && now.Sub(p.lastMembership) < membershipEvery {
		return false
	}
	p.lastMembership = now
	alive := map[string]bool{}
	for _, n := range p.cfg.Peers() {
		if n != p.cfg.Name {
			alive[n] = true
		}
	}
	announce := false
	for n := range p.aliveSeen {
		if !alive[n] && len(p.departed) < maxSenders {
			p.departed[n] = now
		}
	}
	for n := range alive {
		if gone, ok := p.departed[n]; ok {
			delete(p.departed, n)
			if !p.ownWritten.IsZero() && p.ownWritten.After(gone.Add(-missedMargin)) {
				announce = true
			}
		}
	}
	// Peers gone for good are forgotten once nobody could still miss a write.
	for n, gone := range p.departed {
		if now.Sub(gone) > 24*time.Hour {
			delete(p.departed, n)
		}
	}
	p.aliveSeen = alive
	return announce
}

// askForRingLocked asks one alive peer at random for its ring, at most once
// per interval: someone may have one already.
func (p *IPAM) askForRingLocked(now time.Time, interval time.Duration) {
	if now.Sub(p.lastGet) < interval {
		return
	}
	if peers := p.alivePeersLocked(); len(peers) > 0 {
		p.lastGet = now
		p.askStateLocked(peers[p.rng.IntN(len(peers))], now)
	}
}

// alivePeersLocked lists the other alive peers.
func (p *IPAM) alivePeersLocked() []string {
	var names []string
	if p.cfg.Peers != nil {
		names = p.cfg.Peers()
	} else {
		for n := range p.senders {
			names = append(names, n)
		}
	}
	out := names[:0:0]
	for _, n := range names {
		if n != p.cfg.Name && p.cfg.Alive(n) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// sendLocked queues a message; flushUnlock sends it after the lock is
// released, so a slow TCP send never blocks the IPAM.
func (p *IPAM) sendLocked(to string, m *message) {
	p.outbox = append(p.outbox, outMsg{to: to, msg: p.encodeLocked(m)})
}

// encodeLocked signs m as this peer with the next sequence number.
func (p *IPAM) encodeLocked(m *message) []byte {
	p.seq++
	m.From, m.Inc, m.Seq = p.cfg.Name, p.inc, p.seq
	return encodeMessage(m, p.cfg.Signer)
}

func (p *IPAM) broadcastLocked(m *message) { p.sendLocked("", m) }

// broadcastEntriesLocked gossips ring entries in chunks small enough for
// memberlist's UDP packets.
func (p *IPAM) broadcastEntriesLocked(es []entry) {
	for len(es) > 0 {
		n, size := 0, 0
		for n < len(es) && (n == 0 || size+entryWireSize(es[n]) <= broadcastBudget) {
			size += entryWireSize(es[n])
			n++
		}
		p.broadcastLocked(&message{Type: msgRing, RingID: p.ring.ID, Entries: toWire(es[:n])})
		es = es[n:]
	}
}

func (p *IPAM) flushUnlock() {
	out := p.outbox
	p.outbox = nil
	var gone []string
	for name := range p.takenOver {
		if p.ring == nil {
			break
		}
		if idx, _ := p.ring.ownedBy(name); len(idx) == 0 {
			gone = append(gone, name)
			delete(p.senders, name)
			delete(p.refused, name)
			delete(p.asked, name)
		}
	}
	clear(p.takenOver)
	p.mu.Unlock()
	if p.cfg.PeerGone != nil {
		for _, name := range gone {
			p.log.Info("a removed peer's ranges are all taken over; forgetting it", "peer", name)
			p.cfg.PeerGone(name)
		}
	}
	for _, o := range out {
		if o.to == "" {
			p.cfg.Transport.Broadcast(o.msg)
			continue
		}
		if err := p.cfg.Transport.SendTo(o.to, o.msg); err != nil {
			p.log.Debug("ipam message not sent", "to", o.to, "err", err)
		}
	}
}

// persistLocked writes the state file (a no-op without StateDir).
func (p *IPAM) persistLocked() error {
	if p.store == nil || p.left {
		return nil
	}
	st := &persisted{Format: stateFormat, Name: p.cfg.Name, Range: p.rangeStr, Allocations: p.allocationsLocked()}
	if p.ring != nil {
		st.Ring = &persistedRing{ID: p.ring.ID, Seeds: p.ring.Seeds, Size: p.ring.Size, Entries: toWire(p.ring.entries)}
	}
	if p.acceptor.Promised != (ballot{}) {
		a := p.acceptor
		st.Paxos = &a
	}
	if err := p.store.save(st); err != nil {
		return err
	}
	p.persistPending, p.lastSave = false, p.now()
	return nil
}

// publishLocked swaps in a new owner snapshot and wakes whoever waits for the
// ring: Allocate callers, and the agent via Changes when ownership moved.
func (p *IPAM) publishLocked() {
	close(p.wake)
	p.wake = make(chan struct{})
	if p.ring == nil {
		return
	}
	t := newOwnerTable(p.cfg.Range, p.ring.spans())
	prev := p.owners.Load()
	if t.equal(prev) {
		return
	}
	if prev != nil {
		t.gen = prev.gen
	}
	t.gen++
	p.owners.Store(t)
	select {
	case p.changes <- struct{}{}:
	default:
	}
}

// signOwnLocked rewrites, signed, this peer's keys that carry no valid
// signature: a state file of a build before signed entries, or a signing key
// replaced. Peers refuse unsigned entries they do not already hold.
func (p *IPAM) signOwnLocked() {
	if p.ring == nil {
		return
	}
	for _, e := range p.ownEntriesLocked() {
		if e.Version == 1 && e.Sig == ([sigSize]byte{}) && e.Grant.isZero() {
			continue // a seeded key, which every peer derives alike
		}
		if e.Grant.isZero() && !p.verify(p.cfg.Name, entryPayload(p.ring.ID, e), &e.Sig) {
			p.writeLocked(p.ring, e.Start, e.End, e.Owner, e.Free, reasonNone)
			p.dirty = true
		}
	}
}

// refreshOwnLocked rewrites the free count of every own key that changed (a
// version bump each, as only the owner writes) and trims their ends to what
// they effectively own, so this peer's own keys never overlap.
func (p *IPAM) refreshOwnLocked() (changed []entry) {
	if p.ring == nil || p.left {
		return nil
	}
	idx, ends := p.ring.ownedBy(p.cfg.Name)
	for k, i := range idx {
		e := p.ring.entries[i]
		free := freeIn(e.Start, ends[k], p.size, p.used)
		if free != e.Free || ends[k] != e.End {
			changed = append(changed, p.writeLocked(p.ring, e.Start, ends[k], p.cfg.Name, free, reasonNone))
		}
	}
	if len(changed) > 0 {
		p.dirty = true
	}
	return changed
}

// checkLostLocked reports allocations in ranges another peer now owns: two
// peers believed they owned the same addresses (rmpeer of a live peer, or an
// old state restored). It cannot be fixed here; the operator must know.
func (p *IPAM) checkLostLocked() error {
	t := p.owners.Load()
	if t == nil {
		return nil
	}
	var lost []string
	for _, a := range p.allocs {
		off, _ := offsetOf(p.cfg.Range, a.Addr)
		owner, ok := t.lookup(off)
		if !ok || owner == p.cfg.Name || p.reported[off] {
			continue
		}
		p.reported[off] = true
		lost = append(lost, fmt.Sprintf("%s (container %s) now owned by %s", a.Addr, a.ContainerID, owner))
	}
	if len(lost) == 0 {
		return nil
	}
	sort.Strings(lost)
	err := fmt.Errorf("%w: %d addresses allocated here are owned by other peers, so they may be given out twice (was this peer removed with rmpeer while it was alive?): %v",
		ErrConflict, len(lost), lost)
	p.log.Error("IPAM conflict", "err", err)
	return err
}

// mergeLocked folds remote entries into the ring, logs what needs an
// operator's attention, republishes, persists and gossips our own changes.
// fillGaps: es is a full state this peer asked from, which may fill the
// gaps of its ring (acceptEntryLocked).
func (p *IPAM) mergeLocked(from string, es []entry, fillGaps bool) error {
	for _, e := range es {
		if err := e.validate(p.size); err != nil {
			return fmt.Errorf("%w from %s: %v", ErrBadMessage, from, err)
		}
	}
	if len(es) > p.msgKeysLocked() {
		return fmt.Errorf("%w from %s: %d ring keys, at most %d for this mesh", ErrBadMessage, from, len(es), p.msgKeysLocked())
	}
	ours := false // does the merge touch our own ranges?
	for _, e := range es {
		i, ok := p.ring.find(e.Start)
		if !ok {
			ours = ours || e.Owner == p.cfg.Name
			continue
		}
		cur := p.ring.entries[i]
		if !wins(e, cur) {
			continue
		}
		ours = ours || e.Owner == p.cfg.Name || cur.Owner == p.cfg.Name
		if cur.Owner == p.cfg.Name && e.Owner != p.cfg.Name && !p.left && e.Grant.Reason == reasonTakeover {
			p.log.Warn("a peer took over a range this peer owned (rmpeer while this peer was down or partitioned?); accepting it",
				"from", from, "start", addrAt(p.cfg.Range, e.Start), "new_owner", e.Owner, "version", e.Version, "our_version", cur.Version)
		} else if e.Owner == p.cfg.Name && cur.Owner == p.cfg.Name && e.Version > cur.Version+1 && p.store != nil {
			p.log.Info("peer has a newer version of a range this peer owns (state older than what was gossiped); accepting it",
				"from", from, "start", addrAt(p.cfg.Range, e.Start), "version", e.Version, "our_version", cur.Version)
		}
	}
	changed, conflicts, refused := p.ring.mergeChecked(es, p.acceptEntryLocked(p.ring.ID, fillGaps), p.keyCapLocked())
	var errs []error
	if refused > 0 {
		// Mostly a peer that lags behind an owner change; a forgery looks
		// the same from here and is just as harmless once refused.
		p.log.Debug("refused ring entries not written by their owner, or beyond the key cap", "from", from, "refused", refused)
	}
	for _, c := range conflicts {
		err := fmt.Errorf("%w: %s (from %s); kept %q on every peer; one of them was removed with rmpeer while alive or restored an old state",
			ErrConflict, c, from, winnerOf(c).Owner)
		p.log.Error("IPAM ring conflict", "err", err)
		errs = append(errs, err)
	}
	if !changed {
		return errors.Join(errs...)
	}
	p.refreshOwnLocked()
	p.publishLocked()
	if err := p.checkLostLocked(); err != nil {
		errs = append(errs, err)
	}
	if !ours {
		// Others' ranges can be learnt again from gossip: write them with
		// the next periodic save instead of an fsync per broadcast.
		p.persistPending = true
		return errors.Join(errs...)
	}
	if err := p.persistLocked(); err != nil {
		p.log.Error("could not persist IPAM state after a merge", "err", err)
		errs = append(errs, &persistError{err})
	}
	return errors.Join(errs...)
}

// persistError is a merge that was applied in memory but not written: a
// caller that must not confirm an unwritten change (hand-over) undoes it.
type persistError struct{ err error }

func (e *persistError) Error() string { return "not persisted: " + e.err.Error() }
func (e *persistError) Unwrap() error { return e.err }

func winnerOf(c conflict) entry {
	if wins(c.Remote, c.Local) {
		return c.Remote
	}
	return c.Local
}

// adoptLocked takes a ring learnt from a peer (or chosen by consensus) when
// this peer has none.
func (p *IPAM) adoptLocked(r *ring, how string) {
	p.ring = r
	p.proposal = nil
	p.log.Info("IPAM ring created", "how", how, "seeds", len(r.Seeds), "ring", r.ID)
	p.refreshOwnLocked()
	p.publishLocked()
	p.checkLostLocked()
	if err := p.persistLocked(); err != nil {
		p.log.Error("could not persist IPAM state", "err", err)
	}
}

func (p *IPAM) mismatchErr(from, remoteID string, remoteSeeds []string) error {
	return fmt.Errorf("%w: peer %s has a ring seeded by %v (ring %s), this peer's was seeded by %v (ring %s); "+
		"the two sides were started apart and can never share addresses. Run `weft reset` on the peers of one side "+
		"(they hand their ranges over and forget their state), then launch them again with the same --ipalloc-init",
		ErrRingMismatch, from, remoteSeeds, remoteID, p.ring.Seeds, p.ring.ID)
}

// LocalState is this peer's ring for a push/pull exchange.
func (p *IPAM) LocalState() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.encodeLocked(p.stateMsgLocked())
}

// LocalDigest is this peer's ring for a periodic push/pull: its identity
// and digest, not its entries (mesh.Digester). A peer whose ring differs
// asks for the full state; joins still carry it (LocalState). An older peer
// takes it for a state with no entries: nothing to merge.
func (p *IPAM) LocalDigest() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := &message{Type: msgState, Range: p.rangeStr, Size: p.size}
	if p.ring != nil && !p.left {
		// The seeds stay: an older peer checks the ring ID against them
		// (and merges no entries).
		m.RingID, m.Seeds, m.Digest = p.ring.ID, p.ring.Seeds, p.ring.digest()
	}
	return p.encodeLocked(m)
}

// JoinState is this peer's ring in a join (mesh.JoinStater): the digest,
// as in a periodic push/pull. When a mesh starts, every newcomer joins the
// same few peers, and each join carried the whole ring both ways (encoded
// and signed: the largest CPU cost of a thousand simulated agents
// forming); most newcomers already hold the same ring (seeded, or
// restored from disk), and one that does not (a newcomer without a ring,
// a ring that differs) asks the sender for it at once, as after a periodic
// digest.
func (p *IPAM) JoinState() []byte { return p.LocalDigest() }

// ringCapLocked is the most keys a ring may hold: proportional to the peers,
// as counted at the last tick (counting is not free, and a message needs it
// several times).
func (p *IPAM) ringCapLocked() int {
	if p.ringCap == 0 {
		p.ringCap = p.countRingCapLocked()
	}
	return p.ringCap
}

func (p *IPAM) countRingCapLocked() int {
	n := 1
	if p.cfg.Peers != nil {
		n = max(n, len(p.cfg.Peers())+1)
	} else {
		n = max(n, len(p.senders)+1)
	}
	return ringKeysBase + ringKeysPerPeer*n
}

// maxBodyLocked bounds a message body's bytes before it is parsed.
func (p *IPAM) maxBodyLocked() int { return 4096 + p.msgKeysLocked()*maxEntryJSON }

// keyCapLocked is the most keys merges may grow the ring to: twice the cap
// for this many peers, or what the ring already holds (keys are never
// removed, so a mesh that shrank keeps the keys its peers once split).
// Donations split only below ringCapLocked, so honest peers never reach it.
func (p *IPAM) keyCapLocked() int {
	n := 2 * p.ringCapLocked()
	if p.ring != nil {
		n = max(n, len(p.ring.entries))
	}
	return n
}

// msgKeysLocked is the most ring entries one message may carry.
func (p *IPAM) msgKeysLocked() int { return p.keyCapLocked() + p.ringCapLocked() }

func (p *IPAM) stateMsgLocked() *message {
	m := &message{Type: msgState, Range: p.rangeStr, Size: p.size}
	if p.ring != nil && !p.left {
		m.RingID, m.Seeds, m.Entries = p.ring.ID, p.ring.Seeds, toWire(p.ring.entries)
	}
	return m
}

// MergeState merges a peer's full ring. A ring seeded differently is refused
// with ErrRingMismatch, whose message says how to recover.
func (p *IPAM) MergeState(buf []byte) error {
	p.mu.Lock()
	m, err := p.authenticateLocked(buf)
	if err == nil && m.Type != msgState {
		err = fmt.Errorf("%w: push/pull state of type %q", ErrBadMessage, m.Type)
	}
	if err == nil {
		err = p.mergeStateLocked(m)
	}
	p.flushUnlock()
	return err
}

// authenticateLocked checks a message in the order of cost: size, sender
// with a pinned key, replay, signature; only then parses the body. A message
// that passes is marked seen.
func (p *IPAM) authenticateLocked(buf []byte) (*message, error) {
	h, err := parseHeader(buf)
	if err != nil {
		return nil, err
	}
	if len(h.body) > p.maxBodyLocked() {
		return nil, fmt.Errorf("%w: %d bytes from %s, at most %d for this mesh", ErrBadMessage, len(h.body), h.from, p.maxBodyLocked())
	}
	// Entries are JSON objects: count them before parsing, so a body of
	// many small forged entries costs a scan, not a parse.
	if limit := 2*p.msgKeysLocked() + 16; countObjects(h.body, limit) > limit {
		return nil, fmt.Errorf("%w: more than %d objects from %s, the most a ring of this mesh needs", ErrBadMessage, limit, h.from)
	}
	if h.from == p.cfg.Name {
		return nil, errOwnEcho
	}
	key, ok := p.keyOf(h.from)
	if !ok {
		return nil, fmt.Errorf("%w: no signing key pinned for %q", ErrUnauthenticated, h.from)
	}
	s := p.senders[h.from]
	if s != nil && !s.win.fresh(h.inc, h.seq) {
		return nil, fmt.Errorf("%w: replayed or old message from %s (incarnation %d, sequence %d)", ErrUnauthenticated, h.from, h.inc, h.seq)
	}
	if s == nil && h.seq == 0 {
		return nil, fmt.Errorf("%w: sequence 0 from %s", ErrUnauthenticated, h.from)
	}
	if !ed25519.Verify(key, h.signed, h.sig) {
		return nil, fmt.Errorf("%w: bad signature on a message naming %s", ErrUnauthenticated, h.from)
	}
	m, err := decodeBody(h)
	if err != nil {
		return nil, err
	}
	if s == nil {
		if len(p.senders) >= maxSenders {
			return nil, fmt.Errorf("%w: more than %d peers", ErrUnauthenticated, maxSenders)
		}
		s = &sender{}
		p.senders[h.from] = s
	}
	s.win.mark(h.inc, h.seq)
	return m, nil
}

// errOwnEcho: our own broadcast came back; not worth a log line.
var errOwnEcho = errors.New("own message")

func (p *IPAM) mergeStateLocked(m *message) error {
	if m.Range != p.rangeStr || m.Size != p.size {
		return fmt.Errorf("%w: peer %s uses range %s, this peer %s; every peer needs the same --ipalloc-range",
			ErrRingMismatch, m.From, m.Range, p.rangeStr)
	}
	if p.left || m.RingID == "" {
		return nil // we are leaving, or the peer has no ring yet
	}
	if m.RingID != ringID(m.Range, m.Seeds) {
		return fmt.Errorf("%w: state from %s: ring ID does not match its seeds", ErrBadMessage, m.From)
	}
	if m.Digest != "" {
		return p.mergeDigestLocked(m)
	}
	es := fromWire(m.Entries)
	if p.ring == nil {
		if p.cfg.Init.Mode == ModeSeed {
			return errors.New("ipam: seed mode without a ring") // New always seeds
		}
		// A peer with no ring has no view to check owner changes against:
		// it takes the authenticated sender's word for the chain of owners,
		// and checks each entry's and grant's signature whenever it knows
		// the signer's key (site/security.md: a newcomer trusts the member
		// it first learns the ring from).
		r := newSeededRing(m.Range, m.Size, m.Seeds)
		if r.ID != m.RingID {
			return fmt.Errorf("%w: state from %s: ring ID does not match its seeds", ErrBadMessage, m.From)
		}
		if len(es) > p.keyCapLocked() {
			return fmt.Errorf("%w: state from %s: %d ring keys, at most %d for this mesh", ErrBadMessage, m.From, len(es), p.keyCapLocked())
		}
		for _, e := range es {
			if err := e.validate(p.size); err != nil {
				return fmt.Errorf("%w: state from %s: %v", ErrBadMessage, m.From, err)
			}
		}
		r.mergeChecked(es, p.acceptAdoptedLocked(r.ID), p.keyCapLocked())
		if err := r.validate(); err != nil {
			return fmt.Errorf("%w: state from %s: %v", ErrBadMessage, m.From, err)
		}
		p.adoptLocked(r, "learnt from "+m.From)
		return nil
	}
	if m.RingID != p.ring.ID {
		return p.mismatchErr(m.From, m.RingID, m.Seeds)
	}
	return p.mergeLocked(m.From, es, p.takeStateAskedLocked(m.From))
}

// mergeDigestLocked takes a periodic push/pull's digest: equal rings are
// all there is to it; otherwise the full state is asked of the sender
// (rate-limited as a ring-less peer's ask is), and its answer merged as
// any state. Both ends of the push/pull see the difference and ask.
func (p *IPAM) mergeDigestLocked(m *message) error {
	if p.ring != nil {
		if m.RingID != p.ring.ID {
			return p.mismatchErr(m.From, m.RingID, m.Seeds)
		}
		if m.Digest == p.ring.digest() {
			p.digestsEqual++
			return nil
		}
	}
	// Rate-limited per peer, not for all: at a bootstrap several peers'
	// push/pulls arrive within the same half second, and the first one
	// asked may have a partial ring itself. With one limit for all, the
	// others went unasked until the next push/pull, 30 s later, and a ring
	// stayed half known that long.
	now := p.now()
	if now.Sub(p.digestAsked[m.From]) < time.Second/2 {
		return nil
	}
	if p.digestAsked == nil || len(p.digestAsked) >= maxDigestAsked {
		p.digestAsked = map[string]time.Time{}
	}
	p.digestAsked[m.From] = now
	p.digestAsks++
	p.askStateLocked(m.From, now)
	return nil
}

// askStateLocked asks peer `to` for its full ring and remembers it did:
// the answer may fill the gaps of this peer's ring (acceptEntryLocked).
func (p *IPAM) askStateLocked(to string, now time.Time) {
	if p.stateAsked == nil || len(p.stateAsked) >= maxDigestAsked {
		p.stateAsked = map[string]time.Time{}
	}
	p.stateAsked[to] = now
	p.sendLocked(to, &message{Type: msgGetState})
}

// takeStateAskedLocked reports whether a full state from peer `from`
// answers an ask of this peer's of the last stateAnswerWithin, and forgets
// the ask: one ask, one answer trusted with the gaps.
func (p *IPAM) takeStateAskedLocked(from string) bool {
	at, ok := p.stateAsked[from]
	if !ok {
		return false
	}
	delete(p.stateAsked, from)
	return p.now().Sub(at) <= stateAnswerWithin
}

// stateAnswerWithin: an answer later than this after the ask is not
// trusted with gaps (it is merged as any state).
const stateAnswerWithin = 10 * time.Second

// gapAskInterval: a peer whose ring has a gap (a range whose key it
// missed) asks a peer for the whole ring this often, so that a lost
// broadcast is repaired within a few of these, not at the next push/pull.
const gapAskInterval = 500 * time.Millisecond

// askForGapLocked asks a peer for the full ring when this peer's ring has a
// gap, at most once per gapAskInterval: first the owner of the key after the
// gap (most often the donor who created the missing key: it keeps the
// tail), then every alive peer in turn from a random one, so that a peer
// that has the key is asked within as many asks as there are peers, even
// when others missed the same key.
func (p *IPAM) askForGapLocked(now time.Time) {
	if p.ring == nil || p.left || now.Sub(p.lastGapAsk) < gapAskInterval {
		return
	}
	after, gap := p.ring.firstGap()
	if !gap {
		p.gapRun = 0
		return
	}
	peers := p.alivePeersLocked()
	if len(peers) == 0 {
		return
	}
	to := ""
	if p.gapRun == 0 {
		if after != "" && after != p.cfg.Name && p.cfg.Alive(after) {
			to = after
		}
		p.gapFrom = p.rng.IntN(len(peers))
	}
	if to == "" {
		to = peers[(p.gapFrom+p.gapRun)%len(peers)]
	}
	p.gapRun++
	p.lastGapAsk = now
	p.gapAsks++
	p.log.Debug("the ring has a gap (a change this peer missed): asking a peer for the whole ring", "peer", to, "asks", p.gapAsks)
	p.askStateLocked(to, now)
}

// maxDigestAsked bounds the per-peer memory of mergeDigestLocked's rate limit.
const maxDigestAsked = 4096

// HandleMessage handles a broadcast or direct message from a peer.
func (p *IPAM) HandleMessage(msg []byte) {
	p.mu.Lock()
	m, err := p.authenticateLocked(msg)
	if err != nil {
		p.mu.Unlock()
		switch {
		case errors.Is(err, errOwnEcho):
		case errors.Is(err, ErrUnauthenticated):
			// Replays are routine (gossip retransmits): debug only.
			p.log.Debug("dropped IPAM message", "err", err)
		default:
			p.log.Warn("dropped IPAM message", "err", err)
		}
		return
	}
	if err := p.handleLocked(m); err != nil {
		if errors.Is(err, ErrRingMismatch) {
			p.mismatchN++
			if p.mismatchN%100 != 1 {
				err = nil // said it already; keep the log readable
			}
		}
		if err != nil {
			p.log.Error("IPAM message from peer", "from", m.From, "type", m.Type, "err", err)
		}
	}
	p.flushUnlock()
}

func (p *IPAM) handleLocked(m *message) error {
	switch m.Type {
	case msgRing:
		if p.left {
			return nil
		}
		if p.ring == nil {
			// A ring exists somewhere: fetch all of it (rate-limited).
			if now := p.now(); now.Sub(p.lastGet) >= time.Second/2 {
				p.lastGet = now
				p.askStateLocked(m.From, now)
			}
			return nil
		}
		if m.RingID != p.ring.ID {
			return p.mismatchErr(m.From, m.RingID, nil)
		}
		return p.mergeLocked(m.From, fromWire(m.Entries), false)
	case msgGetState:
		if p.ring != nil && !p.left {
			p.sendLocked(m.From, p.stateMsgLocked())
		}
		return nil
	case msgState:
		if m.RingID == "" {
			return nil
		}
		return p.mergeStateLocked(m)
	case msgPrepare, msgAccept:
		return p.handleAcceptorLocked(m)
	case msgPromise, msgAccepted:
		p.handleProposerLocked(m)
		return nil
	case msgChosen:
		return p.handleChosenLocked(m)
	case msgDonReq:
		return p.handleDonationRequestLocked(m)
	case msgNoDon:
		p.refused[m.From] = p.now()
		p.publishLocked() // wake waiters to try another donor
		return nil
	case msgHandOver:
		return p.handleHandOverLocked(m)
	case msgAck:
		if ch, ok := p.acks[m.Nonce]; ok {
			delete(p.acks, m.Nonce)
			close(ch)
		}
		return nil
	}
	return nil
}

func insertSorted(s []uint64, v uint64) []uint64 {
	i := sort.Search(len(s), func(i int) bool { return s[i] >= v })
	s = append(s, 0)
	copy(s[i+1:], s[i:])
	s[i] = v
	return s
}

func removeSorted(s []uint64, v uint64) []uint64 {
	i := sort.Search(len(s), func(i int) bool { return s[i] >= v })
	if i < len(s) && s[i] == v {
		s = append(s[:i], s[i+1:]...)
	}
	return s
}
