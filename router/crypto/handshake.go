package crypto

// Handshakes: starting them, and answering what arrives.

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"
)

type outMsg struct {
	to  netip.AddrPort
	msg []byte
}

func (m *Manager) sendAll(out []outMsg) {
	for _, o := range out {
		if err := m.cfg.Send.SendHandshake(o.to, o.msg); err != nil {
			m.log.Debug("sending handshake failed", "to", o.to, "err", err)
		}
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
	var cookie *[cookieLen]byte
	if !p.cookieAt.IsZero() && now.Sub(p.cookieAt) < cookieUseFor && !now.Before(p.cookieAt) {
		cookie = &p.cookie
	}
	msg, st, err := createInitiation(&m.cfg.Identity, &p.pub, &p.staticDH, &p.macs, cookie, idx, m.nextTimestampLocked(now), offer)
	if err != nil {
		return nil, err
	}
	st.sentAt = now
	p.pending = st
	p.attempts++
	p.lastInit = now
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

// Handshake work is queued for one worker goroutine, away from the data
// plane's receive goroutine, in a bounded queue: under a flood, data keeps
// flowing and surplus handshake datagrams are dropped (and counted).
const (
	hsQueueLen    = 1024
	hsPriorityLen = 256
	// Under load: the queue holds this many, or did within loadSticky. An
	// initiation then needs a valid cookie MAC before any Diffie-Hellman.
	hsLoadAt   = hsQueueLen / 8
	loadSticky = time.Second
	hsMaxLen   = initLen // the largest handshake message
)

// hsJob is one queued handshake datagram, copied out of the receive buffer
// into a fixed array (queueing allocates nothing).
type hsJob struct {
	from netip.AddrPort
	n    int
	buf  [hsMaxLen]byte
}

// HandleHandshake takes one handshake datagram from the data plane's receive
// goroutine. It checks only the framing there, and drops an initiation
// already seen (a replay costs a map lookup); the MACs, the cookie, the rate
// limit and the Diffie-Hellman happen on the handshake worker (Run).
// Datagrams from known peers' addresses have a queue of their own. When a
// queue is full the datagram is dropped and counted (busy). Whatever is
// wrong with it is counted (Counters); it is answered with nothing, or with
// a cookie reply when the Manager is under load.
func (m *Manager) HandleHandshake(from netip.AddrPort, msg []byte) {
	kind, err := parseHandshake(msg)
	if err != nil {
		m.hsFailures[FailMalformed].Add(1)
		return
	}
	if kind == kindInitiation {
		// Only looked up here: keys are remembered by the worker once
		// the MACs verify, so unverified bytes cannot evict real ones.
		mac1 := [macLen]byte(msg[mac1Off(len(msg)):mac2Off(len(msg))])
		m.dedupMu.Lock()
		dup := m.dedup.has(mac1)
		m.dedupMu.Unlock()
		if dup {
			m.hsFailures[FailDuplicate].Add(1)
			return
		}
	}
	q := m.hsQueue
	if _, known := (*m.knownEPs.Load())[from.Addr().Unmap()]; known {
		q = m.hsPriority
	}
	var j hsJob
	j.from, j.n = from, copy(j.buf[:], msg)
	select {
	case q <- j:
	default:
		m.hsFailures[FailBusy].Add(1)
	}
}

// handshakeWorker does the queued handshake work until ctx ends, known
// peers' datagrams first.
func (m *Manager) handshakeWorker(ctx context.Context) {
	for {
		var j hsJob
		select {
		case j = <-m.hsPriority:
		default:
			select {
			case <-ctx.Done():
				return
			case j = <-m.hsPriority:
			case j = <-m.hsQueue:
			}
		}
		m.handshakeNow(j.from, j.buf[:j.n])
	}
}

// underLoad says whether initiations must carry a cookie: the queue is
// filling up, or was lately.
func (m *Manager) underLoad(now time.Time) bool {
	if m.forceLoad.Load() {
		return true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.hsQueue) >= hsLoadAt {
		m.loadUntil = now.Add(loadSticky)
		return true
	}
	return now.Before(m.loadUntil)
}

// handshakeNow runs one handshake datagram through every check and the
// handshake itself on the calling goroutine (the worker, or a test), and
// counts what is refused.
func (m *Manager) handshakeNow(from netip.AddrPort, msg []byte) {
	err := m.handleHandshake(from, msg)
	if err == nil {
		return
	}
	if reason, ok := failReasonOf(err); ok {
		m.hsFailures[reason].Add(1)
		if reason == FailWrongPSK {
			m.warnWrongPSK(from)
			if m.cfg.OnWrongPassword != nil {
				m.cfg.OnWrongPassword(from)
			}
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

// handleHandshake checks one handshake datagram, cheapest first, and runs
// the handshake if it passes. Nothing before the Diffie-Hellman costs more
// than a few HMACs and map lookups.
func (m *Manager) handleHandshake(from netip.AddrPort, msg []byte) error {
	kind, err := parseHandshake(msg)
	if err != nil {
		return err
	}
	if kind == kindCookieReply {
		return m.handleCookieReply(msg)
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
	// An exact copy of an initiation seen lately is a replay, whatever
	// address it comes from: dropped before anything else, and answered
	// with nothing (not even a cookie).
	mac1 := [macLen]byte(msg[mac1Off(len(msg)):mac2Off(len(msg))])
	m.dedupMu.Lock()
	dup := m.dedup.seen(mac1)
	m.dedupMu.Unlock()
	if dup {
		return ErrDuplicateInitiation
	}
	if m.underLoad(now) && !m.cookies.checkMAC(from, msg) {
		reply, err := m.cookies.reply(from, msg)
		if err != nil {
			return err
		}
		m.cookieSent.Add(1)
		m.sendAll([]outMsg{{from, reply}})
		return ErrCookieRequired
	}
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
			// Ours stands, but the peer may have refused it: it did not
			// know our key yet (a peer that just started, or learnt of
			// us later than we of it), and would only hear from us again
			// after HandshakeRetry. Its initiation, authenticated and
			// fresh, proves it knows us now: ours goes again at once,
			// and the peer, losing the tie-break its side, answers it.
			// One round trip, not a retry timeout.
			msg, ierr := m.initiateLocked(p, now)
			ep := p.ep
			m.mu.Unlock()
			m.tieDropped.Add(1)
			if ierr == nil && ep.IsValid() {
				m.sendAll([]outMsg{{ep, msg}})
			}
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

// handleCookieReply keeps the cookie a peer sent in answer to our pending
// initiation, and retries at once with it: the reply names our initiation
// by index and is authenticated with its mac1 and the password, so it
// cannot be forged or replayed to make us send more than one initiation.
func (m *Manager) handleCookieReply(msg []byte) error {
	p, st := m.pendingAt(binary.BigEndian.Uint32(msg[4:8]))
	if st == nil {
		return ErrUnknownIndex
	}
	cookie, err := openCookieReply(&p.cookieKy, &st.mac1, msg)
	if err != nil {
		return err
	}
	now := m.cfg.Clock()
	m.mu.Lock()
	if p.pending != st {
		m.mu.Unlock()
		return ErrUnknownIndex
	}
	p.cookie, p.cookieAt = cookie, now
	m.abandonPending(p) // the next tick initiates again, with the cookie
	m.mu.Unlock()
	m.cookieReceived.Add(1)
	m.poke()
	return nil
}

// pendingAt returns the peer and its initiation in flight that a reply
// names by our sender index; st is nil when none is.
func (m *Manager) pendingAt(idx uint32) (p *peer, st *initiatorState) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p = m.pending[idx]; p != nil {
		st = p.pending
	}
	return p, st
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
	p, st := m.pendingAt(idx)
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
