package gso

import "encoding/binary"

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
	tcpURG = 0x20
	tcpECE = 0x40
	tcpCWR = 0x80
)

// MaxHdrLen is the longest IPv4 plus TCP header: a buffer of this size holds
// any segment's headers.
const MaxHdrLen = 60 + 60

// Segmenter cuts a TCP/IPv4 super-packet into the segments the sender's
// kernel would have put on the wire, without copying the payload: Segment
// writes a segment's headers into a buffer of the caller's and returns its
// payload as a window into the super-packet.
type Segmenter struct {
	pkt    []byte
	o      Offload
	ihl    int
	hdrLen int
	seg    int
	n      int
	seq    uint32
	id     uint16
}

// NewSegmenter checks pkt against o (GSO TCPv4) and prepares to cut it.
func NewSegmenter(pkt []byte, o Offload) (Segmenter, error) {
	ihl, proto, ok := ipv4Header(pkt)
	if !ok || proto != protoTCP || o.GSO != TCPv4 || o.SegSize <= 0 {
		return Segmenter{}, ErrBadPacket
	}
	if int(binary.BigEndian.Uint16(pkt[2:4])) != len(pkt) && len(pkt) <= MaxPacket {
		// The kernel fills the total length of super-packets; a mismatch
		// means the metadata and the bytes disagree.
		return Segmenter{}, ErrBadPacket
	}
	if len(pkt) < ihl+20 {
		return Segmenter{}, ErrBadPacket
	}
	thl := int(pkt[ihl+12]>>4) * 4
	hdrLen := ihl + thl
	if thl < 20 || hdrLen > len(pkt) {
		return Segmenter{}, ErrBadPacket
	}
	payload := len(pkt) - hdrLen
	n := (payload + o.SegSize - 1) / o.SegSize
	if n == 0 {
		n = 1 // a bare header: one segment without payload
	}
	return Segmenter{
		pkt:    pkt,
		o:      o,
		ihl:    ihl,
		hdrLen: hdrLen,
		seg:    o.SegSize,
		n:      n,
		seq:    binary.BigEndian.Uint32(pkt[ihl+4 : ihl+8]),
		id:     binary.BigEndian.Uint16(pkt[4:6]),
	}, nil
}

// Packet and Original return the super-packet and its metadata as given.
// Segment never changes them.
func (s *Segmenter) Packet() []byte    { return s.pkt }
func (s *Segmenter) Original() Offload { return s.o }

// Count is the number of segments.
func (s *Segmenter) Count() int { return s.n }

// HdrLen is the length of each segment's IPv4 and TCP headers.
func (s *Segmenter) HdrLen() int { return s.hdrLen }

// SegSize is the payload of every segment but the last.
func (s *Segmenter) SegSize() int { return s.seg }

// Segment writes the headers of segment i (0 <= i < Count) into
// hdr[:HdrLen()] and returns its payload, a window into the super-packet.
// The TCP checksum is left partial: the pseudo-header sum only.
func (s *Segmenter) Segment(i int, hdr []byte) []byte {
	start := s.hdrLen + i*s.seg
	end := min(start+s.seg, len(s.pkt))
	payload := s.pkt[start:end:end]
	h := hdr[:s.hdrLen]
	copy(h, s.pkt[:s.hdrLen])
	ip, tcp := h[:s.ihl], h[s.ihl:]

	binary.BigEndian.PutUint16(ip[2:4], uint16(s.hdrLen+len(payload)))
	binary.BigEndian.PutUint16(ip[4:6], s.id+uint16(i))
	putIPv4Checksum(ip, s.ihl)

	binary.BigEndian.PutUint32(tcp[4:8], s.seq+uint32(i*s.seg))
	if i > 0 {
		tcp[13] &^= tcpCWR // congestion window reduced: said once
	}
	if i < s.n-1 {
		tcp[13] &^= tcpFIN | tcpPSH // only the last segment ends or pushes
	}
	l4 := len(tcp) + len(payload)
	binary.BigEndian.PutUint16(tcp[tcpCsumOffset:], Fold(pseudoSum(ip, protoTCP, l4)))
	return payload
}

// Offload is the checksum request that goes with every segment.
func (s *Segmenter) Offload() Offload {
	return Offload{NeedsCsum: true, CsumStart: s.ihl, CsumOffset: tcpCsumOffset}
}
