package crypto

// Anti-replay sliding window in the style of RFC 6479: a ring of 64-bit
// words holds one bit per recently seen counter. Moving the window forward
// clears whole words instead of shifting bits, so the cost per packet is
// constant however far the counter jumps.

const (
	replayWords = 64               // ring size in words; a power of two
	replayBits  = replayWords * 64 // bits in the ring
	// ReplayWindow is how far behind the newest counter a packet may arrive
	// and still be accepted. One word of the ring is kept as slack so that
	// advancing into a fresh word never clears bits still inside the window.
	ReplayWindow = replayBits - 64 // 4032
)

// replayWindow is not safe for concurrent use; keypair guards it.
type replayWindow struct {
	newest uint64 // highest counter accepted so far
	ring   [replayWords]uint64
}

// mayAccept reports, without recording anything, whether accept could take
// counter; it lets Open drop replays before spending the AEAD on them.
func (w *replayWindow) mayAccept(counter, limit uint64) bool {
	if counter >= limit {
		return false
	}
	if counter > w.newest {
		return true
	}
	if w.newest-counter > ReplayWindow {
		return false
	}
	return w.ring[(counter/64)%replayWords]&(uint64(1)<<(counter%64)) == 0
}

// accept reports whether counter is below limit, new, and not too old, and
// if so records it as seen.
func (w *replayWindow) accept(counter, limit uint64) bool {
	if counter >= limit {
		return false
	}
	word := counter / 64
	if counter > w.newest {
		// Clear the words the window moves over (at most the whole ring).
		cur := w.newest / 64
		n := word - cur
		if n > replayWords {
			n = replayWords
		}
		for i := uint64(1); i <= n; i++ {
			w.ring[(cur+i)%replayWords] = 0
		}
		w.newest = counter
	} else if w.newest-counter > ReplayWindow {
		return false
	}
	slot := &w.ring[word%replayWords]
	bit := uint64(1) << (counter % 64)
	if *slot&bit != 0 {
		return false
	}
	*slot |= bit
	return true
}
