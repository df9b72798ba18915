package router

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// dropReason is why a packet was refused; reasonNames are the stable strings
// shown by Drops and Stats.
type dropReason int

const (
	dropNoRoute     dropReason = iota // outbound: no owner for the destination
	dropOwnRange                      // outbound: destination in this host's own ranges
	dropNotIPv4                       // outbound: not an IPv4 packet
	dropTooBig                        // outbound: bigger than the MTU with DF set (ICMP sent)
	dropNoSession                     // outbound: no session yet and the wait queue is full or stale
	dropSend                          // outbound: the socket refused the batch
	dropTunRead                       // outbound: the TUN returned a bad packet or offload metadata
	dropUnknownPeer                   // inbound: sender endpoint is no known peer
	dropBadHeader                     // inbound: wire header malformed, wrong version or type
	dropPlaintext                     // inbound: plaintext data while encryption is on
	dropDecrypt                       // inbound: Crypto.Open refused
	dropBadPacket                     // inbound: inner packet is no sane IPv4 packet
	dropNotLocal                      // inbound: destination outside this host's ranges
	dropSpoofed                       // inbound: source in a range the sender does not own
	dropTunWrite                      // inbound: the TUN refused a write
	dropTruncated                     // inbound: datagram did not fit the receive buffer
	numDropReasons
)

var reasonNames = [numDropReasons]string{
	dropNoRoute:     "no-route",
	dropOwnRange:    "own-range",
	dropNotIPv4:     "not-ipv4",
	dropTooBig:      "too-big",
	dropNoSession:   "no-session",
	dropSend:        "send",
	dropTunRead:     "tun-read",
	dropUnknownPeer: "unknown-peer",
	dropBadHeader:   "bad-header",
	dropPlaintext:   "plaintext",
	dropDecrypt:     "decrypt",
	dropBadPacket:   "bad-packet",
	dropNotLocal:    "not-local",
	dropSpoofed:     "spoofed-source",
	dropTunWrite:    "tun-write",
	dropTruncated:   "truncated",
}

func (d dropReason) String() string { return reasonNames[d] }

// PeerStats is a snapshot of one peer's counters. Bytes count inner IP
// packets, not the framing.
type PeerStats struct {
	Peer      string
	TxPackets uint64
	TxBytes   uint64
	RxPackets uint64
	RxBytes   uint64
	LastHeard time.Time // zero if nothing was received yet
	Drops     map[string]uint64
}

// peerCounters are updated with atomics from the hot path.
type peerCounters struct {
	txPackets, txBytes atomic.Uint64
	rxPackets, rxBytes atomic.Uint64
	lastHeard          atomic.Int64 // unix nanoseconds
	drops              [numDropReasons]atomic.Uint64
}

// counters holds the global drop counters and the per-peer table. The table
// is copy-on-write: the hot path reads it without a lock, a new peer takes
// the mutex and publishes a new map.
type counters struct {
	drops   [numDropReasons]atomic.Uint64
	peers   atomic.Pointer[map[string]*peerCounters]
	peersMu sync.Mutex
}

func (c *counters) initCounters() {
	m := map[string]*peerCounters{}
	c.peers.Store(&m)
}

func (c *counters) drop(reason dropReason) { c.drops[reason].Add(1) }

// dropPeer counts a drop globally and against a known peer.
func (c *counters) dropPeer(p *peerCounters, reason dropReason) { c.dropPeerN(p, reason, 1) }

// dropPeerN counts n drops at once.
func (c *counters) dropPeerN(p *peerCounters, reason dropReason, n int) {
	c.drops[reason].Add(uint64(n))
	p.drops[reason].Add(uint64(n))
}

// peer returns the counters of name, creating them on first use.
func (c *counters) peer(name string) *peerCounters {
	if p, ok := (*c.peers.Load())[name]; ok {
		return p
	}
	c.peersMu.Lock()
	defer c.peersMu.Unlock()
	old := *c.peers.Load()
	if p, ok := old[name]; ok {
		return p
	}
	next := make(map[string]*peerCounters, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	p := &peerCounters{}
	next[strings.Clone(name)] = p
	c.peers.Store(&next)
	return p
}

// DropReasons lists every reason a packet can be dropped for, so that metrics
// can export each one from zero rather than from its first drop.
func DropReasons() []string { return append([]string(nil), reasonNames[:]...) }

// Drops returns the global drop counters by reason (only non-zero ones).
func (c *counters) Drops() map[string]uint64 {
	out := map[string]uint64{}
	for i := range c.drops {
		if v := c.drops[i].Load(); v > 0 {
			out[reasonNames[i]] = v
		}
	}
	return out
}

// Stats returns a snapshot per peer that traffic was seen for, by name.
func (c *counters) Stats() []PeerStats {
	m := *c.peers.Load()
	out := make([]PeerStats, 0, len(m))
	for name, p := range m {
		s := PeerStats{
			Peer:      name,
			TxPackets: p.txPackets.Load(),
			TxBytes:   p.txBytes.Load(),
			RxPackets: p.rxPackets.Load(),
			RxBytes:   p.rxBytes.Load(),
			Drops:     map[string]uint64{},
		}
		if ns := p.lastHeard.Load(); ns != 0 {
			s.LastHeard = time.Unix(0, ns)
		}
		for i := range p.drops {
			if v := p.drops[i].Load(); v > 0 {
				s.Drops[reasonNames[i]] = v
			}
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b PeerStats) int { return strings.Compare(a.Peer, b.Peer) })
	return out
}
