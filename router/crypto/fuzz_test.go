package crypto

import (
	"testing"

	"github.com/weftnet/weft/router/wire"
)

// FuzzHandleHandshake feeds arbitrary datagrams to a responder that knows
// one peer. Seeds include a valid initiation and a valid response, so the
// fuzzer starts from messages that reach the Diffie-Hellman code.
func FuzzHandleHandshake(f *testing.F) {
	net, clock := newTestNet(), newFakeClock()
	a := net.newNode(f, addrA, clock, nodeOpts{})
	b := net.newNode(f, addrB, clock, nodeOpts{})
	a.SetPeer("b", b.cfg.Identity.Public(), addrB)
	b.SetPeer("a", a.cfg.Identity.Public(), addrA)
	net.dropAll = true // the fuzzed manager must not talk to anyone
	a.tick()
	b.tick()
	for _, d := range net.captured {
		f.Add(d.msg)
	}
	// A valid response to a's initiation, made by b by hand.
	net.dropAll = false
	net.held = true
	a.mu.Lock()
	init, _ := a.initiateLocked((*a.peers.Load())["b"], clock.Now())
	a.mu.Unlock()
	b.handshakeNow(addrA, init)
	for _, d := range net.queue {
		f.Add(d.msg)
	}
	net.queue = nil
	net.dropAll = true
	f.Add([]byte{})
	f.Add([]byte{wire.Version, byte(wire.TypeHandshake), 0, 0, 0, 0, 0, 0, kindInitiation})
	f.Add(make([]byte, initLen))
	f.Add(make([]byte, respLen))

	f.Fuzz(func(t *testing.T, data []byte) {
		msg := append([]byte(nil), data...)
		_ = b.handleHandshake(addrA, msg)
		_ = a.handleHandshake(addrB, msg)
	})
}

// FuzzOpen feeds arbitrary datagrams to Open on a manager with a live
// session. Seeds include valid data messages and a keepalive.
func FuzzOpen(f *testing.F) {
	a, b, _, _ := pair(f, nodeOpts{}, nodeOpts{})
	for _, p := range []string{"", "x", "a pod packet of some length ........................................"} {
		f.Add(sealTo(f, a, "b", []byte(p)))
	}
	f.Add([]byte{})
	f.Add(make([]byte, wire.EncryptedHeaderLen+wire.TagLen))
	f.Fuzz(func(t *testing.T, data []byte) {
		msg := append([]byte(nil), data...)
		plain, peer, err := openMsg(b, addrA, msg)
		if err != nil {
			return
		}
		if peer != "a" || len(plain) != len(data)-wire.EncryptedHeaderLen-wire.TagLen {
			t.Fatalf("accepted: peer %q, %d plaintext bytes of a %d-byte datagram", peer, len(plain), len(data))
		}
	})
}

// FuzzCookieReply feeds arbitrary bytes to the cookie reply decoder and to
// an initiator with a handshake in flight: nothing but the real reply may
// be accepted, and nothing may panic.
func FuzzCookieReply(f *testing.F) {
	net, clock := newTestNet(), newFakeClock()
	a := net.newNode(f, addrA, clock, nodeOpts{})
	b := net.newNode(f, addrB, clock, nodeOpts{})
	a.SetPeer("b", b.cfg.Identity.Public(), addrB)
	b.SetPeer("a", a.cfg.Identity.Public(), addrA)
	net.dropAll = true
	a.tick() // an initiation in flight, never delivered
	init := net.captured[0].msg
	reply, err := b.cookies.reply(addrA, init)
	if err != nil {
		f.Fatal(err)
	}
	st := (*a.peers.Load())["b"].pending
	bPub := b.cfg.Identity.Public()
	key := cookieKey(&bPub, &b.cfg.PSK)
	f.Add(reply)
	f.Add(reply[:cookieReplyLen-1])
	f.Add(make([]byte, cookieReplyLen))
	f.Add([]byte{wire.Version, byte(wire.TypeHandshake), 0, 0, 0, 0, 0, 1, kindCookieReply})
	f.Fuzz(func(t *testing.T, data []byte) {
		msg := append([]byte(nil), data...)
		cookie, err := openCookieReply(&key, &st.mac1, msg)
		if err == nil {
			want, _ := b.cookies.cookieFor(addrA)
			if cookie != want {
				t.Fatalf("decoded a cookie %x that b never made for %s", cookie, addrA)
			}
		}
		if _, err := parseHandshake(msg); err == nil && msg[8] == kindCookieReply {
			_ = a.handleCookieReply(msg)
		}
	})
}
