package router

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/weftnet/weft/router/tun"
	"github.com/weftnet/weft/router/udp"
	"github.com/weftnet/weft/router/wire"
)

const (
	rxBatch    = 64  // datagrams (or GRO trains) per socket read
	tunWBatch  = 128 // packets per TUN write
	tunWBufCap = 65535
)

// rxPath is the UDP -> TUN direction. Datagrams are received into large
// buffers (a GRO train holds up to 64 KiB), checked, opened and copied once
// into TUN write buffers: each packet needs its own headroom for the virtio
// header, and the device coalesces packets into the spare capacity behind
// the first of a flow.
type rxPath struct {
	r     *Router
	msgs  []udp.Message
	off   int
	wbufs [][]byte
	wpkts [][]byte
	k     int // packets queued in wpkts
	acc   peerAcc
	now   int64
}

func newRxPath(r *Router) *rxPath {
	x := &rxPath{
		r:     r,
		msgs:  make([]udp.Message, rxBatch),
		off:   tun.Headroom,
		wbufs: make([][]byte, tunWBatch),
		wpkts: make([][]byte, tunWBatch),
	}
	rbacking := make([]byte, rxBatch*udp.RecvBufSize)
	for i := range x.msgs {
		x.msgs[i].Buf = rbacking[i*udp.RecvBufSize : (i+1)*udp.RecvBufSize : (i+1)*udp.RecvBufSize]
	}
	// The device checks spare capacity with the offset counted twice.
	size := tunWBufCap + 2*x.off
	wbacking := make([]byte, tunWBatch*size)
	for i := range x.wbufs {
		x.wbufs[i] = wbacking[i*size : (i+1)*size : (i+1)*size]
	}
	return x
}

func (x *rxPath) run() error {
	streak := 0
	for {
		n, err := x.r.conn.ReadBatch(x.msgs)
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
		plain, sender, err := r.crypto.Open(from, d)
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
	if !r.routes.IsLocal(netip.AddrFrom4([4]byte(pkt[16:20]))) {
		r.dropPeer(pc, dropNotLocal)
		return nil
	}
	x.acc.count(len(pkt))
	w := x.wbufs[x.k]
	copy(w[x.off:], pkt)
	x.wpkts[x.k] = w[:x.off+len(pkt)]
	x.k++
	if x.k == len(x.wpkts) {
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

// flush writes the queued packets to the TUN in one batch.
func (x *rxPath) flush() error {
	if x.k == 0 {
		return nil
	}
	_, err := x.r.tun.Write(x.wpkts[:x.k], x.off)
	x.k = 0
	if err != nil {
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
