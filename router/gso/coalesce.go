package gso

import (
	"bytes"
	"encoding/binary"
)

// MaxCoalesce bounds how many segments one super-packet joins.
const MaxCoalesce = 64

// Coalescer joins runs of consecutive TCP/IPv4 segments of one flow, as
// they arrive in a receive batch, into super-packets for one TUN write
// each: the kernel then handles one large packet instead of dozens. Only
// neighbours are joined, not a flow table: segments cut from one
// super-packet travel together, so neighbours is where they are.
//
// Packets are kept by reference: they must stay untouched until Flush.
// The first packet of a run has its headers rewritten in place.
type Coalescer struct {
	pkts    [][]byte
	partial []bool
	vec     [][]byte
}

// NewCoalescer returns a Coalescer for batches of up to n packets.
func NewCoalescer(n int) *Coalescer {
	return &Coalescer{
		pkts:    make([][]byte, 0, n),
		partial: make([]bool, 0, n),
		vec:     make([][]byte, 0, MaxCoalesce),
	}
}

// Len is the number of packets queued.
func (c *Coalescer) Len() int { return len(c.pkts) }

// Full reports whether the queue reached the size given to NewCoalescer.
func (c *Coalescer) Full() bool { return len(c.pkts) == cap(c.pkts) }

// Add queues pkt, an IPv4 packet. partial says its L4 checksum holds only
// the pseudo-header sum (the sender left it to the receiving kernel).
func (c *Coalescer) Add(pkt []byte, partial bool) {
	c.pkts = append(c.pkts, pkt)
	c.partial = append(c.partial, partial)
}

// Flush hands every queued packet to write, joined where possible, and
// empties the queue. vec is only valid during the call. It returns the first
// error of write; later packets are still written.
func (c *Coalescer) Flush(write func(vec [][]byte, o Offload) error) error {
	var first error
	for i := 0; i < len(c.pkts); {
		n := c.run(i)
		var err error
		if n == 1 {
			err = c.writeOne(c.pkts[i], c.partial[i], write)
		} else {
			err = c.writeRun(c.pkts[i:i+n], write)
		}
		if err != nil && first == nil {
			first = err
		}
		i += n
	}
	clear(c.pkts) // drop references to receive buffers
	c.pkts, c.partial = c.pkts[:0], c.partial[:0]
	return first
}

func (c *Coalescer) writeOne(pkt []byte, partial bool, write func([][]byte, Offload) error) error {
	var o Offload
	if partial {
		o, _ = Partial(pkt) // the caller checked it is TCP or UDP over IPv4
	}
	c.vec = append(c.vec[:0], pkt)
	return write(c.vec, o)
}

// writeRun rewrites the headers of run[0] to cover the whole run and writes
// it with the other segments' payloads behind it.
func (c *Coalescer) writeRun(run [][]byte, write func([][]byte, Offload) error) error {
	head := run[0]
	ihl := int(head[0]&0x0f) * 4
	thl := int(head[ihl+12]>>4) * 4
	hdrLen := ihl + thl
	c.vec = append(c.vec[:0], head)
	total := len(head)
	for _, p := range run[1:] {
		c.vec = append(c.vec, p[hdrLen:])
		total += len(p) - hdrLen
	}
	last := run[len(run)-1]
	ip, tcp := head[:ihl], head[ihl:hdrLen]
	binary.BigEndian.PutUint16(ip[2:4], uint16(total))
	putIPv4Checksum(ip, ihl)
	tcp[13] |= last[ihl+13] & tcpPSH
	binary.BigEndian.PutUint16(tcp[tcpCsumOffset:], Fold(pseudoSum(ip, protoTCP, total-ihl)))
	return write(c.vec, Offload{
		GSO:        TCPv4,
		SegSize:    len(head) - hdrLen,
		HdrLen:     hdrLen,
		NeedsCsum:  true,
		CsumStart:  ihl,
		CsumOffset: tcpCsumOffset,
	})
}

// run returns how many packets from i on form one joinable run (at least 1).
func (c *Coalescer) run(i int) int {
	head := c.pkts[i]
	hdrLen, ok := tcpSegment(head)
	if !ok {
		return 1
	}
	seg := len(head) - hdrLen
	if seg == 0 || head[tcpFlagsAt(head)]&tcpPSH != 0 {
		return 1
	}
	total := len(head)
	prev := head
	n := 1
	for j := i + 1; j < len(c.pkts) && n < MaxCoalesce; j++ {
		p := c.pkts[j]
		h, ok := tcpSegment(p)
		if !ok || h != hdrLen {
			break
		}
		size := len(p) - h
		if size == 0 || size > seg || total+size > MaxPacket || !sameFlow(head, p, hdrLen) {
			break
		}
		if seqOf(p) != seqOf(prev)+uint32(len(prev)-hdrLen) {
			break
		}
		n++
		total += size
		prev = p
		if size < seg || p[tcpFlagsAt(p)]&tcpPSH != 0 {
			break // a short or pushed segment ends a run
		}
	}
	return n
}

// tcpSegment returns the header length of pkt when it is a TCP/IPv4 data
// segment that may be joined: no IP options, not a fragment, total length
// matching, only ACK (and PSH) set.
func tcpSegment(pkt []byte) (hdrLen int, ok bool) {
	ihl, proto, ok := ipv4Header(pkt)
	if !ok || proto != protoTCP || ihl != 20 || len(pkt) < ihl+20 {
		return 0, false
	}
	if int(binary.BigEndian.Uint16(pkt[2:4])) != len(pkt) {
		return 0, false
	}
	thl := int(pkt[ihl+12]>>4) * 4
	if thl < 20 || ihl+thl > len(pkt) {
		return 0, false
	}
	if pkt[ihl+13]&^tcpPSH != tcpACK {
		return 0, false
	}
	return ihl + thl, true
}

func tcpFlagsAt(pkt []byte) int { return int(pkt[0]&0x0f)*4 + 13 }

func seqOf(pkt []byte) uint32 {
	ihl := int(pkt[0]&0x0f) * 4
	return binary.BigEndian.Uint32(pkt[ihl+4 : ihl+8])
}

// sameFlow reports whether b continues a's flow with identical headers but
// for the fields that differ between segments: total length, ID, header
// checksum, sequence number, PSH and the TCP checksum.
func sameFlow(a, b []byte, hdrLen int) bool {
	const ihl = 20
	if a[1] != b[1] || a[6]&0xe0 != b[6]&0xe0 || a[8] != b[8] || !bytes.Equal(a[12:20], b[12:20]) {
		return false // TOS, DF, TTL, addresses
	}
	ta, tb := a[ihl:hdrLen], b[ihl:hdrLen]
	return bytes.Equal(ta[0:4], tb[0:4]) && // ports
		bytes.Equal(ta[8:13], tb[8:13]) && // ack, data offset
		ta[13]&^tcpPSH == tb[13]&^tcpPSH &&
		bytes.Equal(ta[14:16], tb[14:16]) && // window
		bytes.Equal(ta[20:], tb[20:]) // options
}
