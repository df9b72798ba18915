package mesh

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/weftnet/weft/identity"
)

// delegate receives memberlist's callbacks. Several of them are called with
// memberlist's node lock held, so they must never call back into the
// memberlist; membership changes are handed to a goroutine instead.
type delegate struct {
	m    *Mesh
	meta atomic.Pointer[[]byte] // encoded Meta of this peer

	refusedMu sync.Mutex
	refused   map[string]string // peer -> last reason logged, so a refusal is logged once

	// vetted: per peer, the metadata last found acceptable (see vet).
	vetMu  sync.Mutex
	vetted map[string]vetted
	// vetChecks counts full checks (decode and pin), read by tests.
	vetChecks atomic.Int64
}

// vetted is metadata vet accepted: the bytes, the signing key in them, and when.
type vetted struct {
	meta       string
	signingKey string
	at         time.Time
}

// vetTTL bounds how long an accepted check is reused. memberlist asks the
// Alive delegate about every alive message it receives, before it looks at
// the incarnation, so duplicates cost a full check each: a mesh of 1,000
// forming retransmits each member's alive message about twelve times per
// member, millions of checks (each decoding the metadata and taking the pin
// table's lock) that can only answer what the first one did. The pin is
// looked up on each reuse, so a forgotten or re-pinned name is checked
// afresh at once; what the TTL bounds is how late a Kubernetes authority
// that changed its answer for a name is asked again.
const vetTTL = 30 * time.Second

// maxVetted bounds the names remembered: past it, the table starts afresh.
const maxVetted = 16384

// NodeMeta implements memberlist.Delegate.
func (d *delegate) NodeMeta(limit int) []byte {
	meta := *d.meta.Load()
	if len(meta) > limit {
		// Encode already checked MaxMetaSize; memberlist's limit is the same.
		return nil
	}
	return meta
}

// NotifyMsg implements memberlist.Delegate: a user message, tagged by
// channel, queued for Run (see Mesh.inbox).
func (d *delegate) NotifyMsg(b []byte) {
	if len(b) < 1 {
		return
	}
	select {
	case d.m.inbox <- append([]byte(nil), b...): // memberlist reuses b
	default:
		if d.m.inboxDropped.Add(1) == 1 {
			d.m.log.Warn("gossip messages arrive faster than they are handled: dropping some (push/pull repairs them); further drops are only counted")
		}
	}
}

// deliver hands one queued message to its channel's handler.
func (m *Mesh) deliver(b []byte) {
	d := m.delegate
	d.m.mu.Lock()
	h := d.m.handlers[Channel(b[0])]
	d.m.mu.Unlock()
	if h == nil {
		d.m.log.Debug("gossip message on unknown channel dropped", "channel", b[0])
		return
	}
	h.HandleMessage(b[1:])
}

// GetBroadcasts implements memberlist.Delegate.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.m.queue.get(overhead, limit)
}

// LocalState implements memberlist.Delegate: every channel's state as
// [channel 1B][length 4B][state] records.
func (d *delegate) LocalState(join bool) []byte {
	d.m.mu.Lock()
	hs := make(map[Channel]Handler, len(d.m.handlers))
	for ch, h := range d.m.handlers {
		hs[ch] = h
	}
	d.m.mu.Unlock()
	var out []byte
	for ch, h := range hs {
		var s []byte
		dg, digests := h.(Digester)
		js, small := h.(JoinStater)
		switch {
		case digests && !join:
			s = dg.LocalDigest()
		case small && join:
			s = js.JoinState()
		default:
			s = h.LocalState()
		}
		out = append(out, byte(ch))
		out = binary.BigEndian.AppendUint32(out, uint32(len(s)))
		out = append(out, s...)
	}
	return out
}

// ErrStateFraming is returned for a push/pull state that is not a sequence of records.
var ErrStateFraming = errors.New("malformed gossip state")

// SplitState parses the records of LocalState; exported for fuzzing.
func SplitState(buf []byte, each func(ch Channel, state []byte) error) error {
	for len(buf) > 0 {
		if len(buf) < 5 {
			return fmt.Errorf("%w: %d trailing bytes", ErrStateFraming, len(buf))
		}
		ch := Channel(buf[0])
		n := binary.BigEndian.Uint32(buf[1:5])
		buf = buf[5:]
		if uint64(n) > uint64(len(buf)) {
			return fmt.Errorf("%w: record of %d bytes, %d left", ErrStateFraming, n, len(buf))
		}
		if err := each(ch, buf[:n]); err != nil {
			return err
		}
		buf = buf[n:]
	}
	return nil
}

