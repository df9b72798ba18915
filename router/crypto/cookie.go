package crypto

// Cookies bind a handshake to its sender's source address, as WireGuard's
// mac2 does. While the responder is under load it refuses to spend a
// Diffie-Hellman on an initiation whose cookie MAC does not verify for the
// address it came from; it answers with a cookie reply instead. Only the
// host at that address receives the reply, and only a holder of the mesh
// password can decrypt it, so a flood from spoofed addresses, or of
// initiations captured earlier, gets no further than two HMACs. The
// initiator keeps the cookie and stamps its next initiations with it.
//
//	cookie       = HMAC(secret, source address and port)[:16], secret
//	               random, replaced every cookieRotate
//	cookie MAC   = HMAC(cookie, message up to the cookie MAC)[:16]
//	cookie reply = XChaCha20-Poly1305(key, random nonce, cookie,
//	               AD = mac1 of the initiation answered), key from the PSK
//	               and the responder's public key

import (
	"crypto/hmac"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/weftnet/weft/router/wire"
	"golang.org/x/crypto/chacha20poly1305"
)

const (
	cookieLen = 16
	// cookieRotate is how long a responder's cookie secret lives; a cookie
	// is worth something for at most that long.
	cookieRotate = 2 * time.Minute
	// cookieUseFor is how long an initiator stamps with a cookie: a little
	// under cookieRotate, so that it stops before the responder's secret
	// has surely changed.
	cookieUseFor = cookieRotate - 10*time.Second
	cookieLabel  = "weft cookie"

	cookieNonceOff = hsSenderOff
	cookieBoxOff   = cookieNonceOff + chacha20poly1305.NonceSizeX
	cookieReplyLen = cookieBoxOff + cookieLen + aeadTagLen
)

// cookieKey is the key of the cookie replies a responder with public key pub
// sends: both ends of a handshake know it, nobody without the password does.
func cookieKey(pub *[32]byte, psk *[32]byte) [32]byte {
	return hmacSum(psk[:], []byte(cookieLabel), pub[:])
}

// putCookieMAC writes the cookie MAC, the last macLen bytes of msg.
func putCookieMAC(msg []byte, cookie *[cookieLen]byte) {
	n := len(msg)
	m := hmacSum(cookie[:], msg[:cookieOff(n)])
	copy(msg[cookieOff(n):], m[:macLen])
}

// cookieJar is the responder's side: the rotating secret, the cookies made
// from it and the replies carrying them. Safe for concurrent use.
type cookieJar struct {
	key   [32]byte // of our cookie replies (cookieKey of our public key)
	clock func() time.Time

	mu       sync.Mutex
	secret   [32]byte
	secretAt time.Time
}

func newCookieJar(ourPub, psk *[32]byte, clock func() time.Time) *cookieJar {
	return &cookieJar{key: cookieKey(ourPub, psk), clock: clock}
}

// cookieFor returns the cookie of a source address under the current secret.
func (j *cookieJar) cookieFor(src netip.AddrPort) ([cookieLen]byte, error) {
	now := j.clock()
	j.mu.Lock()
	if j.secretAt.IsZero() || now.Sub(j.secretAt) >= cookieRotate || now.Before(j.secretAt) {
		if _, err := rand.Read(j.secret[:]); err != nil {
			j.mu.Unlock()
			return [cookieLen]byte{}, fmt.Errorf("cookie secret: %w", err)
		}
		j.secretAt = now
	}
	secret := j.secret
	j.mu.Unlock()
	var addr [18]byte
	a16 := src.Addr().Unmap().As16()
	copy(addr[:16], a16[:])
	binary.BigEndian.PutUint16(addr[16:], src.Port())
	sum := hmacSum(secret[:], addr[:])
	return [cookieLen]byte(sum[:cookieLen]), nil
}

// checkMAC reports whether msg carries the cookie MAC of src's cookie.
func (j *cookieJar) checkMAC(src netip.AddrPort, msg []byte) bool {
	cookie, err := j.cookieFor(src)
	if err != nil {
		return false
	}
	n := len(msg)
	m := hmacSum(cookie[:], msg[:cookieOff(n)])
	return hmac.Equal(m[:macLen], msg[cookieOff(n):])
}

// reply builds the cookie reply to initiation msg from src.
func (j *cookieJar) reply(src netip.AddrPort, msg []byte) ([]byte, error) {
	cookie, err := j.cookieFor(src)
	if err != nil {
		return nil, err
	}
	out := make([]byte, cookieReplyLen)
	putHandshakeHeader(out, kindCookieReply, binary.BigEndian.Uint32(msg[hsSenderOff:]), 0)
	nonce := out[cookieNonceOff:cookieBoxOff]
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("cookie nonce: %w", err)
	}
	aead, err := chacha20poly1305.NewX(j.key[:])
	if err != nil {
		return nil, fmt.Errorf("cookie reply: %w", err)
	}
	n := len(msg)
	aead.Seal(out[cookieBoxOff:cookieBoxOff], nonce, cookie[:], msg[mac1Off(n):mac2Off(n)])
	return out, nil
}

// openCookieReply decrypts a cookie reply (framing already checked) with the
// responder's cookie key; mac1 is that of the initiation it answers.
func openCookieReply(key *[32]byte, mac1 *[macLen]byte, msg []byte) ([cookieLen]byte, error) {
	var cookie [cookieLen]byte
	if len(msg) != cookieReplyLen || wire.Type(msg[1]) != wire.TypeHandshake || msg[8] != kindCookieReply {
		return cookie, ErrMalformed
	}
	aead, err := chacha20poly1305.NewX(key[:])
	if err != nil {
		return cookie, ErrDecrypt
	}
	if _, err := aead.Open(cookie[:0], msg[cookieNonceOff:cookieBoxOff], msg[cookieBoxOff:], mac1[:]); err != nil {
		return cookie, ErrDecrypt
	}
	return cookie, nil
}
