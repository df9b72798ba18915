package crypto

// Sessions (keypairs): install, confirm, make current, drop.

import (
	"crypto/cipher"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

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

// sessionUp records that peer has a new session to send with and rings the
// data plane's doorbell; the router's flush goroutine takes the names.
// Names are kept in a set, so a burst of rekeys never blocks nor loses one.
func (m *Manager) sessionUp(peer string) {
	m.upMu.Lock()
	if !slices.Contains(m.up, peer) {
		m.up = append(m.up, peer)
	}
	m.upMu.Unlock()
	select {
	case m.upCh <- struct{}{}:
	default: // already rung; the reader takes every name at once
	}
}

// SessionsUp is signalled when one or more peers got a session to send with
// since the last TakeSessionsUp.
func (m *Manager) SessionsUp() <-chan struct{} { return m.upCh }

// TakeSessionsUp appends the peers whose session came up to dst and forgets
// them.
func (m *Manager) TakeSessionsUp(dst []string) []string {
	m.upMu.Lock()
	defer m.upMu.Unlock()
	dst = append(dst, m.up...)
	clear(m.up)
	m.up = m.up[:0]
	return dst
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
