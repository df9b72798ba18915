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
