package ipam

import (
	"fmt"
	"net/netip"
	"testing"
	"unsafe"
)

// BenchmarkOwnerLookup4000 is the data plane's per-packet question (issue
// 21): which peer owns a destination, in a mesh of 1,000 peers whose ring
// has 4,000 ranges, over the default /12. Goal: <= 50 ns, 0 allocations.
// It reports the owner table's memory as table-bytes.
func BenchmarkOwnerLookup4000(b *testing.B) { benchOwnerLookup(b, true) }

// BenchmarkOwnerLookup4000NoIndex is the same lookup as a binary search
// over all ranges (the table before its index), to compare on the same
// machine at the same moment.
func BenchmarkOwnerLookup4000NoIndex(b *testing.B) { benchOwnerLookup(b, false) }

func benchOwnerLookup(b *testing.B, indexed bool) {
	const ranges, peers = 4000, 1000
	prefix := netip.MustParsePrefix("10.32.0.0/12")
	size := uint64(1) << (32 - prefix.Bits())
	step := size / ranges
	spans := make([]span, ranges)
	names := make([]string, peers)
	for i := range names {
		names[i] = fmt.Sprintf("host%04d", i+1)
	}
	for i := range spans {
		// Each peer owns four ranges spread over the ring, as donations leave them.
		spans[i] = span{Start: uint64(i) * step, End: uint64(i+1) * step, Owner: names[(i*7)%peers]}
	}
	spans[ranges-1].End = size
	p := &IPAM{cfg: Config{Range: prefix}, size: size}
	t := newOwnerTable(prefix, spans)
	if !indexed {
		t.index = nil
	}
	p.owners.Store(t)
	// Destinations spread over the whole range, so the search is not
	// served from one cache line.
	addrs := make([]netip.Addr, 1024)
	for i := range addrs {
		addrs[i] = addrAt(prefix, (uint64(i)*2654435761)%size)
	}
	tableBytes := int(unsafe.Sizeof(*t)) + ranges*(8+8+int(unsafe.Sizeof(""))) + 4*len(t.index)
	for _, n := range names {
		tableBytes += len(n) // owner strings are shared by the ranges of one peer
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, ok := p.Owner(addrs[i&1023]); !ok {
			b.Fatal("address without owner")
		}
	}
	b.ReportMetric(float64(tableBytes), "table-bytes")
}

// TestOwnerLookup4000Allocs holds the goal of the benchmark in every test
// run: no allocation per lookup.
func TestOwnerLookup4000Allocs(t *testing.T) {
	res := testing.Benchmark(BenchmarkOwnerLookup4000)
	if a := res.AllocsPerOp(); a != 0 {
		t.Fatalf("%d allocations per lookup, want 0", a)
	}
}

// The index of the owner table never changes an answer: indexed lookups
// agree with a plain scan, for tables of every size, with gaps and spans
// of uneven length.
func TestOwnerTableIndex(t *testing.T) {
	prefix := netip.MustParsePrefix("10.32.0.0/12")
	size := uint64(1) << 20
	rng := uint64(88172645463325252)
	next := func() uint64 { // xorshift: deterministic, no import
		rng ^= rng << 13
		rng ^= rng >> 7
		rng ^= rng << 17
		return rng
	}
	for _, n := range []int{1, 17, 100, 1000, 4000, 20000} {
		var spans []span
		start := uint64(0)
		for i := 0; i < n && start < size; i++ {
			start += next() % 3 // an occasional gap
			length := 1 + next()%(2*size/uint64(n))
			end := min(start+length, size)
			if start >= end {
				break
			}
			spans = append(spans, span{Start: start, End: end, Owner: fmt.Sprintf("p%d", i%50)})
			start = end
		}
		tbl := newOwnerTable(prefix, spans)
		if len(spans) > 16 && tbl.index == nil {
			t.Fatalf("%d spans: no index", len(spans))
		}
		for k := 0; k < 20000; k++ {
			off := next() % size
			want, wantOK := "", false
			for _, s := range spans {
				if s.Start <= off && off < s.End {
					want, wantOK = s.Owner, true
				}
			}
			got, ok := tbl.lookup(off)
			if got != want || ok != wantOK {
				t.Fatalf("%d spans, offset %d: lookup %q %v, scan %q %v", len(spans), off, got, ok, want, wantOK)
			}
		}
	}
}
