package crypto

// dedupSize bounds the initiations remembered. An honest mesh sends a few
// per peer per rekey interval; a replay of anything older than the last
// dedupSize distinct initiations still fails the timestamp check, only one
// Diffie-Hellman later (and under load, not even that: see cookie.go).
const dedupSize = 4096

// dedup remembers the initiations seen lately, by their mac1, so that an
// exact copy (a replay, from any source address) is dropped before any
// Diffie-Hellman. mac1 covers the whole message but the MACs after it, so
// two initiations with the same mac1 are the same initiation. Not safe for
// concurrent use; Manager.dedupMu guards it. Fixed memory: a ring of keys in
// insertion order and a set over it.
type dedup struct {
	ring [dedupSize][macLen]byte
	next int
	set  map[[macLen]byte]struct{}
}

// has reports whether key was seen, without remembering it.
func (d *dedup) has(key [macLen]byte) bool {
	_, ok := d.set[key]
	return ok
}

// seen reports whether key was seen before, and remembers it if not,
// forgetting the oldest key when full.
func (d *dedup) seen(key [macLen]byte) bool {
	if d.set == nil {
		d.set = make(map[[macLen]byte]struct{}, dedupSize)
	}
	if _, ok := d.set[key]; ok {
		return true
	}
	if len(d.set) == dedupSize {
		delete(d.set, d.ring[d.next])
	}
	d.ring[d.next] = key
	d.set[key] = struct{}{}
	d.next = (d.next + 1) % dedupSize
	return false
}
