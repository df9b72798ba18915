package ipam

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func randomEntries(rng *rand.Rand, n int) []entry {
	owners := []string{"a", "b", "c", "d"}
	out := make([]entry, n)
	for i := range out {
		start := uint64(rng.IntN(16)) * 16
		end := start + 1 + uint64(rng.IntN(64))
		out[i] = entry{Start: start, End: min(end, 256), Owner: owners[rng.IntN(len(owners))],
			Version: 1 + uint64(rng.IntN(3)), Free: uint64(rng.IntN(2))}
	}
	return out
}

func ringOf(es ...[]entry) *ring {
	r := &ring{ID: "x", Size: 256}
	for _, e := range es {
		r.merge(e)
	}
	return r
}

// The merge laws, over random entries including same-version conflicts.
func TestMergeLaws(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		a, b, c := randomEntries(rng, 8), randomEntries(rng, 8), randomEntries(rng, 8)
		ab, ba := ringOf(a, b), ringOf(b, a)
		if !slices.Equal(ab.entries, ba.entries) {
			t.Fatalf("not commutative:\n%v\n%v", ab.entries, ba.entries)
		}
		left := ringOf(ringOf(a, b).entries, c)
		right := ringOf(a, ringOf(b, c).entries)
		if !slices.Equal(left.entries, right.entries) {
			t.Fatalf("not associative:\n%v\n%v", left.entries, right.entries)
		}
		aa := ringOf(a, a)
		if changed, _ := aa.merge(ringOf(a).entries); changed || !slices.Equal(aa.entries, ringOf(a).entries) {
			t.Fatal("not idempotent")
		}
		// Any delivery order of single entries gives the same ring.
		all := slices.Concat(a, b, c)
		rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
		one := &ring{ID: "x", Size: 256}
		for _, e := range all {
			one.merge([]entry{e})
		}
		if !slices.Equal(one.entries, ringOf(a, b, c).entries) {
			t.Fatal("order of delivery changed the result")
		}
	}
}

func TestMergeReportsConflict(t *testing.T) {
	r := ringOf([]entry{{Start: 0, End: 10, Owner: "a", Version: 2}})
	_, cs := r.merge([]entry{{Start: 0, End: 10, Owner: "b", Version: 2}})
	if len(cs) != 1 || !strings.Contains(cs[0].String(), `"a"`) {
		t.Fatalf("conflicts %v", cs)
	}
	if _, cs := r.merge([]entry{{Start: 0, End: 10, Owner: "c", Version: 3}}); len(cs) != 0 {
		t.Fatalf("higher version is no conflict: %v", cs)
	}
}

func TestSpansExplicitEnd(t *testing.T) {
	// Key 0 shrank to [0,8) but key 8 has not arrived: [8,16) is unknown, not a's.
	r := ringOf([]entry{{Start: 0, End: 8, Owner: "a", Version: 2}, {Start: 16, End: 32, Owner: "c", Version: 1}})
	r.Size = 32
	got := r.spans()
	want := []span{{0, 8, "a"}, {16, 32, "c"}}
	if !slices.Equal(got, want) {
		t.Fatalf("spans %v, want %v", got, want)
	}
	// A stale long key is cut at the next key.
	r.merge([]entry{{Start: 4, End: 8, Owner: "b", Version: 1}})
	if got := r.spans(); !slices.Equal(got, []span{{0, 4, "a"}, {4, 8, "b"}, {16, 32, "c"}}) {
		t.Fatalf("spans %v", got)
	}
}

func TestSeededRing(t *testing.T) {
	r := newSeededRing("10.0.0.0/24", 256, []string{"c", "a", "b"})
	if !slices.Equal(r.Seeds, []string{"a", "b", "c"}) {
		t.Fatalf("seeds %v", r.Seeds)
	}
	if got := r.spans(); !slices.Equal(got, []span{{0, 85, "a"}, {85, 170, "b"}, {170, 256, "c"}}) {
		t.Fatalf("split %v", got)
	}
	if r.entries[0].Free != 84 || r.entries[2].Free != 85 {
		t.Fatalf("free counts exclude the reserved first and last address: %v", r.entries)
	}
	if err := r.validate(); err != nil {
		t.Fatal(err)
	}
	if newSeededRing("10.0.0.0/24", 256, []string{"a", "b", "c"}).ID != r.ID {
		t.Fatal("ring ID depends on seed order")
	}
	if newSeededRing("10.0.1.0/24", 256, []string{"a", "b", "c"}).ID == r.ID {
		t.Fatal("ring ID ignores the range")
	}
}

