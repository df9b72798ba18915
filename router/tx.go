package router

import (
	"fmt"
	"net/netip"

	"github.com/weftnet/weft/router/tun"
	"github.com/weftnet/weft/router/udp"
	"github.com/weftnet/weft/router/wire"
)

// maxErrStreak is how many I/O errors in a row a loop survives before it
// gives up: one bad packet is no reason to stop, an error every call is.
const maxErrStreak = 1000

// txPath is the TUN -> UDP direction. Its buffers belong to its goroutine
// and are reused for every batch, so forwarding allocates nothing.
type txPath struct {
	r     *Router
	off   int // where packets are read: room for the virtio header and the wire header
	bufs  [][]byte
	sizes []int
	msgs  []udp.Message
	parts [][]byte // datagrams of msgs, in order; msgs[i].Parts are windows into it

	icmpBuf  []byte
	icmpBufs [][]byte
	acc      peerAcc
}

func newTxPath(r *Router) *txPath {
	batch := max(r.tun.BatchSize(), 1)
	off := max(tun.Headroom, wire.EncryptedHeaderLen)
	pktMax := max(r.mtu, r.tun.MTU())
	t := &txPath{
		r:       r,
		off:     off,
		bufs:    make([][]byte, batch),
		sizes:   make([]int, batch),
		msgs:    make([]udp.Message, batch),
		parts:   make([][]byte, batch),
		icmpBuf: make([]byte, off+icmpTooBigMax),
	}
	// One backing array keeps the buffers together; each gets tailroom for
	// the AEAD tag.
	size := off + pktMax + max(r.tailroom, 64)
	backing := make([]byte, batch*size)
	for i := range t.bufs {
		t.bufs[i] = backing[i*size : (i+1)*size : (i+1)*size]
	}
	t.icmpBufs = make([][]byte, 1)
	return t
}

func (t *txPath) run() error {
	streak := 0
	for {
		n, err := t.r.tun.Read(t.bufs, t.sizes, t.off)
		if err != nil {
			if isClosed(err) {
				return fmt.Errorf("read tun: %w", err)
			}
			t.r.drop(dropTunRead)
			if streak++; streak > maxErrStreak {
				return fmt.Errorf("read tun: %d errors in a row, last: %w", streak, err)
			}
			if n == 0 {
				continue
			}
		} else {
			streak = 0
		}
		if err := t.forward(n); err != nil {
			return err
		}
	}
}

// forward frames and sends the n packets just read into t.bufs. Only a
// closed socket or TUN is returned as an error; everything else is counted.
func (t *txPath) forward(n int) error {
	r := t.r
	m, p := 0, 0
	for i := range n {
		buf := t.bufs[i]
		pkt, ok := ipv4Packet(buf[t.off : t.off+t.sizes[i]])
		if !ok {
			r.drop(dropNotIPv4)
			continue
		}
		if len(pkt) > r.mtu && needsTooBig(pkt) {
			r.drop(dropTooBig)
			if err := t.sendTooBig(pkt); err != nil {
				return err
			}
			continue
		}
		dst := netip.AddrFrom4([4]byte(pkt[16:20]))
		if r.routes.IsLocal(dst) {
			r.drop(dropOwnRange)
			continue
		}
		peer, ep, ok := r.routes.Lookup(dst)
		if !ok {
			r.drop(dropNoRoute)
			continue
		}
		pc := t.acc.switchTo(r, peer)
		var dgram []byte
		if r.crypto == nil {
			start := t.off - wire.HeaderLen
			wire.PutData(buf[start:], r.localID)
			dgram = buf[start : t.off+len(pkt)]
		} else {
			start := t.off - wire.EncryptedHeaderLen
			sealed, err := r.crypto.Seal(peer, buf[start:t.off+len(pkt)], len(pkt))
			if err != nil || sealed < wire.EncryptedHeaderLen || start+sealed > len(buf) {
				r.dropPeer(pc, dropNoSession)
				continue
			}
			dgram = buf[start : start+sealed]
		}
		t.acc.count(len(pkt))
		t.parts[p] = dgram
		if m > 0 && t.msgs[m-1].Addr == ep {
			prev := &t.msgs[m-1]
			prev.Parts = prev.Parts[:len(prev.Parts)+1]
		} else {
			t.msgs[m] = udp.Message{Addr: ep, Parts: t.parts[p : p+1]}
			m++
		}
		p++
	}
	t.acc.flushTx()
	if m == 0 {
		return nil
	}
	if err := r.conn.WriteBatch(t.msgs[:m]); err != nil {
		if isClosed(err) {
			return fmt.Errorf("send: %w", err)
		}
		r.drop(dropSend)
	}
	return nil
}

// sendTooBig answers pkt with ICMP "fragmentation needed" through the TUN,
// so the sender's kernel lowers its path MTU.
func (t *txPath) sendTooBig(pkt []byte) error {
	n := buildTooBig(t.icmpBuf[t.off:], pkt, t.r.mtu)
	t.icmpBufs[0] = t.icmpBuf[:t.off+n]
	if _, err := t.r.tun.Write(t.icmpBufs, t.off); err != nil {
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
