package ipam

import (
	"encoding/binary"
	"encoding/json"
	"net/netip"
	"slices"
	"testing"
)

func seedMessages() [][]byte {
	b := ballot{Round: 3, Proposer: "a"}
	es := []wireEntry{{Start: 0, End: 128, Owner: "a", Version: 2, Free: 100}, {Start: 128, End: 256, Owner: "b", Version: 1, Free: 127}}
	r := newSeededRing("10.32.0.0/24", 256, []string{"a", "b"})
	msgs := []*message{
		{Type: msgRing, From: "b", RingID: r.ID, Entries: es},
		{Type: msgGetState, From: "b"},
		{Type: msgState, From: "b", RingID: r.ID, Range: "10.32.0.0/24", Size: 256, Seeds: r.Seeds, Entries: es},
		{Type: msgState, From: "b", Range: "10.32.0.0/24", Size: 256},
		// A periodic push/pull's digest, equal to the seeded ring's and not.
		{Type: msgState, From: "b", RingID: r.ID, Range: "10.32.0.0/24", Size: 256, Seeds: r.Seeds, Digest: ringDigest(r.entries)},
		{Type: msgState, From: "b", RingID: r.ID, Range: "10.32.0.0/24", Size: 256, Seeds: r.Seeds, Digest: ringDigest(nil)},
		{Type: msgPrepare, From: "b", Ballot: &b},
		{Type: msgPromise, From: "b", Ballot: &b, OK: true, Accepted: &b, Value: []string{"a", "b"}},
		{Type: msgPromise, From: "b", Ballot: &b, Promised: &b},
		{Type: msgAccept, From: "b", Ballot: &b, Value: []string{"a", "b"}},
		{Type: msgAccepted, From: "b", Ballot: &b, OK: true},
		{Type: msgChosen, From: "b", Ballot: &b, Value: []string{"a", "b"}},
		{Type: msgDonReq, From: "b", RingID: r.ID, Nonce: 1},
		{Type: msgNoDon, From: "b"},
		{Type: msgHandOver, From: "b", RingID: r.ID, Entries: []wireEntry{{Start: 128, End: 256, Owner: "a", Version: 5, Free: 127}}, Nonce: 1},
		{Type: msgAck, From: "b", Nonce: 1},
	}
	var out [][]byte
	for i, m := range msgs {
		m.Inc, m.Seq = 1, uint64(i+1)
		out = append(out, encodeMessage(m, testSigner(m.From)))
	}
	return append(out, nil, []byte{1}, []byte{2, '{', '}'}, []byte("\x01{\"t\":\"ring\",\"f\":\"\"}"))
}

func FuzzDecodeMessage(f *testing.F) {
	for _, s := range seedMessages() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMessage(b)
		if err != nil {
			return
		}
		again, err := decodeMessage(encodeMessage(m, testSigner(m.From)))
		if err != nil {
			t.Fatalf("re-encoded message does not decode: %v", err)
		}
		if again.Type != m.Type || again.From != m.From || len(again.Entries) != len(m.Entries) {
			t.Fatal("round trip changed the message")
		}
	})
}

