package crypto

import "errors"

// Errors of the data path. They are returned unwrapped so that the hot path
// never allocates; compare with errors.Is or ==.
var (
	// ErrNoSession: there is no usable session to the peer (none yet, or it
	// expired). The caller drops the packet; the Manager has already asked
	// for a handshake.
	ErrNoSession = errors.New("no session with peer")
	// ErrUnknownPeer: the peer name was never added, or was removed.
	ErrUnknownPeer = errors.New("unknown peer")
	// ErrShortBuffer: the caller's buffer lacks headroom or tailroom.
	ErrShortBuffer = errors.New("buffer too short for header and tag")
	// ErrShort: the datagram is too short to hold an encrypted header and tag.
	ErrShort = errors.New("encrypted message too short")
	// ErrMalformed: the bytes are not a message of the expected type and size.
	ErrMalformed = errors.New("malformed message")
	// ErrUnknownSession: the receiver index names no live session.
	ErrUnknownSession = errors.New("unknown receiver session index")
	// ErrUnknownIndex: a handshake response names no handshake in flight.
	ErrUnknownIndex = errors.New("unknown receiver index")
	// ErrAuth: the AEAD tag did not verify (tampered, forged or wrong key).
	ErrAuth = errors.New("message authentication failed")
	// ErrReplay: the counter was already seen or fell behind the replay window.
	ErrReplay = errors.New("replayed or too old message")
	// ErrExpired: the session that the message belongs to is too old to use.
	ErrExpired = errors.New("session expired")
)

// Errors of the handshake. Each failure is also counted under its Reason.
var (
	ErrBadMAC              = errors.New("handshake mac1 does not verify")
	ErrWrongPSK            = errors.New("handshake mac2 does not verify: peer has a different password")
	ErrDecrypt             = errors.New("handshake does not decrypt")
	ErrReplayedInitiation  = errors.New("replayed handshake initiation")
	ErrRateLimited         = errors.New("handshake rate limit exceeded")
	ErrUnknownPeerKey      = errors.New("handshake from a public key that is not a known peer")
	ErrCipherMismatch      = errors.New("responder chose a cipher the initiator did not offer")
	ErrSimultaneousDropped = errors.New("initiation dropped: our own initiation to this peer wins the tie-break")
	ErrDuplicateInitiation = errors.New("duplicate of a recent handshake initiation")
	ErrCookieRequired      = errors.New("under load: initiation without a valid cookie, answered with a cookie reply")
)

// FailReason names why a handshake message was refused; the values are stable
// strings for status output and metrics labels.
type FailReason int

const (
	FailMalformed FailReason = iota
	FailBadMAC
	FailWrongPSK
	FailDecrypt
	FailReplayedInitiation
	FailRateLimited
	FailUnknownPeer
	FailUnknownIndex
	FailTimeout
	FailDuplicate      // an exact copy of a recent initiation
	FailCookieRequired // under load, no valid cookie: a cookie reply was sent
	FailBusy           // the handshake queue was full
	numFailReasons
)

var failReasonNames = [numFailReasons]string{
	FailMalformed:          "malformed",
	FailBadMAC:             "bad-mac",
	FailWrongPSK:           "wrong-psk",
	FailDecrypt:            "decrypt",
	FailReplayedInitiation: "replayed-initiation",
	FailRateLimited:        "rate-limited",
	FailUnknownPeer:        "unknown-peer",
	FailUnknownIndex:       "unknown-index",
	FailTimeout:            "timeout",
	FailDuplicate:          "duplicate",
	FailCookieRequired:     "cookie-required",
	FailBusy:               "busy",
}

func (r FailReason) String() string {
	if r < 0 || r >= numFailReasons {
		return "unknown"
	}
	return failReasonNames[r]
}

// failReasonOf maps a handshake error to the reason it is counted under.
func failReasonOf(err error) (FailReason, bool) {
	switch {
	case errors.Is(err, ErrMalformed):
		return FailMalformed, true
	case errors.Is(err, ErrBadMAC):
		return FailBadMAC, true
	case errors.Is(err, ErrWrongPSK):
		return FailWrongPSK, true
	case errors.Is(err, ErrDecrypt), errors.Is(err, ErrCipherMismatch):
		return FailDecrypt, true
	case errors.Is(err, ErrReplayedInitiation):
		return FailReplayedInitiation, true
	case errors.Is(err, ErrRateLimited):
		return FailRateLimited, true
	case errors.Is(err, ErrUnknownPeerKey):
		return FailUnknownPeer, true
	case errors.Is(err, ErrUnknownIndex):
		return FailUnknownIndex, true
	case errors.Is(err, ErrDuplicateInitiation):
		return FailDuplicate, true
	case errors.Is(err, ErrCookieRequired):
		return FailCookieRequired, true
	}
	return 0, false
}
