package crypto

// The handshake is Noise IKpsk2 (the pattern WireGuard uses), instantiated as
// Noise_IKpsk2_25519_ChaChaPoly_SHA256:
//
//	<- s
//	...
//	-> e, es, s, ss
//	<- e, ee, se, psk
//
// SHA-256 (HMAC-based HKDF) rather than BLAKE2s: it runs on SHA hardware
// where the CPU has it and is the hash the password KDF already uses. The
// handshake AEAD is ChaCha20-Poly1305 with a zero nonce; every key it uses
// comes from a fresh MixKey and encrypts exactly one message.
//
// The initiation's encrypted payload carries a timestamp (so a captured
// initiation cannot be replayed) and the initiator's cipher offer; the
// response's carries the data cipher the responder chose. Both are
// authenticated by the handshake, so the choice cannot be downgraded.
//
// Before any Diffie-Hellman work a receiver checks the MACs at the end of
// the message (keyed HMAC-SHA256, truncated to 16 bytes):
//   - mac1, keyed by the receiver's public key: garbage fails here;
//   - mac2, keyed by the PSK and the receiver's public key: a sender without
//     the mesh password fails here, and is answered nothing;
//   - the cookie MAC, keyed by a cookie the receiver gave to the sender's
//     source address (cookie.go). It is zero until the sender got a cookie,
//     and checked only while the receiver is under load: then an initiation
//     without it is answered with a cookie reply instead of any
//     Diffie-Hellman, so a flood from spoofed addresses costs no DH at all.
//
// mac2 lets someone who captured a handshake test password guesses offline,
// as the password-keyed gossip encryption already does; Argon2id makes each
// guess expensive (see password.go).

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/weftnet/weft/router/wire"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"
)

const (
	noiseProtocolName = "Noise_IKpsk2_25519_ChaChaPoly_SHA256"
	noisePrologue     = "weft data plane v1"
	mac1Label         = "weft mac1"
	mac2Label         = "weft mac2"
)

// Handshake message kinds: the first byte after the wire header.
const (
	kindInitiation  = 1
	kindResponse    = 2
	kindCookieReply = 3
)

// Layout of the handshake messages. The wire header's index is zero in an
// initiation and the initiator's session index in a response.
//
//	initiation:   header(8) kind(1) zero(3) sender(4) ephemeral(32)
//	              static(32+16) payload(13+16) mac1 mac2 cookie(3*16) = 173
//	response:     header(8) kind(1) zero(3) sender(4) ephemeral(32)
//	              payload(1+16) mac1 mac2 cookie(3*16)                 = 113
//	cookie reply: header(8) kind(1) zero(3) nonce(24) cookie(16+16)   = 68
//
// A cookie reply's header index is the sender index of the initiation it
// answers.
const (
	macLen         = 16
	aeadTagLen     = chacha20poly1305.Overhead
	hsSenderOff    = wire.HeaderLen + 4
	hsEphemeralOff = hsSenderOff + 4
	hsBodyOff      = hsEphemeralOff + 32
	initPayloadLen = timestampLen + 1
	initStaticLen  = 32 + aeadTagLen
	initLen        = hsBodyOff + initStaticLen + initPayloadLen + aeadTagLen + 3*macLen
	respPayloadLen = 1
	respLen        = hsBodyOff + respPayloadLen + aeadTagLen + 3*macLen
	timestampLen   = 12
)

// symmetricState is Noise's chaining key and handshake hash.
type symmetricState struct {
	ck [32]byte // chaining key
	h  [32]byte // transcript hash
}

// newSymmetricState starts an IK handshake with responder's static key,
// which the initiator knows in advance.
func newSymmetricState(responder *[32]byte) symmetricState {
	var s symmetricState
	s.ck = sha256.Sum256([]byte(noiseProtocolName))
	s.h = s.ck
	s.mixHash([]byte(noisePrologue))
	s.mixHash(responder[:])
	return s
}

func (s *symmetricState) mixHash(data []byte) {
	d := sha256.New()
	d.Write(s.h[:])
	d.Write(data)
	d.Sum(s.h[:0])
}

func (s *symmetricState) mixKey(input []byte) {
	s.ck = hkdf1(&s.ck, input)
}

// mixKeyAndKey is MixKey returning the new cipher key.
func (s *symmetricState) mixKeyAndKey(input []byte) [32]byte {
	var k [32]byte
	s.ck, k = hkdf2(&s.ck, input)
	return k
}