// MergeRemoteState implements memberlist.Delegate.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	err := SplitState(buf, func(ch Channel, state []byte) error {
		d.m.mu.Lock()
		h := d.m.handlers[ch]
		d.m.mu.Unlock()
		if h == nil {
			return nil
		}
		if err := h.MergeState(state); err != nil {
			d.m.log.Error("could not merge a peer's state", "channel", ch, "err", err)
		}
		return nil
	})
	if err != nil {
		d.m.log.Warn("dropped a peer's gossip state", "err", err)
	}
}

// NotifyJoin implements memberlist.EventDelegate.
func (d *delegate) NotifyJoin(n *memberlist.Node) { d.record(n, StateAlive) }

// NotifyLeave implements memberlist.EventDelegate; memberlist says "leave" for
// both a graceful leave and a failure (and n.State is not updated), so a
// leave is recognised by the Leaving flag the peer announced first.
func (d *delegate) NotifyLeave(n *memberlist.Node) {
	st := StateDead
	if meta, err := DecodeMeta(n.Meta); err == nil && meta.Leaving {
		st = StateLeft
	}
	d.record(n, st)
}

// NotifyUpdate implements memberlist.EventDelegate.
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.record(n, StateAlive) }

func (d *delegate) record(n *memberlist.Node, state State) {
	m := d.m
	meta, _ := DecodeMeta(n.Meta) // already vetted by NotifyAlive/NotifyMerge
	addr := n.Address()
	m.mu.Lock()
	p := m.peers[n.Name]
	if p == nil {
		p = &peer{}
		m.peers[n.Name] = p
	}
	changed := p.state != state
	p.node = *n
	p.node.Meta = nil
	p.addr = addr
	p.meta = meta
	p.suspect = false
	delete(m.marked, n.Name)
	m.changedLocked()
	if changed {
		p.state = state
		p.since = time.Now()
	}
	m.indexAddrLocked(p)
	// Remember every peer's address so that, once memberlist has forgotten a
	// dead peer, it is still joined again when it comes back.
	if n.Name != m.cfg.Name && state == StateAlive {
		t, ok := m.targets[addr]
		if !ok {
			t = &target{addr: addr}
			m.targets[addr] = t
		}
		t.lastAlive = m.now()
	}
	closing := m.closing
	m.mu.Unlock()
	if changed && n.Name != m.cfg.Name && !closing {
		switch state {
		case StateAlive:
			m.log.Info("peer joined", "peer", n.Name, "address", addr)
		case StateLeft:
			m.log.Info("peer left", "peer", n.Name, "address", addr)
		default:
			m.log.Warn("peer unreachable", "peer", n.Name, "address", addr)
		}
	}
	// Handlers may call back into memberlist, which we are inside of: Run
	// calls them from its own goroutine.
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

// NotifyAlive implements memberlist.AliveDelegate: refuse incompatible peers.
func (d *delegate) NotifyAlive(n *memberlist.Node) error {
	if n.Name == d.m.cfg.Name {
		return nil
	}
	if err := d.vet(n); err != nil {
		return err
	}
	// Most alive messages about a suspect are its refutation: it lives.
	d.m.unsuspect(n.Name)
	return nil
}

// AckPayload implements memberlist.PingDelegate: nothing rides on acks.
func (d *delegate) AckPayload() []byte { return nil }

// NotifyPingComplete implements memberlist.PingDelegate: a probe of other
// was answered, so this member no longer suspects it.
func (d *delegate) NotifyPingComplete(other *memberlist.Node, _ time.Duration, _ []byte) {
	d.m.unsuspect(other.Name)
}

// suspected marks name suspect: this member's probe of it went unanswered
// (memberlistLogger reads it from memberlist's log, its only trace).
func (m *Mesh) suspected(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.peers[name]; p != nil && p.state == StateAlive && !p.suspect {
		p.suspect = true
		if m.marked == nil {
			m.marked = map[string]bool{}
		}
		m.marked[name] = true
		m.changedLocked()
		p.since = time.Now()
		p.verifyAt = m.now().Add(m.cfg.Timing.ProbeTimeout)
	}
}

// maxVerifying bounds the verification pings in flight at one member: when
// a partition cuts half a mesh away, its probes mark a new peer suspect
// every probe interval, and memberlist's own suspicion settles them.
const maxVerifying = 4

// verifySuspects pings the peers this member marked suspect, and takes
// the mark off those that answer. The mark comes from memberlist's log of
// a probe that failed, and memberlist suspects the peer only if it has not
// heard a newer incarnation of it meanwhile (suspectNode ignores older
// ones): a peer that refuted another member's suspicion while this
// member's probe of it was under way stays alive for memberlist, no
// suspicion is gossiped, no refutation follows, and nothing but this
// member's next probe of that very peer would clear the mark. Probes go
// round the members, one per probe interval, so that took N intervals:
// after a partition healed, 100 simulated agents stayed "not whole" for
// minutes with a peer suspect here and there. A ping answered is a sign
// of life like the others that clear the mark; an unreachable peer stays
// suspect until memberlist declares it dead.
func (m *Mesh) verifySuspects(ctx context.Context) {
	now := m.now()
	type due struct {
		name string
		addr net.Addr
	}
	var pings []due
	m.mu.Lock()
	for name := range m.marked {
		if m.verifying >= maxVerifying {
			break
		}
		p := m.peers[name]
		if p == nil || !p.suspect || p.verifying || p.state != StateAlive || now.Before(p.verifyAt) {
			continue
		}
		p.verifying = true
		m.verifying++
		// The next one after a probe interval: memberlist probes at that pace.
		p.verifyAt = now.Add(m.cfg.Timing.ProbeInterval)
		pings = append(pings, due{name, &net.UDPAddr{IP: p.node.Addr, Port: int(p.node.Port)}})
	}
	m.mu.Unlock()
	for _, d := range pings {
		m.verifyWG.Add(1)
		m.verifyPings.Add(1)
		go func() {
			defer m.verifyWG.Done()
			var err error
			if ctx.Err() == nil {
				_, err = m.ml().Ping(d.name, d.addr)
			}
			m.mu.Lock()
			if p := m.peers[d.name]; p != nil {
				p.verifying = false
			}
			m.verifying--
			m.mu.Unlock()
			if err == nil && ctx.Err() == nil {
				m.unsuspect(d.name)
			}
		}()
	}
}

func (m *Mesh) unsuspect(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.peers[name]; p != nil && p.suspect {
		p.suspect = false
		delete(m.marked, name)
		m.changedLocked()
		p.since = time.Now()
	}
}

// NotifyMerge implements memberlist.MergeDelegate: a join brings a whole
// member list; refuse it if any member is incompatible.
func (d *delegate) NotifyMerge(peers []*memberlist.Node) error {
	for _, n := range peers {
		if n.Name == d.m.cfg.Name {
			continue
		}
		if err := d.vet(n); err != nil {
			return err
		}
	}
	return nil
}

func (d *delegate) vet(n *memberlist.Node) error {
	now := d.m.clock()
	if d.vettedBefore(n, now) {
		return nil
	}
	d.vetChecks.Add(1)
	meta, err := d.check(n)
	if err == nil {
		d.remember(n, meta, now)
	}
	return err
}

// vettedBefore: n announces the metadata accepted for its name less than
// vetTTL ago, and the pin (or its absence) is still the one checked then.
func (d *delegate) vettedBefore(n *memberlist.Node, now time.Time) bool {
	d.vetMu.Lock()
	v, ok := d.vetted[n.Name]
	d.vetMu.Unlock()
	if !ok || v.meta != string(n.Meta) || now.Sub(v.at) >= vetTTL || now.Before(v.at) {
		return false
	}
	if d.m.cfg.Pins == nil {
		return true
	}
	key, pinned := d.m.cfg.Pins.Key(n.Name)
	if v.signingKey == "" {
		return !pinned
	}
	return pinned && string(key) == v.signingKey
}

func (d *delegate) remember(n *memberlist.Node, meta Meta, now time.Time) {
	d.vetMu.Lock()
	defer d.vetMu.Unlock()
	if d.vetted == nil || len(d.vetted) >= maxVetted {
		d.vetted = map[string]vetted{}
	}
	d.vetted[n.Name] = vetted{meta: string(n.Meta), signingKey: string(meta.SigningKey), at: now}
}

// check is vet without the memory of earlier checks.
func (d *delegate) check(n *memberlist.Node) (Meta, error) {
	meta, err := DecodeMeta(n.Meta)
	if err == nil {
		err = meta.Compatible(len(d.m.cfg.SecretKey) > 0)
	}
	if err == nil && d.m.cfg.Pins != nil && len(meta.SigningKey) > 0 {
		// Trust on first use: a known name with another key is someone
		// else, or the same host reinstalled; an operator must say which.
		err = d.m.cfg.Pins.Check(n.Name, meta.SigningKey)
	}
	if err == nil && len(meta.SigningKey) == 0 {
		// An older build (during a rolling upgrade): it stays a member for
		// the data plane, but its IPAM messages, unsigned, are dropped.
		if d.m.cfg.Pins != nil && d.pinned(n.Name) {
			err = fmt.Errorf("%w: announces none, but %s was pinned to one", identity.ErrKeyMismatch, n.Name)
		} else {
			d.warnUnsigned(n)
		}
	}
	if err == nil {
		return meta, nil
	}
	err = fmt.Errorf("refusing peer %s at %s: %w", n.Name, n.Address(), err)
	d.refusedMu.Lock()
	if d.refused == nil || len(d.refused) >= maxRefusalsLogged {
		// Bounded: past the cap, forget and log each refusal once more.
		d.refused = map[string]string{}
	}
	first := d.refused[n.Name] != err.Error()
	d.refused[n.Name] = err.Error()
	d.refusedMu.Unlock()
	if first {
		d.m.log.Error("refusing peer", "peer", n.Name, "address", n.Address(), "reason", err)
	}
	return meta, err
}

func (d *delegate) pinned(name string) bool {
	_, ok := d.m.cfg.Pins.Key(name)
	return ok
}

// warnUnsigned says once per peer that its IPAM messages will be dropped.
func (d *delegate) warnUnsigned(n *memberlist.Node) {
	const why = "no signing key"
	d.refusedMu.Lock()
	if d.refused == nil {
		d.refused = map[string]string{}
	}
	first := d.refused[n.Name] != why
	if first && len(d.refused) < maxRefusalsLogged {
		d.refused[n.Name] = why
	}
	d.refusedMu.Unlock()
	if first {
		d.m.log.Warn("peer announces no signing key (an older weft?): its IPAM messages are dropped until it is upgraded",
			"peer", n.Name, "address", n.Address())
	}
}

// maxRefusalsLogged bounds the names remembered for log deduplication.
const maxRefusalsLogged = 4096

// NotifyConflict implements memberlist.ConflictDelegate.
func (d *delegate) NotifyConflict(existing, other *memberlist.Node) {
	d.m.log.Error("two hosts use the same peer name; names must be unique (set --name)",
		"peer", existing.Name, "address", existing.Address(), "other_address", other.Address())
}

// memberlistLogger turns memberlist's "[LEVEL] memberlist: text" lines into
// structured logs, and says in plain words what the cryptic ones mean.
type memberlistLogger struct {
	log *slog.Logger
	// onSuspect hears of this member's failed probes: memberlist marks the
	// peer suspect then, and has no callback for it.
	onSuspect func(name string)
	onRefusal func(Refusal) // nil: none

	mu       sync.Mutex
	lastSaid map[string]time.Time // explained refusal -> when last logged
}

// refusalEvery bounds how often one kind of refusal is logged: a host with
// the wrong password retries every few seconds, and one line a minute says
// all there is to say.
const refusalEvery = time.Minute

func newMemberlistLogger(l *slog.Logger, onSuspect func(name string), onRefusal func(Refusal)) *log.Logger {
	return log.New(&memberlistLogger{log: l.With("component", "gossip"), onSuspect: onSuspect, onRefusal: onRefusal,
		lastSaid: map[string]time.Time{}}, "", 0)
}

// suspectLine is how memberlist (v0.7) logs a probe that went unanswered,
// just before it marks the peer suspect.
const (
	suspectPrefix = "Suspect "
	suspectSuffix = " has failed, no acks received"
)

// suspectOf returns the peer a log line says is now suspect.
func suspectOf(line string) (string, bool) {
	if !strings.HasPrefix(line, suspectPrefix) || !strings.HasSuffix(line, suspectSuffix) {
		return "", false
	}
	name := strings.TrimSuffix(strings.TrimPrefix(line, suspectPrefix), suspectSuffix)
	return name, name != ""
}

// Refusal is gossip this member refused for a reason an operator can act on.
type Refusal struct {
	Why      string     // in plain words, as logged
	Password bool       // the sender's password (or lack of one) differs from this member's
	From     netip.Addr // the sender as memberlist names it; invalid when it does not
}

// refusalFrom reads the sender out of memberlist's "from=ADDR:PORT" suffix,
// or, for a join this member made, the peer out of "failed to join
// ADDR:PORT: ..." (memberlist's Join names no from=).
func refusalFrom(line string) netip.Addr {
	if rest, ok := strings.CutPrefix(line, "failed to join "); ok {
		if j := strings.Index(rest, ": "); j > 0 {
			if ap, err := netip.ParseAddrPort(rest[:j]); err == nil {
				return ap.Addr().Unmap()
			}
		}
	}
	i := strings.LastIndex(line, "from=")
	if i < 0 {
		return netip.Addr{}
	}
	f := line[i+len("from="):]
	if j := strings.IndexAny(f, " \t"); j >= 0 {
		f = f[:j]
	}
	if ap, err := netip.ParseAddrPort(f); err == nil {
		return ap.Addr().Unmap()
	}
	a, _ := netip.ParseAddr(f)
	return a.Unmap()
}

// explanations maps fragments of memberlist's messages to their likely cause.
var explanations = []struct {
	fragment, meaning string
	password          bool
}{
	{"No installed keys could decrypt", "a peer uses a different password", true},
	{"Encryption is configured but remote state is not encrypted", "a peer has no password but this one has", true},
	{"Remote state is encrypted and encryption is not configured", "a peer has a password but this one has none", true},
	{"message authentication failed", "a peer uses a different password", true},
	{"Conflicting address", "two hosts use the same peer name", false},
}

// explain returns the likely cause of a memberlist message, or "".
func explain(msg string) string {
	why, _ := explainKind(msg)
	return why
}

// explainKind is explain, and whether the cause is a password mismatch.
func explainKind(msg string) (why string, password bool) {
	msg = strings.ToLower(msg)
	for i, e := range explanations {
		if strings.Contains(msg, explanationsLower[i]) {
			return e.meaning, e.password
		}
	}
	return "", false
}

// explanationsLower are the fragments of explanations in lower case, made
// once: memberlist logs every stream and push/pull, and each line is
// checked against all of them.
var explanationsLower = func() []string {
	out := make([]string, len(explanations))
	for i, e := range explanations {
		out[i] = strings.ToLower(e.fragment)
	}
	return out
}()

func (w *memberlistLogger) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelDebug
	for _, tl := range memberlistLevels {
		if strings.HasPrefix(line, tl.tag) {
			level = tl.level
			line = strings.TrimSpace(line[len(tl.tag):])
			break
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	if name, ok := suspectOf(line); ok && w.onSuspect != nil {
		w.onSuspect(name)
	}
	if strings.Contains(line, "use of closed network connection") {
		// Probes racing our own shutdown: noise, not an error.
		level = slog.LevelDebug
	}
	if why, password := explainKind(line); why != "" {
		if w.onRefusal != nil {
			w.onRefusal(Refusal{Why: why, Password: password, From: refusalFrom(line)})
		}
		w.mu.Lock()
		now := time.Now()
		repeat := now.Sub(w.lastSaid[why]) < refusalEvery
		if !repeat {
			w.lastSaid[why] = now
		}
		w.mu.Unlock()
		if repeat {
			w.log.Debug(why+": refused its gossip", "detail", line)
		} else {
			w.log.Error(why+": refused its gossip (repeats are logged at most once a minute)", "detail", line)
		}
		return len(p), nil
	}
	w.log.Log(context.Background(), level, line)
	return len(p), nil
}

// memberlistLevels maps memberlist's level tags to slog's; memberlist's
// INFO is chatter (every stream, every push/pull), logged at Debug.
var memberlistLevels = []struct {
	tag   string
	level slog.Level
}{{"[ERR]", slog.LevelError}, {"[WARN]", slog.LevelWarn}, {"[INFO]", slog.LevelDebug}, {"[DEBUG]", slog.LevelDebug}}

// explainJoinError shortens a failed join into a reason a person can act on.
func explainJoinError(err error) string {
	if err == nil {
		return "no peer answered"
	}
	s := err.Error()
	if why := explain(s); why != "" {
		return why
	}
	switch {
	case strings.Contains(s, "connection refused"):
		return "connection refused (no agent listening there yet?)"
	case strings.Contains(s, "i/o timeout"), strings.Contains(s, "deadline exceeded"):
		return "timed out (host down or port blocked?)"
	case strings.Contains(s, "EOF"), strings.Contains(s, "reset by peer"):
		return "connection closed by the peer (different password?)"
	}
	return s
}

// Pins maps peer names to their signing keys (identity.Pins).
type Pins interface {
	// Check pins key to name on first sight; another key for a pinned name
	// is an error.
	Check(name string, key []byte) error
	Key(name string) (ed25519.PublicKey, bool)
}

// PeerKey is the signing key of a peer: its pin, or without pinning what
// it announced. IPAM verifies messages with it.
func (m *Mesh) PeerKey(name string) (ed25519.PublicKey, bool) {
	if m.cfg.Pins != nil {
		return m.cfg.Pins.Key(name)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[name]
	if p == nil || len(p.meta.SigningKey) != ed25519.PublicKeySize {
		return nil, false
	}
	return p.meta.SigningKey, true
}
