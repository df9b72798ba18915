package router

import (
	"encoding/binary"

	"github.com/weftnet/weft/router/gso"
)

// IPv4 header fields the data path reads.
const (
	ipv4MinHeader = 20
	protoICMP     = 1
	flagDF        = 0x40 // in byte 6
)

// icmpTooBigMax is the largest ICMP error built: IPv4 header, ICMP header,
// the offending packet's header (up to 60 bytes) and 8 bytes of its payload.
const icmpTooBigMax = ipv4MinHeader + 8 + 60 + 8

// needsTooBig reports whether pkt, an IPv4 packet bigger than the MTU, must
// be answered with "fragmentation needed": DF set, not a later fragment,
// and not itself an ICMP error (no errors about errors, RFC 1122 3.2.2).
func needsTooBig(pkt []byte) bool {
	if pkt[6]&flagDF == 0 {
		return false
	}
	if binary.BigEndian.Uint16(pkt[6:8])&0x1fff != 0 {
		return false
	}
	ihl := int(pkt[0]&0x0f) * 4
	if pkt[9] == protoICMP && len(pkt) > ihl {
		switch pkt[ihl] { // echo reply, echo request, ... are fine; errors are not
		case 3, 4, 5, 11, 12:
			return false
		}
	}
	return true
}

// buildTooBig writes into out an ICMP "destination unreachable, fragmentation
// needed" (type 3 code 4) about pkt with the next-hop MTU, as if sent by
// pkt's destination back to its source, and returns the packet length.
// pkt must be a sane IPv4 packet; out must hold icmpTooBigMax bytes.
func buildTooBig(out, pkt []byte, mtu int) int {
	ihl := int(pkt[0]&0x0f) * 4
	quote := min(len(pkt), ihl+8)
	total := ipv4MinHeader + 8 + quote

	ip := out[:ipv4MinHeader]
	ip[0] = 0x45
	ip[1] = 0xc0 // DSCP CS6, as Linux marks its own ICMP errors
	binary.BigEndian.PutUint16(ip[2:4], uint16(total))
	binary.BigEndian.PutUint32(ip[4:8], 0) // id 0, no flags, offset 0
	ip[8] = 64                             // TTL
	ip[9] = protoICMP
	ip[10], ip[11] = 0, 0
	copy(ip[12:16], pkt[16:20]) // source: the unreachable destination
	copy(ip[16:20], pkt[12:16]) // destination: the original sender
	binary.BigEndian.PutUint16(ip[10:12], checksum(ip, 0))

	icmp := out[ipv4MinHeader:total]
	icmp[0], icmp[1] = 3, 4
	icmp[2], icmp[3] = 0, 0
	icmp[4], icmp[5] = 0, 0 // unused
	binary.BigEndian.PutUint16(icmp[6:8], uint16(mtu))
	copy(icmp[8:], pkt[:quote])
	binary.BigEndian.PutUint16(icmp[2:4], checksum(icmp, 0))
	return total
}

// checksum is the Internet checksum (RFC 1071) of b, starting from sum.
func checksum(b []byte, sum uint32) uint16 { return ^gso.Fold(gso.Sum(b, uint64(sum))) }

// ipv4Packet checks that p starts with a sane IPv4 header and returns p cut
// to the header's total length (links may pad).
func ipv4Packet(p []byte) ([]byte, bool) {
	if ihl, ok := gso.ParseIPv4(p); ok {
		if total := int(p[2])<<8 | int(p[3]); total >= ihl && total <= len(p) {
			return p[:total], true
		}
	}
	return nil, false
}
