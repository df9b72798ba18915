package ipam

import "net/netip"

// ownerTable is an immutable snapshot of who owns which addresses, swapped
// atomically on every ring change so the data plane reads it without a lock.
type ownerTable struct {
	prefix netip.Prefix
	starts []uint64 // sorted
	ends   []uint64
	owners []string
	// index narrows the search: bucket b of the range (offsets b<<shift up
	// to the next bucket) holds spans from index[b] to index[b+1]
	// (inclusive), so a lookup searches a handful of spans instead of all
	// of them: a mesh of 1,000 peers has thousands of ranges, and this is
	// asked once per packet.
	index []uint32
	shift uint
	gen   uint64 // counts the snapshots published; see OwnerGen
}

// indexBuckets is the most buckets of the index (4 bytes each).
const indexBuckets = 1 << 14

func newOwnerTable(p netip.Prefix, spans []span) *ownerTable {
	t := &ownerTable{
		prefix: p,
		starts: make([]uint64, len(spans)),
		ends:   make([]uint64, len(spans)),
		owners: make([]string, len(spans)),
	}
	for i, s := range spans {
		t.starts[i], t.ends[i], t.owners[i] = s.Start, s.End, s.Owner
	}
	if len(spans) > 16 {
		t.buildIndex(uint(p.Addr().BitLen() - p.Bits()))
	}
	return t
}

// buildIndex splits the range of 2^hostBits offsets into about one bucket
// per span (a power of two, at most indexBuckets) and records for each the
// first span that may hold an offset in it.
func (t *ownerTable) buildIndex(hostBits uint) {
	bucketBits := uint(0)
	for 1<<bucketBits < len(t.starts) && 1<<bucketBits < indexBuckets && bucketBits < hostBits {
		bucketBits++
	}
	if hostBits > 63 {
		return // an IPv6 range wider than /65: plain binary search
	}
	t.shift = hostBits - bucketBits
	n := 1 << bucketBits
	t.index = make([]uint32, n+1)
	j := 0
	for b := range n {
		lo := uint64(b) << t.shift
		// The last span starting at or before lo may still cover lo.
		for j+1 < len(t.starts) && t.starts[j+1] <= lo {
			j++
		}
		t.index[b] = uint32(j)
	}
	t.index[n] = uint32(len(t.starts) - 1)
}

// lookup is a binary search for the span holding off, within the spans of
// its index bucket; no allocation.
func (t *ownerTable) lookup(off uint64) (string, bool) {
	lo, hi := 0, len(t.starts) // find first start > off
	if t.index != nil {
		if b := off >> t.shift; b+1 < uint64(len(t.index)) {
			lo, hi = int(t.index[b]), int(t.index[b+1])+1
		}
	}
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if t.starts[mid] <= off {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo == 0 || off >= t.ends[lo-1] {
		return "", false
	}
	return t.owners[lo-1], true
}

func (t *ownerTable) equal(o *ownerTable) bool {
	if o == nil || len(t.starts) != len(o.starts) {
		return false
	}
	for i := range t.starts {
		if t.starts[i] != o.starts[i] || t.ends[i] != o.ends[i] || t.owners[i] != o.owners[i] {
			return false
		}
	}
	return true
}

// Owner returns the peer that owns addr, for the data plane. It is safe for
// any number of concurrent callers, takes no lock and does not allocate.
func (p *IPAM) Owner(addr netip.Addr) (string, bool) {
	t := p.owners.Load()
	if t == nil {
		return "", false
	}
	off, ok := offsetOf(t.prefix, addr)
	if !ok {
		return "", false
	}
	return t.lookup(off)
}

// OwnerSpan is one range of the ring: offsets [Start, End) from the start of
// the pod range, owned by the peer named Owner.
type OwnerSpan struct {
	Start, End uint64
	Owner      string
}

// OwnerGen names the current ownership snapshot: it changes whenever who
// owns what does (0 before the ring exists). A data plane that builds its
// own lookup table from OwnerSpans compares it per packet (one atomic load)
// to know its table is current.
func (p *IPAM) OwnerGen() uint64 {
	if t := p.owners.Load(); t != nil {
		return t.gen
	}
	return 0
}

// OwnerSpans returns the ring's ranges in address order (no overlaps, gaps
// left out) with the generation of the snapshot they come from.
func (p *IPAM) OwnerSpans() (gen uint64, spans []OwnerSpan) {
	t := p.owners.Load()
	if t == nil {
		return 0, nil
	}
	spans = make([]OwnerSpan, len(t.starts))
	for i := range t.starts {
		spans[i] = OwnerSpan{Start: t.starts[i], End: t.ends[i], Owner: t.owners[i]}
	}
	return t.gen, spans
}

// OwnedPrefixes is this peer's ranges as the fewest CIDR prefixes, for the
// kernel routes to the local bridge.
func (p *IPAM) OwnedPrefixes() []netip.Prefix {
	t := p.owners.Load()
	if t == nil {
		return nil
	}
	var out []netip.Prefix
	for i, o := range t.owners {
		if o == p.cfg.Name {
			out = cidrCover(out, t.prefix, t.starts[i], t.ends[i])
		}
	}
	return out
}

// OwnerPrefixes is every owner's ranges as the fewest CIDR prefixes, with
// the generation of the snapshot they come from (see OwnerGen): the fast
// path routes each peer's prefixes, and keeps them until the generation
// changes instead of working them out at every round.
func (p *IPAM) OwnerPrefixes() (gen uint64, prefixes map[string][]netip.Prefix) {
	t := p.owners.Load()
	if t == nil {
		return 0, nil
	}
	prefixes = map[string][]netip.Prefix{}
	for i, o := range t.owners {
		prefixes[o] = cidrCover(prefixes[o], t.prefix, t.starts[i], t.ends[i])
	}
	return t.gen, prefixes
}

// Changes signals (coalesced) that ownership changed: routes need a refresh.
func (p *IPAM) Changes() <-chan struct{} { return p.changes }
