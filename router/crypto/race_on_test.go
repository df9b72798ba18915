//go:build race

package crypto

// raceEnabled: the race detector slows this package's handshakes 5-20x (and
// more on a loaded machine), so tests whose timing constants assume that a
// handshake completes well within HandshakeRetry scale them up.
const raceEnabled = true
