package ipam

import "net/netip"

// ownerTable is an immutable snapshot of who owns which addresses, swapped
// atomically on every ring change so the data plane reads it without a lock.
type ownerTable struct {
	prefix netip.Prefix
	starts []uint64 // sorted
	ends   []uint64
	owners []string
}

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
	return t
}

// lookup is a binary search for the span holding off; no allocation.
func (t *ownerTable) lookup(off uint64) (string, bool) {
	lo, hi := 0, len(t.starts) // find first start > off
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

// Changes signals (coalesced) that ownership changed: routes need a refresh.
func (p *IPAM) Changes() <-chan struct{} { return p.changes }
