package crypto

// Status and counters for the agent.

import (
	"cmp"
	"net/netip"
	"slices"
	"time"
)

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
// replayed_initiation, rate_limited, unknown_peer, unknown_index, timeout,
// duplicate, cookie_required, busy),
// open_dropped_<reason> (short, malformed, unknown_session, expired, auth,
// replay), handshake_initiated, handshake_completed, rekeys,
// handshake_tiebreak_dropped, keepalives_received, cookie_replies_sent,
// cookie_replies_received.
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
	c["cookie_replies_sent"] = m.cookieSent.Load()
	c["cookie_replies_received"] = m.cookieReceived.Load()
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
