// Package gso is the offload arithmetic of weft's data plane: the virtio-net
// header a TUN device with IFF_VNET_HDR puts in front of each packet, cutting
// a TCP/IPv4 super-packet into segments (Segmenter) and joining segments of
// one flow back into a super-packet (Coalescer).
//
// The point is to do without copies and checksums in userspace. A segment is
// a header written into a small buffer plus a window into the super-packet,
// sent with one iovec each; coalesced segments go to the kernel as one
// writev. TCP checksums are left partial (pseudo-header only) end to end, as
// virtio does between guests: the receiving kernel gets the packet as
// CHECKSUM_PARTIAL and trusts it. In transit the payload is covered by the
// outer UDP checksum, or by the AEAD tag when encrypted.
//
// Only IPv4 is handled, like the rest of the data plane.
package gso

import (
	"encoding/binary"
	"errors"
)

// Kind is the segmentation a packet asks for.
type Kind uint8

const (
	None  Kind = 0 // an ordinary packet
	TCPv4 Kind = 1 // a TCP/IPv4 super-packet, cut every SegSize payload bytes
)

// Virtio-net header constants (linux/virtio_net.h).
const (
	VirtioHdrLen = 10

	virtioNeedsCsum = 1
	virtioGSONone   = 0
	virtioGSOTCPv4  = 1
	virtioGSOECN    = 0x80
)

// Protocol numbers and offsets of the L4 checksum fields.
const (
	protoTCP = 6
	protoUDP = 17

	tcpCsumOffset = 16
	udpCsumOffset = 6
)

// MaxPacket is the largest packet a device hands over or accepts: the IPv4
// total length is 16 bits.
const MaxPacket = 65535

// Offload is the metadata that travels with a packet between the kernel and
// weft.
type Offload struct {
	GSO Kind
	// SegSize is the TCP payload of each segment but the last (GSO only).
	SegSize int
	// HdrLen is the length of the IPv4 and TCP headers (GSO only).
	HdrLen int
	// NeedsCsum: the L4 checksum at CsumStart+CsumOffset holds only the
	// pseudo-header sum; whoever delivers the packet completes it, or hands
	// it on as CHECKSUM_PARTIAL.
	NeedsCsum  bool
	CsumStart  int
	CsumOffset int
}

// Errors of the decoders. Not wrapped, so that a flood of bad packets costs
// no allocation.
var (
	ErrShortHeader = errors.New("gso: virtio header too short")
	ErrGSOType     = errors.New("gso: unsupported segmentation type")
	ErrBadPacket   = errors.New("gso: packet does not match its offload metadata")
)

// ParseVirtio decodes the virtio-net header at the front of b. The kernel
// writes it in host byte order (legacy virtio).
func ParseVirtio(b []byte) (Offload, error) {
	if len(b) < VirtioHdrLen {
		return Offload{}, ErrShortHeader
	}
	var o Offload
	o.NeedsCsum = b[0]&virtioNeedsCsum != 0
	o.HdrLen = int(binary.NativeEndian.Uint16(b[2:4]))
	o.SegSize = int(binary.NativeEndian.Uint16(b[4:6]))
	o.CsumStart = int(binary.NativeEndian.Uint16(b[6:8]))
	o.CsumOffset = int(binary.NativeEndian.Uint16(b[8:10]))
	switch b[1] &^ virtioGSOECN {
	case virtioGSONone:
		o.GSO, o.HdrLen, o.SegSize = None, 0, 0
	case virtioGSOTCPv4:
		if b[1]&virtioGSOECN != 0 {
			return o, ErrGSOType // not negotiated; the kernel segments those itself
		}
		o.GSO = TCPv4
	default:
		return o, ErrGSOType
	}
	if !o.NeedsCsum {
		o.CsumStart, o.CsumOffset = 0, 0
	}
	return o, nil
}

// PutVirtio writes o as a virtio-net header into b[:VirtioHdrLen].
func (o Offload) PutVirtio(b []byte) {
	_ = b[VirtioHdrLen-1]
	clear(b[:VirtioHdrLen])
	if o.NeedsCsum {
		b[0] = virtioNeedsCsum
		binary.NativeEndian.PutUint16(b[6:8], uint16(o.CsumStart))
		binary.NativeEndian.PutUint16(b[8:10], uint16(o.CsumOffset))
	}
	if o.GSO == TCPv4 {
		b[1] = virtioGSOTCPv4
		binary.NativeEndian.PutUint16(b[2:4], uint16(o.HdrLen))
		binary.NativeEndian.PutUint16(b[4:6], uint16(o.SegSize))
	}
}

