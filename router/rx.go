package router

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/weftnet/weft/router/gso"
	"github.com/weftnet/weft/router/udp"
	"github.com/weftnet/weft/router/wire"
)

const (
	rxBatch   = 64  // datagrams (or GRO trains) per socket read, at most
	rxPending = 256 // inner packets queued for the TUN before a write
	// rxInitial is how many receive buffers there are at first. The
	// buffers are 64 KiB each (a GRO train), so all rxBatch would be 4 MiB:
	// never touched by an idle agent, but counted as live heap, so the GC
	// lets that much more garbage pile up (resident) before it runs. They
	// double (up to rxBatch) each time a read fills them all, which under
	// load happens in the first few reads.
	rxInitial = 4
)

// rxPath is the UDP -> TUN direction. Datagrams are received into large
// buffers (a GRO train holds up to 64 KiB) and checked and opened in place;
// their inner packets are queued by reference in a gso.Coalescer, which
// joins consecutive segments of a TCP flow into one super-packet per TUN
// write. Nothing is copied in userspace. The queue is flushed before the
// receive buffers are reused.
type rxPath struct {
	r       *Router
	msgs    []udp.Message // rxBatch headers; the first ready ones have buffers
	ready   int
	queue   *gso.Coalescer
	one     [][]byte // a single packet for a device without offloads
	acc     peerAcc
	now     int64
	writeFn func(vec [][]byte, o gso.Offload) error
}

func newRxPath(r *Router) *rxPath {
	x := &rxPath{
		r:     r,
		msgs:  make([]udp.Message, rxBatch),
		queue: gso.NewCoalescer(rxPending),
		one:   make([][]byte, 1),
	}
	x.writeFn = x.write
	x.grow(rxInitial)
	return x
}

// grow gives buffers to the message headers up to n.
func (x *rxPath) grow(n int) {
	n = min(n, len(x.msgs))
	if n <= x.ready {
		return
	}
	backing := make([]byte, (n-x.ready)*udp.RecvBufSize)
	for i := x.ready; i < n; i++ {
		j := i - x.ready
		x.msgs[i].Buf = backing[j*udp.RecvBufSize : (j+1)*udp.RecvBufSize : (j+1)*udp.RecvBufSize]
	}
	x.ready = n
}

func (x *rxPath) run() error {
	streak := 0
	for {
		n, err := x.r.conn.ReadBatch(x.msgs[:x.ready])
		if err != nil {
			if isClosed(err) {
				return fmt.Errorf("receive: %w", err)
			}
			if streak++; streak > maxErrStreak {
				return fmt.Errorf("receive: %d errors in a row, last: %w", streak, err)
			}
			continue
		}
		streak = 0
		if err := x.receive(x.msgs[:n], time.Now().UnixNano()); err != nil {
			return err
		}
		if n == x.ready {
			x.grow(2 * x.ready) // a full read: more was waiting
		}
	}
}

// receive handles one batch from the socket and writes what passes to the
// TUN. Only a closed TUN is returned as an error.
func (x *rxPath) receive(msgs []udp.Message, now int64) error {
	x.now = now
	for i := range msgs {
		m := &msgs[i]
		if m.N <= 0 || m.N > len(m.Buf) {
			x.r.drop(dropTruncated)
			continue
		}
		name, known := x.r.routes.PeerAt(m.Addr)
		var pc *peerCounters
		if known {
			pc = x.acc.switchToRx(x, name)
		}
		seg := m.SegSize
		if seg <= 0 || seg > m.N {
			seg = m.N
		}
		for off := 0; off < m.N; off += seg {
			end := min(off+seg, m.N)
			d := m.Buf[off:end:end] // capped: opening in place must not touch the next datagram
			if err := x.datagram(m.Addr, name, pc, d); err != nil {
				return err
			}
		}
	}
	x.acc.flushRx(x.now)
	return x.flush()
}

