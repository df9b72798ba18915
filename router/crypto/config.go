package crypto

// Configuration of a Manager and the limits of one session.

import (
	"errors"
	"log/slog"
	"math"
	"net/netip"
	"time"

	"github.com/weftnet/weft/internal/logx"
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

// HandshakeSender sends one datagram of the Manager's own. The Manager never
// calls it while holding a lock, and never reuses msg afterwards, so it may
// keep msg. It is given when the Manager is built, before the data plane
// runs: a send that fails (socket not open yet, or closed) is only logged,
// and the handshake is retried on its timer.
type HandshakeSender interface {
	SendHandshake(to netip.AddrPort, msg []byte) error
}

// Config configures a Manager. Identity, PSK and Send are required.
type Config struct {
	// Identity is this peer's static key (LoadOrCreateIdentity).
	Identity Identity
	// PSK is PasswordKeys.PSK from DerivePasswordKeys.
	PSK [32]byte
	// Send transmits the Manager's own datagrams: handshakes, cookie
	// replies and keepalives (router.HandshakeSender on the data socket).
	Send HandshakeSender
	// RekeyAfter: age at which a session is replaced (default 2 min).
	RekeyAfter time.Duration
	// HandshakeRetry: how long to wait for a response before trying again
	// (default 5 s, or RekeyAfter/4 when that is shorter).
	HandshakeRetry time.Duration
	// DisableAES makes this host offer only ChaCha20-Poly1305, as a host
	// without AES hardware does. For tests and benchmarks.
	DisableAES bool
	Logger     *slog.Logger
	// Clock returns the current time (default time.Now). Tests pass a fake.
	Clock func() time.Time
	// OnWrongPassword, if set, is told of every handshake refused because
	// the sender has another password, unthrottled (the agent turns it into
	// a Kubernetes Event). It runs on the handshake worker: must not block.
	OnWrongPassword func(from netip.AddrPort)
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
