package crypto

// The data path: Seal and Open, lock-free on their common path.

import (
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/weftnet/weft/router/wire"
)

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

// Seal encrypts one packet in place for peer. msg[:16] is room for the
// header (msg[2], the flags, is kept as the caller set it), the plaintext is
// msg[16:16+plainLen], and cap(msg) must leave room for the 16-byte tag. It
// returns the length of the datagram to send, msg[:n]. With no usable
// session it returns ErrNoSession and asks for a handshake in the
// background; the caller may keep the packet until SessionsUp names the peer
// (the router queues it, bounded) or drop it.
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

// Open checks and decrypts one TypeEncrypted datagram in place. h is the
// datagram's common header as wire.Decode returned it without error: the
// caller decoded it once to dispatch on the type, and Open does not decode
// it again (the header is authenticated as the AD all the same). It returns
// the plaintext (a sub-slice of msg) and the sending peer's name. An empty
// plaintext is a keepalive: there is nothing to deliver. Errors are the
// sentinels ErrShort, ErrMalformed, ErrUnknownSession, ErrExpired, ErrAuth
// and ErrReplay, unwrapped, and each is counted.
func (m *Manager) Open(from netip.AddrPort, h wire.Header, msg []byte) ([]byte, string, error) {
	if len(msg) < wire.EncryptedHeaderLen+wire.TagLen {
		return nil, "", m.drop(dropShort, ErrShort)
	}
	if h.Type != wire.TypeEncrypted {
		return nil, "", m.drop(dropMalformed, ErrMalformed)
	}
	kp := (*m.sessions.Load())[h.Index]
	if kp == nil {
		m.unknownSession(from)
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

// unknownSession hurries a handshake with the peer at from when it sends in
// a session we do not know while we have none to send with: we restarted,
// or our initiation was lost, and the peer still uses the session of
// before. Waiting out HandshakeRetry would leave the pair silent that long.
// At most once per fastRetry per peer, so that a flood of such datagrams
// (their source is easily forged) costs at most that many initiations.
func (m *Manager) unknownSession(from netip.AddrPort) {
	p := (*m.epPeers.Load())[netip.AddrPortFrom(from.Addr().Unmap(), from.Port())]
	if p == nil || p.current.Load() != nil {
		return
	}
	now := m.cfg.Clock().UnixNano()
	last := p.unknownAt.Load()
	if now-last < int64(m.fastRetry()) || !p.unknownAt.CompareAndSwap(last, now) {
		return
	}
	p.hurry.Store(true)
	m.poke()
}

// fastRetry is the shortest time between two initiations to one peer that
// data in an unknown session asks for.
func (m *Manager) fastRetry() time.Duration { return m.cfg.HandshakeRetry / 10 }

func (m *Manager) drop(r dropReason, err error) error {
	m.drops[r].Add(1)
	return err
}