// datagram checks one datagram from 'from' (sent by peer 'name' when pc is
// not nil) and queues its inner packet for the TUN.
func (x *rxPath) datagram(from netip.AddrPort, name string, pc *peerCounters, d []byte) error {
	r := x.r
	h, err := wire.Decode(d)
	if err != nil {
		x.dropFrom(pc, dropBadHeader)
		return nil
	}
	var inner []byte
	switch h.Type {
	case wire.TypeHandshake:
		// The handshake authenticates the peer by its key, so it is not
		// tied to a known endpoint (a peer may have moved).
		if r.crypto == nil {
			x.dropFrom(pc, dropBadHeader)
			return nil
		}
		r.crypto.HandleHandshake(from, d)
		return nil
	case wire.TypeData:
		if r.crypto != nil {
			x.dropFrom(pc, dropPlaintext)
			return nil
		}
		if pc == nil {
			r.drop(dropUnknownPeer)
			return nil
		}
		inner = d[wire.HeaderLen:]
	case wire.TypeEncrypted:
		if r.crypto == nil {
			x.dropFrom(pc, dropBadHeader)
			return nil
		}
		if pc == nil {
			r.drop(dropUnknownPeer)
			return nil
		}
		plain, sender, err := r.crypto.Open(from, h, d)
		if err != nil {
			r.dropPeer(pc, dropDecrypt)
			return nil
		}
		if sender != name { // the session says who it is, not the address
			name = sender
			pc = x.acc.switchToRx(x, sender)
		}
		if len(plain) == 0 { // a keepalive: proof of life, nothing to deliver
			pc.lastHeard.Store(x.now)
			return nil
		}
		inner = plain
	default:
		x.dropFrom(pc, dropBadHeader)
		return nil
	}
	pkt, ok := ipv4Packet(inner)
	if !ok {
		r.dropPeer(pc, dropBadPacket)
		return nil
	}
	if _, _, local := r.routes.Lookup(netip.AddrFrom4([4]byte(pkt[16:20]))); !local {
		r.dropPeer(pc, dropNotLocal)
		return nil
	}
	// A peer speaks for its own ranges only: an overlay source owned by
	// another host (this one included) is an impersonation. Sources
	// outside the ring (a client outside the cluster, forwarded to a
	// pod) are let through.
	if owner, _, _ := r.routes.Lookup(netip.AddrFrom4([4]byte(pkt[12:16]))); owner != "" && owner != name {
		r.dropPeer(pc, dropSpoofed)
		return nil
	}
	partial := h.Flags&wire.FlagCsumPartial != 0
	var o gso.Offload
	if partial {
		if o, ok = gso.Partial(pkt); !ok {
			r.dropPeer(pc, dropBadPacket)
			return nil
		}
	}
	x.acc.count(len(pkt))
	if !r.tun.Offloads() {
		if partial {
			_ = gso.Complete(pkt, o) // Partial checked the bounds
		}
		x.one[0] = pkt
		return x.write(x.one, gso.Offload{})
	}
	x.queue.Add(pkt, partial)
	if x.queue.Full() {
		return x.flush()
	}
	return nil
}

func (x *rxPath) dropFrom(pc *peerCounters, reason dropReason) {
	if pc != nil {
		x.r.dropPeer(pc, reason)
		return
	}
	x.r.drop(reason)
}

// flush writes the queued packets to the TUN, joined where possible.
func (x *rxPath) flush() error {
	if x.queue.Len() == 0 {
		return nil
	}
	return x.queue.Flush(x.writeFn)
}

// write writes one packet to the TUN. Only a closed TUN is an error.
func (x *rxPath) write(vec [][]byte, o gso.Offload) error {
	if err := x.r.tun.Write(vec, o); err != nil {
		if isClosed(err) {
			return fmt.Errorf("write tun: %w", err)
		}
		x.r.drop(dropTunWrite)
	}
	return nil
}

// switchToRx is switchTo for the receive side, which flushes rx counters.
func (a *peerAcc) switchToRx(x *rxPath, name string) *peerCounters {
	if a.p != nil && a.name == name {
		return a.p
	}
	a.flushRx(x.now)
	a.name, a.p = name, x.r.peer(name)
	return a.p
}