// FuzzHandleMessage feeds untrusted bytes to a live IPAM as message and as
// push/pull state: no panic, and its own ranges never overlap another's.
// Each input is tried twice: as raw bytes, and as the body of a message
// correctly signed by the pinned peer b (a hostile member), so the fuzzer
// reaches past the signature check.
func FuzzHandleMessage(f *testing.F) {
	for _, s := range seedMessages() {
		f.Add(s)
		if h, err := parseHeader(s); err == nil {
			f.Add(append([]byte(nil), h.body...))
		}
	}
	rng := netip.MustParsePrefix("10.32.0.0/24")
	f.Fuzz(func(t *testing.T, b []byte) {
		n := newFakeNet(t, 1)
		a := n.add("a", rng, Init{Mode: ModeSeed, Seeds: []string{"a", "b"}}, "")
		c := n.add("c", rng, Init{Mode: ModeConsensus, Quorum: 2}, "")
		n.pin("b", testSigner("b").Public())
		hdr := []byte{wireFormat, 1, 'b'}
		hdr = binary.BigEndian.AppendUint64(hdr, 1)
		for seq, msg := range [][]byte{b, nil, nil} {
			if seq > 0 { // b's body, signed, with a fresh sequence number
				body := binary.BigEndian.AppendUint64(slices.Clone(hdr), uint64(seq))
				body = append(body, b...)
				msg = append(body, testSigner("b").Sign(body)...)
			}
			a.HandleMessage(msg)
			c.HandleMessage(msg)
			if seq != 1 {
				_ = a.MergeState(msg)
				_ = c.MergeState(msg)
			}
		}
		a.mu.Lock()
		err := a.ring.validate()
		a.mu.Unlock()
		if err != nil {
			t.Fatalf("ring invalid after input: %v", err)
		}
		if o, _ := a.Owner(netip.MustParseAddr("10.32.0.77")); o != "a" {
			t.Fatalf("a's address now owned by %q", o)
		}
		a.OwnedPrefixes()
		a.Status()
		c.Status()
	})
}

func FuzzDecodeState(f *testing.F) {
	r := newSeededRing("10.32.0.0/24", 256, []string{"a", "b"})
	good := persisted{Format: stateFormat, Name: "a", Range: "10.32.0.0/24",
		Ring:        &persistedRing{ID: r.ID, Seeds: r.Seeds, Size: r.Size, Entries: toWire(r.entries)},
		Allocations: []Allocation{{ContainerID: "c", IfName: "eth0", Addr: netip.MustParseAddr("10.32.0.1")}},
		Paxos:       &persistedAcceptor{Promised: ballot{2, "b"}, Accepted: ballot{2, "b"}, Value: []string{"a", "b"}}}
	b, _ := json.Marshal(good)
	f.Add(b)
	f.Add([]byte(`{"format":1,"name":"a","range":"10.32.0.0/24","allocations":[]}`))
	f.Add([]byte(`{"format":1,"name":"a","range":"10.32.0.0/24","ring":{"id":"x","seeds":["a"],"size":256,"entries":[]}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`[`))
	// Allocations the decoder must refuse: one interface twice, one address
	// twice, the range's network and broadcast addresses.
	for _, as := range [][]Allocation{
		{{ContainerID: "c", IfName: "eth0", Addr: netip.MustParseAddr("10.32.0.1")}, {ContainerID: "c", IfName: "eth0", Addr: netip.MustParseAddr("10.32.0.2")}},
		{{ContainerID: HostContainerID, IfName: "weft", Addr: netip.MustParseAddr("10.32.0.1")}, {ContainerID: "c", IfName: "eth0", Addr: netip.MustParseAddr("10.32.0.1")}},
		{{ContainerID: "c", IfName: "eth0", Addr: netip.MustParseAddr("10.32.0.0")}},
		{{ContainerID: "c", IfName: "eth0", Addr: netip.MustParseAddr("10.32.0.255")}},
	} {
		bad := good
		bad.Allocations = as
		b, _ := json.Marshal(bad)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodeState(b)
		if err != nil {
			return
		}
		if p.Ring != nil {
			if err := p.Ring.toRing().validate(); err != nil {
				t.Fatalf("accepted an invalid ring: %v", err)
			}
		}
		// What restore will hold: one address per interface, each address
		// once, none reserved; otherwise an address would be lost or
		// handed out twice after a restart.
		pfx := netip.MustParsePrefix(p.Range)
		size, _ := rangeSize(pfx)
		keys, addrs := map[Attachment]bool{}, map[netip.Addr]bool{}
		for _, a := range p.Allocations {
			k := Attachment{a.ContainerID, a.IfName}
			off, ok := offsetOf(pfx, a.Addr)
			if keys[k] || addrs[a.Addr] || !ok || reserved(off, size) {
				t.Fatalf("accepted allocation %+v", a)
			}
			keys[k], addrs[a.Addr] = true, true
		}
	})
}
