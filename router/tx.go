package router

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/weftnet/weft/router/gso"
	"github.com/weftnet/weft/router/udp"
	"github.com/weftnet/weft/router/wire"
)

// maxErrStreak is how many I/O errors in a row a loop survives before it
// gives up: one bad packet is no reason to stop, an error every call is.
const maxErrStreak = 1000

// txChunk is how many datagrams one socket write carries at most: a
// super-packet with more segments (a tiny MSS) goes out in several.
const txChunk = 2 * udp.MaxSegments

// txPath is the TUN -> UDP direction. One Read brings one packet or one TCP
// super-packet of up to 64 KiB. A super-packet is cut into segments without
// copying its payload: each datagram is a small head (wire header and the
// segment's IPv4/TCP headers, written into heads) followed by a window into
// the read buffer, sent as two iovecs. Encrypted segments are sealed in
// place, so they are copied once into their own buffers (sealBufs). Every
// buffer belongs to the path's goroutine and is reused: forwarding
// allocates nothing.
type txPath struct {
	r   *Router
	off int // headroom in front of a read packet: the wire header goes there
	buf []byte

	headBufs [][]byte // plaintext segment heads, wire.HeaderLen+gso.MaxHdrLen each
	sealBufs [][]byte // encrypted segments, sealed in place
	heads    [][]byte
	parts    [][]byte
	msg      [1]udp.Message

	icmpBuf []byte
	icmpVec [][]byte
	acc     peerAcc

	// queueNoSession: a packet for a peer without a session yet waits in
	// Router.waiting instead of being dropped (the main path only; the
	// path that flushes that queue drops).
	queueNoSession bool
}

func newTxPath(r *Router) *txPath {
	off := wire.EncryptedHeaderLen
	tail := max(r.tailroom, 64)
	t := &txPath{
		r:       r,
		off:     off,
		buf:     make([]byte, off+gso.MaxPacket+tail),
		heads:   make([][]byte, txChunk),
		parts:   make([][]byte, txChunk),
		icmpBuf: make([]byte, icmpTooBigMax),
		icmpVec: make([][]byte, 1),
	}
	t.headBufs = carve(txChunk, wire.HeaderLen+gso.MaxHdrLen)
	if r.crypto != nil {
		t.sealBufs = carve(txChunk, off+r.mtu+tail)
	}
	return t
}

// carve returns n buffers of size bytes cut from one backing array.
func carve(n, size int) [][]byte {
	backing := make([]byte, n*size)
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = backing[i*size : (i+1)*size : (i+1)*size]
	}
	return bufs
}

func (t *txPath) run() error {
	streak := 0
	for {
		// len covers the largest packet; cap leaves the AEAD tailroom.
		pkt, o, err := t.r.tun.Read(t.buf[:t.off+gso.MaxPacket], t.off)
		if err != nil {
			if isClosed(err) {
				return fmt.Errorf("read tun: %w", err)
			}
			t.r.drop(dropTunRead)
			if streak++; streak > maxErrStreak {
				return fmt.Errorf("read tun: %d errors in a row, last: %w", streak, err)
			}
			continue
		}
		streak = 0
		if err := t.forward(pkt, o); err != nil {
			return err
		}
	}
}

// forward frames and sends one packet or super-packet read from the TUN.
// Only a closed socket or TUN is returned as an error; everything else is
// counted.
func (t *txPath) forward(pkt []byte, o gso.Offload) error {
	r := t.r
	pkt, ok := ipv4Packet(pkt)
	if !ok {
		r.drop(dropNotIPv4)
		return nil
	}
	var seg gso.Segmenter
	size := len(pkt) // what one datagram will carry
	if o.GSO != gso.None {
		var err error
		if seg, err = gso.NewSegmenter(pkt, o); err != nil {
			r.drop(dropTunRead)
			return nil
		}
		size = seg.HdrLen() + seg.SegSize()
	}
	if size > r.mtu && (needsTooBig(pkt) || o.GSO != gso.None) {
		r.drop(dropTooBig)
		if needsTooBig(pkt) {
			return t.sendTooBig(pkt)
		}
		return nil
	}
	peer, ep, local := r.routes.Lookup(netip.AddrFrom4([4]byte(pkt[16:20])))
	if local {
		r.drop(dropOwnRange)
		return nil
	}
	if peer == "" || !ep.IsValid() {
		r.drop(dropNoRoute)
		return nil
	}
	pc := t.acc.switchTo(r, peer)
	defer t.acc.flushTx()
	if o.GSO != gso.None {
		return t.sendSegments(peer, pc, ep, &seg)
	}

	var flags uint8
	if o.NeedsCsum {
		if gso.IsStandardPartial(pkt, o) {
			flags = wire.FlagCsumPartial // the receiving kernel completes it
		} else if gso.Complete(pkt, o) != nil {
			r.drop(dropTunRead)
			return nil
		} else {
			o = gso.Offload{} // done: a queued copy must not be completed twice
		}
	}
	var dgram []byte
	if r.crypto == nil {
		start := t.off - wire.HeaderLen
		wire.PutData(t.buf[start:], r.localID, flags)
		dgram = t.buf[start : t.off+len(pkt)]
	} else {
		start := t.off - wire.EncryptedHeaderLen
		t.buf[start+2] = flags
		sealed, err := r.crypto.Seal(peer, t.buf[start:t.off+len(pkt)], len(pkt))
		if err != nil || sealed < wire.EncryptedHeaderLen || start+sealed > len(t.buf) {
			t.noSession(peer, pc, pkt, o)
			return nil
		}
		dgram = t.buf[start : start+sealed]
	}
	t.acc.count(len(pkt))
	t.parts[0] = dgram
	t.msg[0] = udp.Message{Addr: ep, Parts: t.parts[:1]}
	return t.send()
}

