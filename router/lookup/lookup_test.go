package lookup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sort"
	"testing"
)

// xorshift is a deterministic source for the randomised tables.
type xorshift uint64

func (x *xorshift) next() uint64 {
	*x ^= *x << 13
	*x ^= *x >> 7
	*x ^= *x << 17
	return uint64(*x)
}

func addrAt(p netip.Prefix, off uint64) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], binary.BigEndian.Uint32(p.Masked().Addr().AsSlice())+uint32(off))
	return netip.AddrFrom4(b)
}

func epOf(name string) (netip.AddrPort, bool) {
	var h uint32
	for _, c := range []byte(name) {
		h = h*31 + uint32(c)
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], 0xc6120000|h&0xffff) // 198.18.x.y
	return netip.AddrPortFrom(netip.AddrFrom4(b), 6784), true
}

// scan is the obvious answer the table must give: the span holding off,
// found by a binary search over the spans themselves.
func scan(spans []Span, self string, off uint64) (string, netip.AddrPort, bool) {
	i := sort.Search(len(spans), func(i int) bool { return spans[i].End > off })
	if i == len(spans) || off < spans[i].Start {
		return "", netip.AddrPort{}, false
	}
	if s := spans[i]; s.Owner != self {
		ep, _ := epOf(s.Owner)
		return s.Owner, ep, false
	}
	return self, netip.AddrPort{}, true
}

// randomSpans covers size offsets with about n spans of uneven length, some
// gaps, and neighbours of the same owner (which the table merges).
func randomSpans(rng *xorshift, size uint64, n, owners int) []Span {
	var spans []Span
	start := uint64(0)
	for i := 0; i < n && start < size; i++ {
		start += rng.next() % 3 // an occasional gap
		length := 1 + rng.next()%(2*size/uint64(n)+1)
		end := min(start+length, size)
		if start >= end {
			break
		}
		spans = append(spans, Span{Start: start, End: end, Owner: fmt.Sprintf("p%d", rng.next()%uint64(owners))})
		start = end
	}
	return spans
}

// The table gives the answer of a plain scan for every address: tables of
// every size, prefix lengths from /0 to /32, gaps, merged neighbours, the
// edges of every span, and addresses outside the prefix.
func TestLookupAgreesWithScan(t *testing.T) {
	rng := xorshift(88172645463325252)
	for _, bits := range []int{0, 8, 12, 16, 24, 30, 32} {
		prefix := netip.PrefixFrom(netip.MustParseAddr("10.32.0.0"), bits).Masked()
		size := uint64(1) << (32 - bits)
		for _, n := range []int{0, 1, 2, 17, 100, 4000, 20000} {
			spans := randomSpans(&rng, size, n, 1+n/4)
			tbl, err := New(prefix, spans, "p1", epOf)
			if err != nil {
				t.Fatalf("/%d, %d spans: %v", bits, n, err)
			}
			check := func(off uint64) {
				t.Helper()
				a := addrAt(prefix, off)
				wo, we, wl := scan(spans, "p1", off)
				o, e, l := tbl.Lookup(a)
				if o != wo || e != we || l != wl {
					t.Fatalf("/%d, %d spans, %v: table %q %v %v, scan %q %v %v", bits, len(spans), a, o, e, l, wo, we, wl)
				}
			}
			for _, s := range spans {
				check(s.Start)
				check(s.End - 1)
				if s.End < size {
					check(s.End)
				}
			}
			for range 5000 {
				check(rng.next() % size)
			}
			if bits > 0 {
				below := addrAt(prefix, 0).Prev()
				above := addrAt(prefix, size-1).Next()
				for _, a := range []netip.Addr{below, above} {
					if o, _, _ := tbl.Lookup(a); o != "" {
						t.Fatalf("/%d: %v outside the prefix has owner %q", bits, a, o)
					}
				}
			}
		}
	}
}

