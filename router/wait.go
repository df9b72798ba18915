package router

import (
	"slices"
	"sync"
	"time"

	"github.com/weftnet/weft/router/gso"
)

// Limits of what waits for a session, per peer. A handshake takes one round
// trip; what does not fit is dropped (no-session) and TCP resends it.
const (
	waitMaxBytes = 256 << 10
	waitMaxAge   = 10 * time.Second // two handshake attempts; older is stale
	// waitRecheck: a packet queued this soon after its peer's queue was
	// flushed may have missed the flush (see waitQueue.upAt).
	waitRecheck = time.Second
)

// waitQueue holds packets for peers whose encrypted session is still being
// negotiated, so that the first packets of a conversation (a TCP SYN, the
// first ping) are sent once the handshake completes rather than lost. It is
// off the hot path: packets are copied in, which allocates.
type waitQueue struct {
	mu    sync.Mutex
	peers map[string]*waiting
	// upAt is when each peer's queue was last taken on a session-up
	// signal. The tx path may have seen Seal fail just before the session
	// came up and queue its packet just after the flush: add notices (the
	// flush was recent) and lists the peer in again, for the flush
	// goroutine to look once more.
	upAt  map[string]time.Time
	again []string
}

type waiting struct {
	since time.Time
	bytes int
	pkts  []queued
}

type queued struct {
	data []byte
	o    gso.Offload
}

// add queues a copy of pkt for peer. It reports false when the peer's queue
// is full, how many stale packets it dropped to make room, and recheck when
// the peer's session came up a moment ago, so that the packet may have
// missed the flush (the peer is then listed for takeAgain).
func (q *waitQueue) add(peer string, pkt []byte, o gso.Offload, now time.Time) (ok bool, stale int, recheck bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.peers == nil {
		q.peers = make(map[string]*waiting)
	}
	w := q.peers[peer]
	if w == nil || now.Sub(w.since) > waitMaxAge {
		if w != nil {
			stale = len(w.pkts)
		}
		w = &waiting{since: now}
		q.peers[peer] = w
	}
	if w.bytes+len(pkt) > waitMaxBytes {
		return false, stale, false
	}
	w.pkts = append(w.pkts, queued{data: append([]byte(nil), pkt...), o: o})
	w.bytes += len(pkt)
	if up, ok := q.upAt[peer]; ok && now.Sub(up) < waitRecheck && !slices.Contains(q.again, peer) {
		q.again = append(q.again, peer)
		recheck = true
	}
	return true, stale, recheck
}

// takeAgain appends the peers listed by add to dst and forgets them.
func (q *waitQueue) takeAgain(dst []string) []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	dst = append(dst, q.again...)
	clear(q.again)
	q.again = q.again[:0]
	return dst
}

// take removes and returns what waits for peer; stale is how many packets
// waited too long to be worth sending.
func (q *waitQueue) take(peer string, now time.Time) (pkts []queued, stale int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.upAt == nil {
		q.upAt = make(map[string]time.Time)
	}
	q.upAt[peer] = now
	w := q.peers[peer]
	if w == nil {
		return nil, 0
	}
	delete(q.peers, peer)
	if now.Sub(w.since) > waitMaxAge {
		return nil, len(w.pkts)
	}
	return w.pkts, 0
}

// sessionUp sends what waited for peer's session. Only the flush goroutine
// (and tests driving the router directly) call it. Only a closed socket or
// TUN is returned as an error.
func (r *Router) sessionUp(peer string) error {
	pkts, stale := r.waiting.take(peer, time.Now())
	if stale > 0 {
		r.dropPeerN(r.peer(peer), dropNoSession, stale)
	}
	if len(pkts) == 0 {
		return nil
	}
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	t := r.flushTx
	for _, p := range pkts {
		n := copy(t.buf[t.off:t.off+gso.MaxPacket], p.data)
		if err := t.forward(t.buf[t.off:t.off+n], p.o); err != nil {
			return err // the socket is closed: the router is stopping
		}
	}
	return nil
}