func (s *symmetricState) encryptAndHash(key *[32]byte, dst, plaintext []byte) []byte {
	aead, _ := chacha20poly1305.New(key[:]) // cannot fail: key is 32 bytes
	var nonce [chacha20poly1305.NonceSize]byte
	out := aead.Seal(dst[:0], nonce[:], plaintext, s.h[:])
	s.mixHash(out)
	return out
}

func (s *symmetricState) decryptAndHash(key *[32]byte, dst, ciphertext []byte) ([]byte, error) {
	aead, _ := chacha20poly1305.New(key[:])
	var nonce [chacha20poly1305.NonceSize]byte
	out, err := aead.Open(dst[:0], nonce[:], ciphertext, s.h[:])
	if err != nil {
		return nil, ErrDecrypt
	}
	s.mixHash(ciphertext)
	return out, nil
}

func hmacSum(key []byte, parts ...[]byte) [32]byte {
	m := hmac.New(sha256.New, key)
	for _, p := range parts {
		m.Write(p)
	}
	var out [32]byte
	m.Sum(out[:0])
	return out
}

// hkdf1..3 are Noise's HKDF with one to three outputs.
func hkdf1(ck *[32]byte, input []byte) [32]byte {
	prk := hmacSum(ck[:], input)
	return hmacSum(prk[:], []byte{1})
}

func hkdf2(ck *[32]byte, input []byte) (a, b [32]byte) {
	prk := hmacSum(ck[:], input)
	a = hmacSum(prk[:], []byte{1})
	b = hmacSum(prk[:], a[:], []byte{2})
	return a, b
}

func hkdf3(ck *[32]byte, input []byte) (a, b, c [32]byte) {
	prk := hmacSum(ck[:], input)
	a = hmacSum(prk[:], []byte{1})
	b = hmacSum(prk[:], a[:], []byte{2})
	c = hmacSum(prk[:], b[:], []byte{3})
	return a, b, c
}

// dh is X25519; it fails on a low-order point, which an honest peer never sends.
func dh(priv, pub *[32]byte) ([32]byte, error) {
	var out [32]byte
	r, err := curve25519.X25519(priv[:], pub[:])
	if err != nil {
		return out, ErrDecrypt
	}
	copy(out[:], r)
	return out, nil
}

func newEphemeral() (priv, pub [32]byte, err error) {
	id, err := GenerateIdentity()
	if err != nil {
		return priv, pub, err
	}
	return id.private, id.public, nil
}

// macKeys are the keys of mac1 and mac2 for messages sent to one public key.
type macKeys struct {
	mac1, mac2 [32]byte
}

func newMACKeys(receiver *[32]byte, psk *[32]byte) macKeys {
	return macKeys{
		mac1: sha256.Sum256(append([]byte(mac1Label), receiver[:]...)),
		mac2: hmacSum(psk[:], []byte(mac2Label), receiver[:]),
	}
}

// Where the MACs sit in a message of n bytes. Each covers everything before
// it, the MACs before it included.
func mac1Off(n int) int   { return n - 3*macLen }
func mac2Off(n int) int   { return n - 2*macLen }
func cookieOff(n int) int { return n - macLen }

// put writes mac1 and mac2 and, with a cookie, the cookie MAC (else zero)
// into the last 48 bytes of msg.
func (k *macKeys) put(msg []byte, cookie *[cookieLen]byte) {
	n := len(msg)
	m1 := hmacSum(k.mac1[:], msg[:mac1Off(n)])
	copy(msg[mac1Off(n):], m1[:macLen])
	m2 := hmacSum(k.mac2[:], msg[:mac2Off(n)])
	copy(msg[mac2Off(n):], m2[:macLen])
	if cookie == nil {
		clear(msg[cookieOff(n):])
		return
	}
	putCookieMAC(msg, cookie)
}

// check verifies mac1 and mac2 of msg, cheapest first.
func (k *macKeys) check(msg []byte) error {
	n := len(msg)
	m1 := hmacSum(k.mac1[:], msg[:mac1Off(n)])
	if !hmac.Equal(m1[:macLen], msg[mac1Off(n):mac2Off(n)]) {
		return ErrBadMAC
	}
	m2 := hmacSum(k.mac2[:], msg[:mac2Off(n)])
	if !hmac.Equal(m2[:macLen], msg[mac2Off(n):cookieOff(n)]) {
		return ErrWrongPSK
	}
	return nil
}