func TestOwnerTableAndCIDRCover(t *testing.T) {
	p := netip.MustParsePrefix("10.32.0.0/12")
	tb := newOwnerTable(p, []span{{0, 1 << 19, "a"}, {1 << 19, 1<<19 + 3, "b"}, {1 << 20, 1 << 20, "x"}})
	for _, c := range []struct {
		addr  string
		owner string
		ok    bool
	}{
		{"10.32.0.0", "a", true}, {"10.39.255.255", "a", true}, {"10.40.0.2", "b", true},
		{"10.40.0.3", "", false}, {"10.48.0.0", "", false}, {"10.31.255.255", "", false},
	} {
		o, ok := tb.lookup(func() uint64 { off, _ := offsetOf(p, netip.MustParseAddr(c.addr)); return off }())
		if _, in := offsetOf(p, netip.MustParseAddr(c.addr)); !in {
			ok, o = false, ""
		}
		if o != c.owner || ok != c.ok {
			t.Errorf("%s: %q %v, want %q %v", c.addr, o, ok, c.owner, c.ok)
		}
	}
	got := cidrCover(nil, p, 1<<19, 1<<19+3)
	if want := []netip.Prefix{netip.MustParsePrefix("10.40.0.0/31"), netip.MustParsePrefix("10.40.0.2/32")}; !slices.Equal(got, want) {
		t.Fatalf("cover %v, want %v", got, want)
	}
	if got := cidrCover(nil, p, 0, 1<<20); len(got) != 1 || got[0] != p {
		t.Fatalf("cover of everything %v", got)
	}
	v6 := netip.MustParsePrefix("fd00::/96")
	if a := addrAt(v6, 5); a != netip.MustParseAddr("fd00::5") {
		t.Fatalf("v6 addrAt %v", a)
	}
	if off, ok := offsetOf(v6, netip.MustParseAddr("fd00::1:2")); !ok || off != 0x10002 {
		t.Fatalf("v6 offset %d %v", off, ok)
	}
}

func TestOwnerDoesNotAllocate(t *testing.T) {
	n := newFakeNet(t, 1)
	p := n.add("a", simRange, Init{Mode: ModeSeed, Seeds: []string{"a", "b"}}, "")
	addr := netip.MustParseAddr("10.32.200.7")
	if o, ok := p.Owner(addr); !ok || o != "b" {
		t.Fatalf("owner %q %v", o, ok)
	}
	if allocs := testing.AllocsPerRun(1000, func() { p.Owner(addr) }); allocs != 0 {
		t.Fatalf("Owner allocates %v per call", allocs)
	}
}

func BenchmarkOwner(b *testing.B) {
	n := newFakeNet(b, 1)
	p := n.add("a", netip.MustParsePrefix("10.32.0.0/12"), Init{Mode: ModeSeed, Seeds: names(1000)}, "")
	addr := netip.MustParseAddr("10.40.12.34")
	b.ReportAllocs()
	for b.Loop() {
		p.Owner(addr)
	}
}

