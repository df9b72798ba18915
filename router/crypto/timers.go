package crypto

// Timers: session expiry, handshake retry and rekey, driven by Run.

import (
	"context"
	"time"
)

// Run drives the timers (rekey, handshake retry, session expiry) and the
// handshake worker until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	done := make(chan struct{})
	go func() { defer close(done); m.handshakeWorker(ctx) }()
	defer func() { <-done }()
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

// tick expires old sessions, retries lost handshakes and starts the ones
// that are due. Every peer always gets a session, so that the first packet
// to a peer does not wait for a handshake.
func (m *Manager) tick() {
	now := m.cfg.Clock()
	var out []outMsg
	m.mu.Lock()
	for _, p := range *m.peers.Load() {
		m.expireLocked(p, now)
		if p.hurry.Swap(false) && p.pending != nil && p.current.Load() == nil && now.Sub(p.pending.sentAt) >= m.fastRetry() {
			// The peer sends in a session we do not know (see
			// unknownSession): our initiation is likely lost.
			m.abandonPending(p)
		}
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

// Backoff of handshakes with a peer that does not answer and that nothing is
// sent to: after idleAfterAttempts unanswered initiations (half a minute
// at the default HandshakeRetry), the wait doubles up to 2^idleMaxShift
// retries (about 5 minutes).
const (
	idleAfterAttempts = 6
	idleMaxShift      = 6
)

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
		// A peer that has not answered for a while (down, or gone for
		// good: peers keep their last endpoint) is tried less and less
		// often while nothing waits to be sent to it. Traffic (Seal) or
		// the peer's own handshake when it is back brings it up at once.
		if p.attempts >= idleAfterAttempts && !p.kicked.Load() {
			backoff := m.cfg.HandshakeRetry << min(p.attempts-idleAfterAttempts+1, idleMaxShift)
			return now.Sub(p.lastInit) >= backoff
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
