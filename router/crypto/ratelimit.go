package crypto

import (
	"net/netip"
	"time"
)

// Handshake initiations cost the responder two Diffie-Hellman operations, so
// each source address gets a token bucket. An honest peer sends one
// initiation per rekey interval plus a few retries; the burst covers a
// restart that rekeys with every peer at once on one address (tests run many
// agents behind one address only on loopback).
const (
	handshakesPerSecond = 20
	handshakeBurst      = 40
	maxRateSources      = 8192 // bound on the table an address flood can grow
)

type tokenBucket struct {
	tokens float64
	last   time.Time
}

// rateLimiter is not safe for concurrent use; Manager.mu guards it.
//
// Known peers' underlay addresses have buckets of their own (known), kept
// apart from the table of other sources: a flood from many addresses can
// fill that table, but never takes a known peer's bucket, so the peers
// keep their handshakes.
type rateLimiter struct {
	buckets map[netip.Addr]*tokenBucket
	known   map[netip.Addr]*tokenBucket
}

// setKnown makes addrs the known peers' addresses: they keep their buckets
// (and their tokens) across calls; addresses no longer known lose theirs.
func (r *rateLimiter) setKnown(addrs []netip.Addr) {
	known := make(map[netip.Addr]*tokenBucket, len(addrs))
	for _, a := range addrs {
		a = a.Unmap()
		if b := r.known[a]; b != nil {
			known[a] = b
		} else if b := r.buckets[a]; b != nil {
			known[a] = b // its spent tokens stay spent
		} else {
			known[a] = &tokenBucket{tokens: handshakeBurst}
		}
		delete(r.buckets, a)
	}
	r.known = known
}

func (r *rateLimiter) allow(addr netip.Addr, now time.Time) bool {
	if r.buckets == nil {
		r.buckets = make(map[netip.Addr]*tokenBucket)
	}
	addr = addr.Unmap()
	b := r.known[addr]
	if b == nil {
		b = r.buckets[addr]
	}
	if b == nil {
		if len(r.buckets) >= maxRateSources {
			r.prune(now)
			if len(r.buckets) >= maxRateSources {
				return false
			}
		}
		b = &tokenBucket{tokens: handshakeBurst, last: now}
		r.buckets[addr] = b
	}
	if b.last.IsZero() {
		b.last = now
	}
	if elapsed := now.Sub(b.last); elapsed > 0 {
		b.tokens += elapsed.Seconds() * handshakesPerSecond
		if b.tokens > handshakeBurst {
			b.tokens = handshakeBurst
		}
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// prune forgets sources whose bucket would be full again: they have been
// quiet long enough that forgetting them changes nothing.
func (r *rateLimiter) prune(now time.Time) {
	full := time.Duration(float64(time.Second) * handshakeBurst / handshakesPerSecond)
	for a, b := range r.buckets {
		if now.Sub(b.last) >= full {
			delete(r.buckets, a)
		}
	}
}