func TestLookupRefusesBadInput(t *testing.T) {
	p := netip.MustParsePrefix("10.32.0.0/12")
	if _, err := New(netip.MustParsePrefix("fd00::/64"), nil, "", nil); !errors.Is(err, ErrNotIPv4) {
		t.Errorf("IPv6 prefix: %v, want ErrNotIPv4", err)
	}
	for name, spans := range map[string][]Span{
		"unsorted":   {{Start: 10, End: 20, Owner: "a"}, {Start: 0, End: 5, Owner: "b"}},
		"overlap":    {{Start: 0, End: 20, Owner: "a"}, {Start: 19, End: 25, Owner: "b"}},
		"empty span": {{Start: 5, End: 5, Owner: "a"}},
		"too far":    {{Start: 0, End: 1<<20 + 1, Owner: "a"}},
	} {
		if _, err := New(p, spans, "", nil); !errors.Is(err, ErrBadSpans) {
			t.Errorf("%s: %v, want ErrBadSpans", name, err)
		}
	}
	var zero *Table
	if o, _, _ := zero.Lookup(netip.MustParseAddr("10.32.0.1")); o != "" {
		t.Errorf("nil table answers %q", o)
	}
	tbl, err := New(p, []Span{{Start: 0, End: 1 << 20, Owner: "a"}}, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if o, _, _ := tbl.Lookup(netip.MustParseAddr("::ffff:10.32.0.1")); o != "" {
		t.Errorf("an IPv4-mapped IPv6 address answers %q", o)
	}
}

// mesh1000 is the ring of issue 21: 1,000 peers, 4,000 ranges over the
// default /12, each peer owning four ranges spread over the ring as
// donations leave them.
func mesh1000(tb testing.TB) (netip.Prefix, []Span) {
	tb.Helper()
	const ranges, peers = 4000, 1000
	prefix := netip.MustParsePrefix("10.32.0.0/12")
	size := uint64(1) << 20
	step := size / ranges
	names := make([]string, peers)
	for i := range names {
		names[i] = fmt.Sprintf("host%04d", i+1)
	}
	spans := make([]Span, ranges)
	for i := range spans {
		spans[i] = Span{Start: uint64(i) * step, End: uint64(i+1) * step, Owner: names[(i*7)%peers]}
	}
	spans[ranges-1].End = size
	return prefix, spans
}

// BenchmarkLookup4000 is the per-packet question of issue 21 at 1,000 peers
// and 4,000 ranges: owner, endpoint and locality in one lookup. Goal: <= 50
// ns, 0 allocations. Destinations are spread over the whole range so the
// answer does not come from one cache line.
func BenchmarkLookup4000(b *testing.B) {
	prefix, spans := mesh1000(b)
	tbl, err := New(prefix, spans, "host0001", epOf)
	if err != nil {
		b.Fatal(err)
	}
	addrs := make([]netip.Addr, 1024)
	for i := range addrs {
		addrs[i] = addrAt(prefix, (uint64(i)*2654435761)%(1<<20))
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if o, _, _ := tbl.Lookup(addrs[i&1023]); o == "" {
			b.Fatal("address without owner")
		}
	}
	b.ReportMetric(float64(tbl.Bytes()), "table-bytes")
}

// At 1,000 peers and 4,000 ranges a lookup allocates nothing, and the table
// stays small: its own accounting and the heap it takes to build agree, and
// both stay under 200 KB.
func TestLookup4000MemoryAndAllocs(t *testing.T) {
	prefix, spans := mesh1000(t)
	addrs := make([]netip.Addr, 64)
	for i := range addrs {
		addrs[i] = addrAt(prefix, (uint64(i)*2654435761)%(1<<20))
	}
	// Eight tables kept live, so that the heap delta is mostly theirs.
	var tables [8]*Table
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range tables {
		var err error
		if tables[i], err = New(prefix, spans, "host0001", epOf); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	live := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / int64(len(tables))
	built := (after.TotalAlloc - before.TotalAlloc) / uint64(len(tables))
	tbl := tables[0]
	entries, peers := tbl.Len()
	t.Logf("1,000 peers, 4,000 ranges: %d entries, %d peers, table %d bytes; per table: live heap %d bytes, allocated to build %d bytes",
		entries, peers, tbl.Bytes(), live, built)
	if entries != 4000 || peers != 1000 {
		t.Fatalf("%d entries, %d peers; want 4000, 1000", entries, peers)
	}
	if tbl.Bytes() > 200_000 {
		t.Errorf("table of %d bytes, want <= 200 KB", tbl.Bytes())
	}
	// The heap delta is noisy (other goroutines); it must not be far off.
	if live > 2*int64(tbl.Bytes())+64<<10 {
		t.Errorf("building the table kept %d bytes live, its arrays are %d", live, tbl.Bytes())
	}
	i := 0
	if a := testing.AllocsPerRun(1000, func() {
		_, _, _ = tbl.Lookup(addrs[i&63])
		i++
	}); a != 0 {
		t.Fatalf("lookup allocates %v times", a)
	}
	runtime.KeepAlive(tables)
}

// FuzzLookup checks any table against the scan, for addresses taken from
// packets (untrusted) and rings of any shape.
func FuzzLookup(f *testing.F) {
	f.Add(uint8(12), []byte{0, 10, 3, 200, 1, 7}, uint32(0x0a200001))
	f.Add(uint8(0), []byte{}, uint32(0))
	f.Add(uint8(32), []byte{0, 1, 0}, uint32(0x0a200000))
	f.Add(uint8(24), []byte{5, 50, 1, 0, 255, 2}, uint32(0x0a2000ff))
	f.Fuzz(func(t *testing.T, bits uint8, shape []byte, addr uint32) {
		bits %= 33
		prefix := netip.PrefixFrom(netip.MustParseAddr("10.32.0.0"), int(bits)).Masked()
		size := uint64(1) << (32 - bits)
		// Each byte pair is (gap, length) scaled to the prefix; owner from
		// the index.
		var spans []Span
		next := uint64(0)
		unit := max(size/256, 1)
		for i := 0; i+1 < len(shape); i += 2 {
			start := next + uint64(shape[i]%4)*unit/2
			end := min(start+(uint64(shape[i+1])+1)*unit, size)
			if start >= end {
				break
			}
			spans = append(spans, Span{Start: start, End: end, Owner: fmt.Sprintf("p%d", shape[i+1]%5)})
			next = end
		}
		tbl, err := New(prefix, spans, "p0", epOf)
		if err != nil {
			t.Fatal(err)
		}
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], addr)
		a := netip.AddrFrom4(b)
		o, e, l := tbl.Lookup(a)
		wo, we, wl := "", netip.AddrPort{}, false
		if prefix.Contains(a) {
			wo, we, wl = scan(spans, "p0", uint64(addr-binary.BigEndian.Uint32(prefix.Addr().AsSlice())))
		}
		if o != wo || e != we || l != wl {
			t.Fatalf("%v in %v with %v: table %q %v %v, scan %q %v %v", a, prefix, spans, o, e, l, wo, we, wl)
		}
	})
}