func TestParseInit(t *testing.T) {
	good := map[string]Init{
		"":              {Mode: ModeConsensus, Quorum: 3},
		"consensus=5":   {Mode: ModeConsensus, Quorum: 5},
		"observer":      {Mode: ModeObserver},
		"seed=b, a,c":   {Mode: ModeSeed, Seeds: []string{"a", "b", "c"}},
		" seed=host-1 ": {Mode: ModeSeed, Seeds: []string{"host-1"}},
	}
	for in, want := range good {
		got, err := ParseInit(in, 3)
		if err != nil || got.Mode != want.Mode || got.Quorum != want.Quorum || !slices.Equal(got.Seeds, want.Seeds) {
			t.Errorf("ParseInit(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	bad := map[string]string{
		"consensus":   "want consensus=N",
		"consensus=0": "whole number >= 1",
		"consensus=x": "whole number >= 1",
		"seed=":       "want seed=NAME",
		"seed=a,,b":   "empty peer name",
		"seed=a,a":    "named twice",
		"observer=1":  "takes no value",
		"leader=a":    "unknown mode",
	}
	for in, want := range bad {
		if _, err := ParseInit(in, 3); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseInit(%q) error %v, want it to say %q", in, err, want)
		}
	}
	if _, err := ParseInit("", 0); err == nil {
		t.Error("default consensus of 0 peers accepted")
	}
}

func TestNewValidates(t *testing.T) {
	n := newFakeNet(t, 1)
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{Name: "a", Range: netip.MustParsePrefix("10.32.0.1/12"), Init: Init{Mode: ModeObserver}, Transport: endpoint{n, "a"}}, "host bits set"},
		{Config{Name: "a", Range: netip.MustParsePrefix("10.32.0.0/31"), Init: Init{Mode: ModeObserver}, Transport: endpoint{n, "a"}}, "host bits"},
		{Config{Name: "", Range: simRange, Init: Init{Mode: ModeObserver}, Transport: endpoint{n, "a"}}, "empty peer name"},
		{Config{Name: "a", Range: simRange, Init: Init{Mode: "x"}, Transport: endpoint{n, "a"}}, "unknown init mode"},
		{Config{Name: "a", Range: simRange, Init: Init{Mode: ModeObserver}}, "no transport"},
		{Config{Name: "a", Range: simRange, Init: Init{Mode: ModeObserver}, Transport: endpoint{n, "a"}}, "no signing key"},
	} {
		if c.want != "no signing key" {
			c.cfg.Signer = testSigner("a")
		}
		if _, err := New(c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v) = %v, want %q", c.cfg, err, c.want)
		}
	}
}

func TestErrorsAreDistinct(t *testing.T) {
	all := []error{ErrNotReady, ErrExhausted, ErrNotFound, ErrPeerAlive, ErrConflict, ErrRingMismatch}
	for i, a := range all {
		for j, b := range all {
			if i != j && errors.Is(a, b) {
				t.Fatalf("%v is %v", a, b)
			}
		}
	}
}

// BenchmarkMerge1000 is the cost of merging a peer's full 1000-entry ring
// (push/pull) into an identical one, and reports the state size.
func BenchmarkMerge1000(b *testing.B) {
	n := newFakeNet(b, 1)
	big := netip.MustParsePrefix("10.32.0.0/12")
	a := n.add("p000", big, Init{Mode: ModeSeed, Seeds: names(1000)}, "")
	c := n.add("p001", big, Init{Mode: ModeSeed, Seeds: names(1000)}, "")
	state := c.LocalState()
	b.ReportAllocs()
	for b.Loop() {
		if err := a.MergeState(state); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(state)), "state-bytes")
}

func BenchmarkAllocateRelease(b *testing.B) {
	n := newFakeNet(b, 1)
	p := n.add("a", netip.MustParsePrefix("10.32.0.0/12"), Init{Mode: ModeSeed, Seeds: []string{"a"}}, "")
	ctx := context.Background()
	for i := range 1000 {
		p.Allocate(ctx, fmt.Sprint("warm", i), "eth0", "")
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Allocate(ctx, "c", "eth0", ""); err != nil {
			b.Fatal(err)
		}
		if err := p.Release("c", ""); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAllocatePersisted includes the atomic state write (fsync) that
// every allocation makes before it returns.
func BenchmarkAllocatePersisted(b *testing.B) {
	n := newFakeNet(b, 1)
	p := n.add("p000", netip.MustParsePrefix("10.32.0.0/12"), Init{Mode: ModeSeed, Seeds: names(100)}, b.TempDir())
	ctx := context.Background()
	i := 0
	for b.Loop() {
		i++
		if _, err := p.Allocate(ctx, fmt.Sprint("c", i), "eth0", ""); err != nil {
			b.Fatal(err)
		}
	}
}
