package crypto

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/router/wire"
)

// capturedInitiation returns the first initiation a sent to b on net.
func capturedInitiation(t *testing.T, net *testNet) datagram {
	t.Helper()
	net.mu.Lock()
	defer net.mu.Unlock()
	for _, d := range net.captured {
		if d.to == addrB && wire.Type(d.msg[1]) == wire.TypeHandshake && d.msg[8] == kindInitiation {
			return d
		}
	}
	t.Fatal("no initiation captured")
	return datagram{}
}

// spoofed returns the i-th of many distinct underlay source addresses.
func spoofed(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), uint16(1024+i%50000))
}

// One captured initiation replayed from more spoofed sources than the rate
// limiter has buckets costs no Diffie-Hellman and does not lock the real
// peer out (issue 15, item 3: before, every copy cost a DH and filled the
// limiter's table, and the peer's next initiation was refused).
func TestReplayFromManySpoofedSourcesKeepsThePeer(t *testing.T) {
	a, b, net, clock := pair(t, nodeOpts{}, nodeOpts{})
	init := capturedInitiation(t, net)
	// The peer's bucket is full again and forgotten by the next prune.
	clock.Advance(3 * time.Second)
	b.tick()
	completed := b.Counters()["handshake_completed"]
	sent := net.sentBy(addrB)
	const copies = maxRateSources + 500
	for i := range copies {
		b.handshakeNow(spoofed(i), init.msg)
	}
	c := b.Counters()
	if c["handshake_failed_duplicate"] != copies {
		t.Fatalf("duplicate = %d, want all %d copies dropped as duplicates", c["handshake_failed_duplicate"], copies)
	}
	// A copy that got as far as the Diffie-Hellman would be refused by its
	// timestamp (replayed_initiation) or answered.
	if c["handshake_failed_replayed_initiation"] != 0 || c["handshake_completed"] != completed || net.sentBy(addrB) != sent {
		t.Fatalf("copies reached the DH: %v, %d datagrams sent", c, net.sentBy(addrB)-sent)
	}
	// The real peer rekeys.
	rekeys := a.Counters()["rekeys"]
	clock.Advance(a.cfg.RekeyAfter)
	a.tick()
	if got := b.Counters()["handshake_failed_rate_limited"]; got != 0 {
		t.Fatalf("the real peer was rate limited (%d)", got)
	}
	if got := a.Counters()["rekeys"]; got != rekeys+1 {
		t.Fatalf("rekeys = %d, want %d: the real peer's handshake failed; b counters %v", got, rekeys+1, b.Counters())
	}
}

// Under load, an initiation needs a cookie bound to its source address: one
// without is answered with a cookie reply and costs no DH; the initiator
// retries with the cookie and gets its session. The same stamped initiation
// from another address is refused before the DH.
func TestCookieRequiredUnderLoad(t *testing.T) {
	a, b, net, clock := pair(t, nodeOpts{}, nodeOpts{})
	b.forceLoad.Store(true)
	rekeys := a.Counters()["rekeys"]
	completed := b.Counters()["handshake_completed"]
	clock.Advance(a.cfg.RekeyAfter)
	a.tick() // initiation without cookie -> cookie reply -> a keeps the cookie
	if c := b.Counters(); c["handshake_failed_cookie_required"] != 1 || c["cookie_replies_sent"] != 1 || c["handshake_completed"] != completed {
		t.Fatalf("b counters %v: want one cookie reply and no handshake", c)
	}
	if got := a.Counters()["cookie_replies_received"]; got != 1 {
		t.Fatalf("a cookie_replies_received = %d", got)
	}
	a.tick() // the retry carries the cookie
	if got := a.Counters()["rekeys"]; got != rekeys+1 {
		t.Fatalf("rekeys = %d, want %d; a %v b %v", got, rekeys+1, a.Counters(), b.Counters())
	}

	// The stamped initiation, replayed from elsewhere after the duplicate
	// cache forgot it: its cookie is not that address's.
	var stamped []byte
	net.mu.Lock()
	for _, d := range net.captured {
		if d.to == addrB && d.msg[8] == kindInitiation {
			stamped = d.msg // the last one: with the cookie
		}
	}
	net.mu.Unlock()
	if stamped == nil || [macLen]byte(stamped[cookieOff(len(stamped)):]) == ([macLen]byte{}) {
		t.Fatal("no initiation with a cookie MAC captured")
	}
	b.dedupMu.Lock()
	b.dedup = dedup{}
	b.dedupMu.Unlock()
	before := b.Counters()
	b.handshakeNow(spoofed(7), stamped)
	after := b.Counters()
	if after["handshake_failed_cookie_required"] != before["handshake_failed_cookie_required"]+1 ||
		after["handshake_failed_replayed_initiation"] != before["handshake_failed_replayed_initiation"] {
		t.Fatalf("a cookie for %s accepted from %s: before %v after %v", addrA, spoofed(7), before, after)
	}
}