// Partial returns the Offload that marks pkt, an IPv4 TCP or UDP packet
// whose checksum field holds the pseudo-header sum, as needing its checksum.
// ok is false when pkt is not such a packet.
func Partial(pkt []byte) (o Offload, ok bool) {
	ihl, proto, ok := ipv4Header(pkt)
	if !ok {
		return Offload{}, false
	}
	var off int
	switch proto {
	case protoTCP:
		off = tcpCsumOffset
	case protoUDP:
		off = udpCsumOffset
	default:
		return Offload{}, false
	}
	if ihl+off+2 > len(pkt) {
		return Offload{}, false
	}
	return Offload{NeedsCsum: true, CsumStart: ihl, CsumOffset: off}, true
}

// IsStandardPartial reports whether o's checksum request is the one Partial
// would make for pkt, so the receiver can rebuild it from the packet alone.
func IsStandardPartial(pkt []byte, o Offload) bool {
	p, ok := Partial(pkt)
	return ok && o.NeedsCsum && p.CsumStart == o.CsumStart && p.CsumOffset == o.CsumOffset
}

// Complete computes the checksum o asks for and clears the request. The
// field must hold the pseudo-header sum (or zero), as the kernel leaves it.
func Complete(pkt []byte, o Offload) error {
	if !o.NeedsCsum {
		return nil
	}
	at := o.CsumStart + o.CsumOffset
	if o.CsumStart > len(pkt) || at+2 > len(pkt) {
		return ErrBadPacket
	}
	sum := Sum(pkt[o.CsumStart:], 0)
	c := ^Fold(sum)
	if c == 0 && o.CsumOffset == udpCsumOffset && len(pkt) > 9 && pkt[9] == protoUDP {
		c = 0xffff // zero means "no checksum" in UDP
	}
	binary.BigEndian.PutUint16(pkt[at:], c)
	return nil
}

// ParseIPv4 checks the fixed part of the IPv4 header at the front of pkt
// (version 4, a header length that fits) and returns the header length: the
// one IPv4 parser of weft's data plane. It is small enough to be inlined
// with its callers' own checks on the hot path. The total length is not
// checked against len(pkt): callers that need them to match check it (the
// kernel may hand over super-packets longer than the field can say).
func ParseIPv4(pkt []byte) (hdrLen int, ok bool) {
	if len(pkt) < 20 {
		return 0, false
	}
	hdrLen = int(pkt[0]&0x0f) << 2
	return hdrLen, pkt[0]>>4 == 4 && hdrLen >= 20 && hdrLen <= len(pkt)
}

// ipv4Header checks the fixed part of an IPv4 header and returns its length
// and protocol. Fragments are refused (MF or an offset): offloads never
// apply to them.
func ipv4Header(pkt []byte) (ihl int, proto byte, ok bool) {
	ihl, ok = ParseIPv4(pkt)
	if !ok || binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 {
		return 0, 0, false
	}
	return ihl, pkt[9], true
}

// pseudoSum is the unfolded sum of the IPv4 pseudo-header for an L4 segment
// of l4len bytes.
func pseudoSum(ip []byte, proto byte, l4len int) uint64 {
	s := uint64(binary.BigEndian.Uint32(ip[12:16])) + uint64(binary.BigEndian.Uint32(ip[16:20]))
	return s + uint64(proto) + uint64(l4len)
}

// putIPv4Checksum recomputes the header checksum of ip[:ihl].
func putIPv4Checksum(ip []byte, ihl int) {
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:12], ^Fold(Sum(ip[:ihl], 0)))
}

// Sum adds b to the one's-complement sum s, 16 bits at a time in network
// order, without folding. Partial sums can be chained while every b but the
// last has even length.
func Sum(b []byte, s uint64) uint64 {
	for len(b) >= 8 {
		v := binary.BigEndian.Uint64(b)
		s += v >> 32
		s += v & 0xffffffff
		b = b[8:]
	}
	for len(b) >= 2 {
		s += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	return s
}

// Fold folds a sum to 16 bits.
func Fold(s uint64) uint16 {
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}