// parseHandshake checks the framing of a handshake message and returns its
// kind; sizes are fixed per kind.
func parseHandshake(msg []byte) (kind byte, err error) {
	if len(msg) < hsBodyOff {
		return 0, ErrMalformed
	}
	if msg[0] != wire.Version || wire.Type(msg[1]) != wire.TypeHandshake || msg[2] != 0 || msg[3] != 0 {
		return 0, ErrMalformed
	}
	if msg[9] != 0 || msg[10] != 0 || msg[11] != 0 {
		return 0, ErrMalformed
	}
	switch kind = msg[8]; kind {
	case kindInitiation:
		if len(msg) != initLen || binary.BigEndian.Uint32(msg[4:8]) != 0 {
			return 0, ErrMalformed
		}
	case kindResponse:
		if len(msg) != respLen {
			return 0, ErrMalformed
		}
	case kindCookieReply:
		if len(msg) != cookieReplyLen {
			return 0, ErrMalformed
		}
	default:
		return 0, ErrMalformed
	}
	return kind, nil
}

func putHandshakeHeader(msg []byte, kind byte, receiver, sender uint32) {
	wire.Header{Version: wire.Version, Type: wire.TypeHandshake, Index: receiver}.Put(msg)
	msg[8], msg[9], msg[10], msg[11] = kind, 0, 0, 0
	binary.BigEndian.PutUint32(msg[hsSenderOff:], sender)
}

// initiatorState is what the initiator keeps between sending an initiation
// and receiving the response.
type initiatorState struct {
	sym     symmetricState
	ephPriv [32]byte
	offer   uint8
	sender  uint32 // our session index
	sentAt  time.Time
	mac1    [macLen]byte // of the initiation sent: the AD of a cookie reply
}

// timestamp encodes t so that later times compare greater byte-wise.
func timestamp(t time.Time) [timestampLen]byte {
	var ts [timestampLen]byte
	binary.BigEndian.PutUint64(ts[:8], uint64(t.Unix())+(1<<62))
	binary.BigEndian.PutUint32(ts[8:], uint32(t.Nanosecond()))
	return ts
}

// createInitiation builds an initiation to the peer with static key peerPub,
// with the cookie MAC when cookie is not nil.
func createInitiation(id *Identity, peerPub *[32]byte, staticDH *[32]byte, macs *macKeys, cookie *[cookieLen]byte,
	sender uint32, ts [timestampLen]byte, offer uint8) ([]byte, *initiatorState, error) {
	st := &initiatorState{offer: offer, sender: sender}
	st.sym = newSymmetricState(peerPub)
	ephPriv, ephPub, err := newEphemeral()
	if err != nil {
		return nil, nil, err
	}
	st.ephPriv = ephPriv

	msg := make([]byte, initLen)
	putHandshakeHeader(msg, kindInitiation, 0, sender)
	copy(msg[hsEphemeralOff:], ephPub[:])
	st.sym.mixHash(ephPub[:])
	st.sym.mixKey(ephPub[:])

	es, err := dh(&ephPriv, peerPub)
	if err != nil {
		return nil, nil, fmt.Errorf("initiation: %w", err)
	}
	k := st.sym.mixKeyAndKey(es[:])
	staticOut := msg[hsBodyOff : hsBodyOff+initStaticLen]
	st.sym.encryptAndHash(&k, staticOut, id.public[:])

	k = st.sym.mixKeyAndKey(staticDH[:])
	var payload [initPayloadLen]byte
	copy(payload[:], ts[:])
	payload[timestampLen] = offer
	payloadOut := msg[hsBodyOff+initStaticLen : hsBodyOff+initStaticLen+initPayloadLen+aeadTagLen]
	st.sym.encryptAndHash(&k, payloadOut, payload[:])

	macs.put(msg, cookie)
	copy(st.mac1[:], msg[mac1Off(len(msg)):])
	return msg, st, nil
}

// initiation is what the responder learns from a valid initiation.
type initiation struct {
	sym       symmetricState
	sender    uint32
	ephPub    [32]byte
	peerPub   [32]byte
	timestamp [timestampLen]byte
	offer     uint8
}