// A cookie reply is accepted only for an initiation in flight, and only with
// the key and the mac1 of that initiation.
func TestCookieReplyChecked(t *testing.T) {
	a, b, net, clock := pair(t, nodeOpts{}, nodeOpts{})
	net.mu.Lock()
	net.held = true // keep a's initiation in flight
	net.mu.Unlock()
	clock.Advance(a.cfg.RekeyAfter)
	a.tick()
	net.mu.Lock()
	q := net.queue
	net.queue = nil
	net.mu.Unlock()
	if len(q) != 1 || q[0].msg[8] != kindInitiation {
		t.Fatalf("queued %d datagrams, want a's initiation", len(q))
	}
	init := q[0].msg
	reply, err := b.cookies.reply(addrA, init)
	if err != nil {
		t.Fatal(err)
	}
	// Tampered, or for another initiation: refused, the cookie not kept.
	bad := append([]byte(nil), reply...)
	bad[len(bad)-1] ^= 1
	if err := a.handleHandshake(addrB, bad); err != ErrDecrypt {
		t.Fatalf("tampered reply: %v", err)
	}
	other := append([]byte(nil), reply...)
	other[7] ^= 1
	if err := a.handleHandshake(addrB, other); err != ErrUnknownIndex {
		t.Fatalf("reply for another index: %v", err)
	}
	if err := a.handleHandshake(addrB, reply); err != nil {
		t.Fatalf("valid reply: %v", err)
	}
	// The pending initiation is abandoned, so a replay of the reply finds
	// nothing to answer.
	if err := a.handleHandshake(addrB, reply); err != ErrUnknownIndex {
		t.Fatalf("replayed reply: %v", err)
	}
}

// HandleHandshake, on the receive goroutine, only queues: no MAC, no DH.
// Known peers' addresses have a queue of their own. When a queue is full,
// datagrams are dropped and counted; the worker started by Run drains the
// queues, and a full queue means load, so the first initiation is answered
// with a cookie and its copies are duplicates.
func TestHandshakeQueue(t *testing.T) {
	a, b, net, clock := pair(t, nodeOpts{}, nodeOpts{})
	net.mu.Lock()
	net.held = true
	net.mu.Unlock()
	clock.Advance(a.cfg.RekeyAfter)
	a.tick()
	net.mu.Lock()
	init := net.queue[0].msg
	net.queue = nil
	net.dropAll = true
	net.mu.Unlock()
	before := b.Counters()
	for range hsQueueLen + 5 {
		b.HandleHandshake(spoofed(1), init)
	}
	for range hsPriorityLen + 3 {
		b.HandleHandshake(addrA, init) // a known peer's address
	}
	b.HandleHandshake(addrA, init[:20])
	c := b.Counters()
	if c["handshake_failed_busy"] != 8 || c["handshake_failed_malformed"] != before["handshake_failed_malformed"]+1 {
		t.Fatalf("counters %v: want 8 busy and 1 malformed", c)
	}
	if c["handshake_completed"] != before["handshake_completed"] || c["handshake_failed_duplicate"] != 0 {
		t.Fatal("HandleHandshake did handshake work on the caller's goroutine")
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); b.Run(ctx) }()
	defer func() { cancel(); wg.Wait() }()
	waitFor(t, 10*time.Second, "the queues drained", func() bool {
		c := b.Counters()
		return c["handshake_failed_duplicate"] == hsQueueLen+hsPriorityLen-1 && c["handshake_failed_cookie_required"] == 1
	})
	// Now remembered: a further copy is dropped before it is queued.
	b.HandleHandshake(spoofed(2), init)
	if got := b.Counters()["handshake_failed_duplicate"]; got != hsQueueLen+hsPriorityLen {
		t.Fatalf("duplicate = %d after one more copy", got)
	}
}

