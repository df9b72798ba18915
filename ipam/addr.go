package ipam

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
)

// Offsets: the ring works on offsets from the first address of the mesh range,
// which is at most 2^32 addresses (an IPv4 /0 or an IPv6 /96), so only the low
// 64 bits of an address ever differ from the base.

const (
	minHostBits = 2  // a /30: two usable addresses
	maxHostBits = 32 // keeps every offset and count comfortably in a uint64
)

// rangeSize validates the mesh range and returns its number of addresses.
func rangeSize(p netip.Prefix) (uint64, error) {
	if !p.IsValid() {
		return 0, fmt.Errorf("invalid range %v", p)
	}
	if p.Masked() != p {
		return 0, fmt.Errorf("range %s has host bits set; did you mean %s?", p, p.Masked())
	}
	hb := p.Addr().BitLen() - p.Bits()
	if hb < minHostBits || hb > maxHostBits {
		return 0, fmt.Errorf("range %s must have between %d and %d host bits", p, minHostBits, maxHostBits)
	}
	return 1 << hb, nil
}

func low64(a netip.Addr) uint64 {
	if a.Is4() {
		b := a.As4()
		return uint64(binary.BigEndian.Uint32(b[:]))
	}
	b := a.As16()
	return binary.BigEndian.Uint64(b[8:])
}

// offsetOf is a's offset in p; it does not allocate.
func offsetOf(p netip.Prefix, a netip.Addr) (uint64, bool) {
	if !p.Contains(a) {
		return 0, false
	}
	return low64(a) - low64(p.Addr()), true
}

// addrAt is the address at offset off of p (off < size of p).
func addrAt(p netip.Prefix, off uint64) netip.Addr {
	if p.Addr().Is4() {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(low64(p.Addr())+off))
		return netip.AddrFrom4(b)
	}
	b := p.Addr().As16()
	binary.BigEndian.PutUint64(b[8:], low64(p.Addr())+off)
	return netip.AddrFrom16(b)
}

// cidrCover appends the fewest prefixes that cover exactly offsets [start,end) of p.
func cidrCover(out []netip.Prefix, p netip.Prefix, start, end uint64) []netip.Prefix {
	for start < end {
		// Largest aligned block at start that fits before end.
		size := uint64(1) << bits.TrailingZeros64(start|(1<<maxHostBits))
		for size > end-start {
			size >>= 1
		}
		bitsLen := p.Addr().BitLen() - bits.TrailingZeros64(size)
		out = append(out, netip.PrefixFrom(addrAt(p, start), bitsLen))
		start += size
	}
	return out
}
