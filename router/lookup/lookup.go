// Package lookup is the data plane's per-packet routing question — which
// peer owns this overlay address, and where does its data plane listen —
// answered from one immutable table.
//
// The table is built from the IPAM ring's spans and the peers' endpoints
// whenever either changes (copy-on-write) and read without a lock. A lookup
// touches three small arrays: a bucket index by the top bits of the address,
// a few uint32 boundaries of that bucket, and the owning peer's entry. No
// map, no string hashing, no allocation: a mesh of 1,000 peers has thousands
// of ranges, and this is asked for every packet in both directions.
package lookup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"unsafe"
)

// Span is one range of the overlay: offsets [Start, End) from the start of
// the overlay prefix, owned by the peer named Owner.
type Span struct {
	Start, End uint64
	Owner      string
}

// Peer is what a lookup answers for an owner.
type Peer struct {
	Name string
	// Endpoint is the peer's data endpoint; the zero value when it is not
	// known (yet) or the peer is this host.
	Endpoint netip.AddrPort
	Local    bool // the owner is this host
}

// ErrNotIPv4 means the overlay prefix is not an IPv4 prefix: the data
// plane forwards IPv4 only.
var ErrNotIPv4 = errors.New("the overlay prefix is not IPv4")

// ErrBadSpans means the spans are not sorted, overlap, or leave the prefix.
var ErrBadSpans = errors.New("spans not sorted, overlapping or outside the prefix")

// noOwner marks a gap between spans in Table.owner.
const noOwner = ^uint32(0)

// maxBucketBits bounds the index: 2^14 buckets of 4 bytes, 64 KiB.
const maxBucketBits = 14

// Table is an immutable snapshot; its zero value answers "no owner".
type Table struct {
	base uint32 // first address of the prefix
	size uint64 // addresses in the prefix (2^32 for /0)
	// bounds are sorted offsets where ownership changes; bounds[0] == 0.
	// Offsets in [bounds[i], bounds[i+1]) belong to peers[owner[i]], or to
	// nobody when owner[i] is noOwner. Gaps are entries too, so no end
	// offsets need checking.
	bounds []uint32
	owner  []uint32
	peers  []Peer
	// index[b] is the last entry starting at or before the first offset of
	// bucket b (offsets b<<shift ...); the entry for an offset in bucket b
	// lies between index[b] and index[b+1], both included. Buckets are
	// about as many as entries, so that is most often one or two.
	index []uint32
	shift uint
	// Gen is the ownership generation the table was built from, for a
	// caller that rebuilds when its source moves on.
	Gen uint64
}

// New builds a table for prefix from spans (sorted by Start, not
// overlapping, inside the prefix). endpoint gives each owner's data endpoint
// (called once per distinct owner, never for self); it may be nil.
func New(prefix netip.Prefix, spans []Span, self string, endpoint func(name string) (netip.AddrPort, bool)) (*Table, error) {
	if !prefix.IsValid() || !prefix.Addr().Is4() {
		return nil, fmt.Errorf("lookup table for %v: %w", prefix, ErrNotIPv4)
	}
	prefix = prefix.Masked()
	hostBits := uint(32 - prefix.Bits())
	t := &Table{
		base:   binary.BigEndian.Uint32(prefix.Addr().AsSlice()),
		size:   uint64(1) << hostBits,
		bounds: make([]uint32, 0, len(spans)+1),
		owner:  make([]uint32, 0, len(spans)+1),
	}
	ids := make(map[string]uint32)
	addEntry := func(at uint64, owner uint32) {
		if n := len(t.owner); n > 0 && t.owner[n-1] == owner {
			return // the same owner goes on: one entry
		}
		t.bounds = append(t.bounds, uint32(at))
		t.owner = append(t.owner, owner)
	}
	next := uint64(0)
	for _, s := range spans {
		if s.Start < next || s.End <= s.Start || s.End > t.size {
			return nil, fmt.Errorf("lookup table: span [%d, %d) of %q after offset %d in a range of %d: %w",
				s.Start, s.End, s.Owner, next, t.size, ErrBadSpans)
		}
		if s.Start > next {
			addEntry(next, noOwner)
		}
		id, ok := ids[s.Owner]
		if !ok {
			id = uint32(len(t.peers))
			ids[s.Owner] = id
			p := Peer{Name: s.Owner, Local: s.Owner == self}
			if !p.Local && endpoint != nil {
				p.Endpoint, _ = endpoint(s.Owner)
			}
			t.peers = append(t.peers, p)
		}
		addEntry(s.Start, id)
		next = s.End
	}
	if next < t.size {
		addEntry(next, noOwner)
	}
	t.buildIndex(hostBits)
	return t, nil
}

// buildIndex splits the offsets into about one bucket per entry (a power
// of two, at most 2^maxBucketBits) and records each bucket's first
// candidate entry.
func (t *Table) buildIndex(hostBits uint) {
	bucketBits := uint(0)
	for 1<<bucketBits < len(t.bounds) && bucketBits < maxBucketBits && bucketBits < hostBits {
		bucketBits++
	}
	t.shift = hostBits - bucketBits
	n := 1 << bucketBits
	t.index = make([]uint32, n+1)
	j := 0
	for b := range n {
		lo := uint64(b) << t.shift
		for j+1 < len(t.bounds) && uint64(t.bounds[j+1]) <= lo {
			j++
		}
		t.index[b] = uint32(j)
	}
	t.index[n] = uint32(len(t.bounds) - 1)
}

// Lookup answers for addr: the owning peer's name, its data endpoint, and
// whether it is this host. An address outside the prefix or in no span has
// no owner (""). Safe for any number of readers; no allocation.
func (t *Table) Lookup(addr netip.Addr) (owner string, ep netip.AddrPort, local bool) {
	if p := t.Peer(addr); p != nil {
		return p.Name, p.Endpoint, p.Local
	}
	return "", netip.AddrPort{}, false
}

// Peer is Lookup's answer as a pointer into the table (nil for no owner).
func (t *Table) Peer(addr netip.Addr) *Peer {
	if t == nil || len(t.bounds) == 0 || !addr.Is4() {
		return nil
	}
	a4 := addr.As4()
	off := binary.BigEndian.Uint32(a4[:]) - t.base
	if uint64(off) >= t.size {
		return nil
	}
	b := off >> t.shift
	lo, hi := t.index[b], t.index[b+1]
	// The last entry in [lo, hi] whose bound is <= off (bounds[lo] is, by
	// construction). Halving with a conditional move, no unpredictable
	// branch: hi-lo is most often 0 or 1.
	n := hi - lo + 1
	for n > 1 {
		half := n >> 1
		if t.bounds[lo+half] <= off {
			lo += half
		}
		n -= half
	}
	id := t.owner[lo]
	if id == noOwner {
		return nil
	}
	return &t.peers[id]
}

// Len is the number of entries (spans, merged where one owner's spans
// touch, and gaps) and of distinct owners.
func (t *Table) Len() (entries, peers int) { return len(t.bounds), len(t.peers) }

// Bytes is the table's memory: its arrays and peer entries, not the owner
// name strings (shared with the ring that built it).
func (t *Table) Bytes() int {
	return int(unsafe.Sizeof(*t)) + 4*cap(t.bounds) + 4*cap(t.owner) + 4*cap(t.index) +
		int(unsafe.Sizeof(Peer{}))*cap(t.peers)
}