// Known peers keep their rate-limit buckets when the table of other sources
// is full.
func TestRateLimiterKnownPeersKeepBuckets(t *testing.T) {
	var r rateLimiter
	now := time.Unix(1000, 0)
	peer := netip.MustParseAddr("198.18.0.1")
	r.setKnown([]netip.Addr{peer})
	for i := range maxRateSources {
		if !r.allow(spoofed(i).Addr(), now) {
			t.Fatalf("source %d refused before the table is full", i)
		}
	}
	if r.allow(netip.MustParseAddr("198.18.9.9"), now) {
		t.Fatal("a new source admitted beyond the table")
	}
	for i := range handshakeBurst {
		if !r.allow(peer, now) {
			t.Fatalf("known peer refused after %d handshakes", i)
		}
	}
	if r.allow(peer, now) {
		t.Fatal("known peer not limited beyond its burst")
	}
	r.prune(now.Add(time.Hour))
	if len(r.known) != 1 || len(r.buckets) != 0 {
		t.Fatalf("prune left %d known, %d other buckets", len(r.known), len(r.buckets))
	}
}

func TestDedupBounded(t *testing.T) {
	var d dedup
	key := func(i int) (k [macLen]byte) { k[0], k[1], k[2] = byte(i), byte(i>>8), byte(i>>16); return k }
	if d.seen(key(0)) || !d.seen(key(0)) {
		t.Fatal("first sighting reported as seen, or second not")
	}
	for i := 1; i < 3*dedupSize; i++ {
		d.seen(key(i))
	}
	if len(d.set) != dedupSize {
		t.Fatalf("%d keys kept, want %d", len(d.set), dedupSize)
	}
	if d.seen(key(0)) {
		t.Fatal("the oldest key is still remembered")
	}
	if !d.seen(key(3*dedupSize - 1)) {
		t.Fatal("the newest key is forgotten")
	}
}

// The receive goroutine's share of handshake work allocates nothing: a
// flood costs no garbage.
func TestHandleHandshakeDoesNotAllocate(t *testing.T) {
	_, b, net, _ := pair(t, nodeOpts{}, nodeOpts{})
	init := capturedInitiation(t, net).msg // remembered: a duplicate
	fresh := append([]byte(nil), init...)
	fresh[mac1Off(len(fresh))] ^= 1 // another key: queued (full soon, then busy)
	src := spoofed(3)
	if n := testing.AllocsPerRun(200, func() {
		b.HandleHandshake(src, init)
		b.HandleHandshake(src, fresh)
	}); n != 0 {
		t.Fatalf("HandleHandshake allocates %v per call pair", n)
	}
	if c := b.Counters(); c["handshake_failed_duplicate"] < 200 || len(b.hsQueue) == 0 {
		t.Fatalf("duplicates %d, queued %d: the test did not exercise both paths", c["handshake_failed_duplicate"], len(b.hsQueue))
	}
}