// consumeInitiation decrypts an initiation whose MACs were already checked.
// staticDH looks up the precomputed DH with a peer's static key, and fails
// with ErrUnknownPeerKey for a key that is not a known peer.
func consumeInitiation(id *Identity, msg []byte, staticDH func(pub [32]byte) ([32]byte, error)) (*initiation, error) {
	in := &initiation{sender: binary.BigEndian.Uint32(msg[hsSenderOff:])}
	in.sym = newSymmetricState(&id.public)
	copy(in.ephPub[:], msg[hsEphemeralOff:])
	in.sym.mixHash(in.ephPub[:])
	in.sym.mixKey(in.ephPub[:])

	es, err := dh(&id.private, &in.ephPub)
	if err != nil {
		return nil, err
	}
	k := in.sym.mixKeyAndKey(es[:])
	var static [32]byte
	if _, err := in.sym.decryptAndHash(&k, static[:0], msg[hsBodyOff:hsBodyOff+initStaticLen]); err != nil {
		return nil, err
	}
	in.peerPub = static
	ss, err := staticDH(static)
	if err != nil {
		return nil, err
	}
	k = in.sym.mixKeyAndKey(ss[:])
	var payload [initPayloadLen]byte
	if _, err := in.sym.decryptAndHash(&k, payload[:0], msg[hsBodyOff+initStaticLen:hsBodyOff+initStaticLen+initPayloadLen+aeadTagLen]); err != nil {
		return nil, err
	}
	copy(in.timestamp[:], payload[:timestampLen])
	in.offer = payload[timestampLen]
	if in.offer&offerChaCha == 0 {
		return nil, ErrCipherMismatch
	}
	return in, nil
}

// sessionKeys are the outcome of a handshake for one side.
type sessionKeys struct {
	send, recv [32]byte
	cipher     cipherID
}

// createResponse answers a consumed initiation and returns the response and
// the responder's session keys.
func createResponse(in *initiation, psk *[32]byte, macs *macKeys, sender uint32, choice cipherID) ([]byte, sessionKeys, error) {
	var keys sessionKeys
	ephPriv, ephPub, err := newEphemeral()
	if err != nil {
		return nil, keys, err
	}
	msg := make([]byte, respLen)
	putHandshakeHeader(msg, kindResponse, in.sender, sender)
	copy(msg[hsEphemeralOff:], ephPub[:])
	sym := in.sym
	sym.mixHash(ephPub[:])
	sym.mixKey(ephPub[:])
	ee, err := dh(&ephPriv, &in.ephPub)
	if err != nil {
		return nil, keys, err
	}
	sym.mixKey(ee[:])
	se, err := dh(&ephPriv, &in.peerPub)
	if err != nil {
		return nil, keys, err
	}
	sym.mixKey(se[:])
	var t, k [32]byte
	sym.ck, t, k = hkdf3(&sym.ck, psk[:])
	sym.mixHash(t[:])
	sym.encryptAndHash(&k, msg[hsBodyOff:hsBodyOff+respPayloadLen+aeadTagLen], []byte{byte(choice)})
	macs.put(msg, nil)

	initToResp, respToInit := hkdf2(&sym.ck, nil)
	keys = sessionKeys{send: respToInit, recv: initToResp, cipher: choice}
	return msg, keys, nil
}

// consumeResponse finishes the initiator's side of the handshake.
func consumeResponse(st *initiatorState, id *Identity, psk *[32]byte, msg []byte) (sessionKeys, uint32, error) {
	var keys sessionKeys
	sender := binary.BigEndian.Uint32(msg[hsSenderOff:])
	var ephPub [32]byte
	copy(ephPub[:], msg[hsEphemeralOff:])
	sym := st.sym
	sym.mixHash(ephPub[:])
	sym.mixKey(ephPub[:])
	ee, err := dh(&st.ephPriv, &ephPub)
	if err != nil {
		return keys, 0, err
	}
	sym.mixKey(ee[:])
	se, err := dh(&id.private, &ephPub)
	if err != nil {
		return keys, 0, err
	}
	sym.mixKey(se[:])
	var t, k [32]byte
	sym.ck, t, k = hkdf3(&sym.ck, psk[:])
	sym.mixHash(t[:])
	var payload [respPayloadLen]byte
	if _, err := sym.decryptAndHash(&k, payload[:0], msg[hsBodyOff:hsBodyOff+respPayloadLen+aeadTagLen]); err != nil {
		return keys, 0, err
	}
	choice := cipherID(payload[0])
	switch {
	case choice == cipherChaCha20Poly1305:
	case choice == cipherAES256GCM && st.offer&offerAES != 0:
	default:
		return keys, 0, ErrCipherMismatch
	}
	initToResp, respToInit := hkdf2(&sym.ck, nil)
	keys = sessionKeys{send: initToResp, recv: respToInit, cipher: choice}
	return keys, sender, nil
}

// randomIndex draws a session index; zero is reserved for "none".
func randomIndex() (uint32, error) {
	var b [4]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, err
		}
		if v := binary.BigEndian.Uint32(b[:]); v != 0 {
			return v, nil
		}
	}
}