// sendSegments cuts a super-packet and sends its segments, txChunk at a time.
func (t *txPath) sendSegments(peer string, pc *peerCounters, ep netip.AddrPort, seg *gso.Segmenter) error {
	r := t.r
	hl := seg.HdrLen()
	k := 0
	for i := range seg.Count() {
		if r.crypto == nil {
			h := t.headBufs[k][:wire.HeaderLen+hl]
			wire.PutData(h, r.localID, wire.FlagCsumPartial)
			payload := seg.Segment(i, h[wire.HeaderLen:])
			t.heads[k], t.parts[k] = h, payload
			t.acc.count(hl + len(payload))
		} else {
			b := t.sealBufs[k]
			const e = wire.EncryptedHeaderLen
			payload := seg.Segment(i, b[e:e+hl])
			plain := hl + copy(b[e+hl:], payload)
			b[2] = wire.FlagCsumPartial
			sealed, err := r.crypto.Seal(peer, b[:e+plain], plain)
			if err != nil || sealed < e || sealed > len(b) {
				if i == 0 { // no session at all: the whole super-packet waits
					t.noSession(peer, pc, seg.Packet(), seg.Original())
					return nil
				}
				r.dropPeer(pc, dropNoSession)
				continue
			}
			t.parts[k] = b[:sealed]
			t.acc.count(plain)
		}
		if k++; k == txChunk {
			if err := t.sendParts(ep, k); err != nil {
				return err
			}
			k = 0
		}
	}
	if k > 0 {
		return t.sendParts(ep, k)
	}
	return nil
}

// noSession queues pkt until peer's session is up or, when that is not
// possible, drops it.
func (t *txPath) noSession(peer string, pc *peerCounters, pkt []byte, o gso.Offload) {
	if t.queueNoSession {
		ok, stale, recheck := t.r.waiting.add(peer, pkt, o, time.Now())
		t.r.dropPeerN(pc, dropNoSession, stale)
		if recheck {
			select {
			case t.r.recheck <- struct{}{}:
			default: // already asked; the flush goroutine takes every peer
			}
		}
		if ok {
			return
		}
	}
	t.r.dropPeer(pc, dropNoSession)
}

// sendParts sends the first k prepared datagrams to ep.
func (t *txPath) sendParts(ep netip.AddrPort, k int) error {
	t.msg[0] = udp.Message{Addr: ep, Parts: t.parts[:k]}
	if t.r.crypto == nil {
		t.msg[0].Heads = t.heads[:k]
	}
	return t.send()
}

func (t *txPath) send() error {
	if err := t.r.conn.WriteBatch(t.msg[:]); err != nil {
		if isClosed(err) {
			return fmt.Errorf("send: %w", err)
		}
		t.r.drop(dropSend)
	}
	return nil
}

// sendTooBig answers pkt with ICMP "fragmentation needed" through the TUN,
// so the sender's kernel lowers its path MTU.
func (t *txPath) sendTooBig(pkt []byte) error {
	n := buildTooBig(t.icmpBuf, pkt, t.r.mtu)
	t.icmpVec[0] = t.icmpBuf[:n]
	if err := t.r.tun.Write(t.icmpVec, gso.Offload{}); err != nil {
		if isClosed(err) {
			return fmt.Errorf("write tun: %w", err)
		}
		t.r.drop(dropTunWrite)
	}
	return nil
}

// peerAcc sums a run of packets of one peer so the shared atomic counters
// are touched once per run, not once per packet.
type peerAcc struct {
	name        string
	p           *peerCounters
	pkts, bytes uint64
}

// switchTo makes name the peer being counted and returns its counters.
func (a *peerAcc) switchTo(c *Router, name string) *peerCounters {
	if a.p != nil && a.name == name {
		return a.p
	}
	a.flushTx()
	a.name, a.p = name, c.peer(name)
	return a.p
}

func (a *peerAcc) count(bytes int) { a.pkts++; a.bytes += uint64(bytes) }

func (a *peerAcc) flushTx() {
	if a.pkts > 0 {
		a.p.txPackets.Add(a.pkts)
		a.p.txBytes.Add(a.bytes)
		a.pkts, a.bytes = 0, 0
	}
}

func (a *peerAcc) flushRx(now int64) {
	if a.pkts > 0 {
		a.p.rxPackets.Add(a.pkts)
		a.p.rxBytes.Add(a.bytes)
		a.p.lastHeard.Store(now)
		a.pkts, a.bytes = 0, 0
	}
}
