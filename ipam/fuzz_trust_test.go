package ipam

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"testing"
	"time"
)

// FuzzForgedSenders is stateful: the input is a sequence of steps, each an
// IPAM message from one of several hostile senders (mallory and eve, who
// hold pinned keys, writing as themselves or in an honest peer's name),
// a replay of an earlier message, or honest work (allocations, gossip).
// After every step: every ring is valid, the honest peers' ranges do not
// overlap, each honest allocation lies in its owner's own range, and the
// per-sender state and the ring stay within their bounds.
func FuzzForgedSenders(f *testing.F) {
	f.Add([]byte{0, 0, 0, 200, 1, 0, 0, 0})
	f.Add([]byte{0, 1, 10, 20, 2, 1, 0, 0, 1, 0, 128, 127, 3, 2, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{2, 0, 5, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 3, 1, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 0, 0, 128, 3, 3, 1, 0, 0, 2, 130, 10, 1, 2, 0, 1, 6, 0, 9, 0, 0, 0, 0, 0, 6, 1, 255, 0, 0, 0, 0, 0})
	f.Add([]byte{4, 1, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0, 0, 2, 1, 7, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0})
	rng := netip.MustParsePrefix("10.32.0.0/24")
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 8*64 {
			data = data[:8*64]
		}
		n := newFakeNet(t, 1)
		a := n.add("a", rng, seedAB(), "")
		b := n.add("b", rng, seedAB(), "")
		honest := []*IPAM{a, b}
		forgers := []Signer{testSigner("mallory"), testSigner("eve")}
		n.pin("mallory", forgers[0].Public())
		n.pin("eve", forgers[1].Public())
		n.advance(selfTakeoverWindow + time.Second)
		id := ringIDOf(a)
		names := []string{"mallory", "eve", "a", "b"}
		versions := []uint64{1, 2, 3, 1 << 32, 1 << 40, maxVersion, maxVersion + 1, math.MaxUint64}
		var sent [][]byte
		allocs := 0
		for step := 0; len(data) >= 8; step, data = step+1, data[8:] {
			op, who, x, y, z, w, v := data[0]%8, data[1], data[2], data[3], data[4], data[5], data[6]
			signer := forgers[who%2]
			from := names[(who>>1)%4] // as itself, or in another's name
			to := honest[(who>>3)%2]
			e := entry{Start: uint64(x), End: min(uint64(x)+1+uint64(y), 256), Owner: names[z%4],
				Version: versions[v%8], Free: uint64(w % 8)}
			if r := w >> 3 % 4; r != 0 {
				e.Grant = grant{From: names[(z>>2)%4], To: e.Owner, Version: e.Version, Reason: r}
			}
			e = signed(signer, id, e)
			var msg []byte
			switch op {
			case 0:
				msg = n.forge(signer, &message{Type: msgRing, From: from, RingID: id, Entries: toWire([]entry{e})})
			case 1:
				msg = n.forge(signer, &message{Type: msgState, From: from, RingID: id, Range: rng.String(), Size: 256,
					Seeds: []string{"a", "b"}, Entries: toWire([]entry{e})})
			case 2:
				msg = n.forge(signer, &message{Type: msgDonReq, From: from, RingID: id, Nonce: uint64(x%4) + 1})
			case 3:
				msg = n.forge(signer, &message{Type: msgNoDon, From: from})
			case 4:
				if _, err := to.Allocate(context.Background(), fmt.Sprintf("c%d", allocs), "eth0", ""); err == nil {
					allocs++
				}
			case 5:
				if len(sent) > 0 {
					msg = sent[int(x)%len(sent)]
				}
			case 6:
				msg = n.forge(signer, &message{Type: msgPrepare, From: from, Ballot: &ballot{Round: versions[v%8], Proposer: from}})
			case 7:
				n.round(true)
			}
			if msg != nil {
				if op == 1 {
					_ = to.MergeState(msg)
				} else {
					to.HandleMessage(msg)
				}
				n.pump()
				if len(sent) < 8 {
					sent = append(sent, msg)
				}
			}
			checkSafety(t, honest)
			for _, p := range honest {
				p.mu.Lock()
				if err := p.ring.validate(); err != nil {
					p.mu.Unlock()
					t.Fatalf("step %d: %s's ring invalid: %v", step, p.cfg.Name, err)
				}
				if len(p.senders) > 4 || len(p.refused) > 4 || len(p.asked) > 4 || len(p.ring.entries) > p.keyCapLocked() {
					p.mu.Unlock()
					t.Fatalf("step %d: %s keeps %d senders, %d refusals, %d asked, %d keys", step, p.cfg.Name,
						len(p.senders), len(p.refused), len(p.asked), len(p.ring.entries))
				}
				t0 := p.owners.Load()
				for _, al := range p.allocs {
					off, _ := offsetOf(rng, al.Addr)
					if o, _ := t0.lookup(off); o != p.cfg.Name {
						p.mu.Unlock()
						t.Fatalf("step %d: %s allocated %s, which it sees owned by %q", step, p.cfg.Name, al.Addr, o)
					}
				}
				p.mu.Unlock()
			}
		}
	})
}
