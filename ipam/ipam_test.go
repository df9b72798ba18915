package ipam

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func seedAB() Init { return Init{Mode: ModeSeed, Seeds: []string{"a", "b"}} }

func TestAllocateReleaseClaimGC(t *testing.T) {
	n := newFakeNet(t, 1)
	p := n.add("a", simRange, seedAB(), "")
	ctx := context.Background()
	a1, err := p.Allocate(ctx, "c1", "eth0", "/proc/1/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if a1 != netip.MustParseAddr("10.32.0.1") {
		t.Fatalf("first address %s, want 10.32.0.1 (network address reserved)", a1)
	}
	if again, _ := p.Allocate(ctx, "c1", "eth0", ""); again != a1 {
		t.Fatalf("not idempotent: %s then %s", a1, again)
	}
	a2, _ := p.Allocate(ctx, "c1", "eth1", "")
	host, _ := p.Allocate(ctx, HostContainerID, "bridge", "")
	if a2 == a1 || host == a2 {
		t.Fatal("duplicate address")
	}
	if err := p.Claim(ctx, "c2", "eth0", "", a1); !errors.Is(err, ErrConflict) {
		t.Fatalf("claim of a taken address: %v", err)
	}
	if err := p.Claim(ctx, "c2", "eth0", "", netip.MustParseAddr("10.32.200.1")); !errors.Is(err, ErrConflict) {
		t.Fatalf("claim in b's range: %v", err)
	}
	claimed := netip.MustParseAddr("10.32.1.9")
	if err := p.Claim(ctx, "c2", "eth0", "", claimed); err != nil {
		t.Fatal(err)
	}
	if err := p.Claim(ctx, "c2", "eth0", "", claimed); err != nil {
		t.Fatalf("claim not idempotent: %v", err)
	}
	if err := p.Release("c1", ""); err != nil {
		t.Fatal(err)
	}
	if err := p.Release("c1", ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second release: %v", err)
	}
	p.Allocate(ctx, "c3", "eth0", "")
	gone, err := p.GC([]Attachment{{"c2", "eth0"}})
	if err != nil || !slices.Equal(gone, []Attachment{{"c3", "eth0"}}) {
		t.Fatalf("GC released %v, %v", gone, err)
	}
	var left []string
	for _, a := range p.Allocations() {
		left = append(left, a.ContainerID)
	}
	if !slices.Equal(left, []string{HostContainerID, "c2"}) {
		t.Fatalf("after GC: %v", left)
	}
	st := p.Status()
	if st.State != "ready" || !st.Entries[0].Local || st.Entries[0].Name != "a" || st.Entries[0].InUse != 2 ||
		st.Entries[0].Share != 0.5 || st.Entries[1].Name != "b" || st.Entries[1].Reachable {
		t.Fatalf("status %+v", st)
	}
}

func TestExhausted(t *testing.T) {
	n := newFakeNet(t, 1)
	p := n.add("a", netip.MustParsePrefix("10.9.0.0/30"), Init{Mode: ModeSeed, Seeds: []string{"a"}}, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, id := range []string{"x", "y"} {
		if _, err := p.Allocate(ctx, id, "eth0", ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.Allocate(ctx, "z", "eth0", ""); !errors.Is(err, ErrExhausted) {
		t.Fatalf("allocate in a full mesh: %v", err)
	}
	if st := p.Status().State; st != "exhausted" {
		t.Fatalf("state %q", st)
	}
}

func TestPersistenceRoundTrip(t *testing.T) {
	dir := t.TempDir()
	n := newFakeNet(t, 1)
	p := n.add("a", simRange, seedAB(), dir)
	ctx := context.Background()
	var want []netip.Addr
	for _, id := range []string{"c1", "c2", HostContainerID} {
		a, err := p.Allocate(ctx, id, "eth0", "")
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, a)
	}
	p.mu.Lock()
	ringBefore := p.ring.clone()
	p.mu.Unlock()

	// Relaunch (kill -9 style: nothing flushed on exit).
	n2 := newFakeNet(t, 2)
	q := n2.add("a", simRange, seedAB(), dir)
	if got := q.Allocations(); len(got) != 3 || !slices.Equal([]netip.Addr{got[0].Addr, got[1].Addr, got[2].Addr}, want) {
		t.Fatalf("restored %v, want %v", got, want)
	}
	if a, _ := q.Allocate(ctx, "c2", "eth0", ""); a != want[1] {
		t.Fatalf("c2 got %s after restart, had %s", a, want[1])
	}
	if next, _ := q.Allocate(ctx, "c4", "eth0", ""); slices.Contains(want, next) {
		t.Fatalf("restart handed out %s again", next)
	}
	q.mu.Lock()
	same := slices.Equal(q.ring.entries[1:], ringBefore.entries[1:]) && q.ring.entries[0].Version > ringBefore.entries[0].Version
	q.mu.Unlock()
	if !same {
		t.Fatal("ring not restored")
	}

	if _, err := New(Config{Name: "b", Range: simRange, Init: seedAB(), StateDir: dir, Transport: endpoint{n, "b"}, Signer: testSigner("b")}); err == nil ||
		!strings.Contains(err.Error(), `belongs to peer "a"`) {
		t.Fatalf("state of another peer: %v", err)
	}
	if _, err := New(Config{Name: "a", Range: netip.MustParsePrefix("10.33.0.0/16"), Init: seedAB(), StateDir: dir, Transport: endpoint{n, "a"}, Signer: testSigner("a")}); err == nil ||
		!strings.Contains(err.Error(), "--ipalloc-range") {
		t.Fatalf("state of another range: %v", err)
	}
}

func TestCorruptStateStopsLaunch(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, StateFileName)
	junk := []byte(`{"format":1,"name":"a","range":"10.32.0.0/16","allocations":[{"container_id":"c","addr":"10.99.0.1"}]}`)
	for _, content := range [][]byte{[]byte("{not json"), junk, nil} {
		if err := os.WriteFile(file, content, 0o600); err != nil {
			t.Fatal(err)
		}
		n := newFakeNet(t, 1)
		_, err := New(Config{Name: "a", Range: simRange, Init: seedAB(), StateDir: dir, Transport: endpoint{n, "a"}, Signer: testSigner("a")})
		if err == nil || !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), "corrupt") {
			t.Fatalf("corrupt state %q: %v", content, err)
		}
		if got, _ := os.ReadFile(file); string(got) != string(content) {
			t.Fatal("corrupt state file was modified")
		}
	}
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(file, 0o700); err != nil { // unreadable as a file
		t.Fatal(err)
	}
	n := newFakeNet(t, 1)
	if _, err := New(Config{Name: "a", Range: simRange, Init: seedAB(), StateDir: dir, Transport: endpoint{n, "a"}, Signer: testSigner("a")}); err == nil ||
		!strings.Contains(err.Error(), file) {
		t.Fatalf("unreadable state: %v", err)
	}
}

type fullDisk struct{ *os.File }

func (f fullDisk) Write(b []byte) (int, error) {
	n, _ := f.File.Write(b[:len(b)/2])
	return n, syscall.ENOSPC
}

func TestFullDiskKeepsOldState(t *testing.T) {
	dir := t.TempDir()
	n := newFakeNet(t, 1)
	p := n.add("a", simRange, seedAB(), dir)
	ctx := context.Background()
	if _, err := p.Allocate(ctx, "c1", "eth0", ""); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, StateFileName)
	before, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	open := p.store.openTemp
	p.store.openTemp = func(dir string) (tempFile, error) {
		f, err := open(dir)
		if err != nil {
			return nil, err
		}
		return fullDisk{f.(*os.File)}, nil
	}
	if _, err := p.Allocate(ctx, "c2", "eth0", ""); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("allocate on a full disk: %v", err)
	}
	if after, _ := os.ReadFile(file); string(after) != string(before) {
		t.Fatal("failed write changed the state file")
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() != StateFileName && e.Name() != IncarnationFileName {
			t.Fatalf("temp files left behind: %v", ents)
		}
	}
	if as := p.Allocations(); len(as) != 1 {
		t.Fatalf("failed allocation kept in memory: %v", as)
	}
	p.store.openTemp = open
	if _, err := p.Allocate(ctx, "c2", "eth0", ""); err != nil {
		t.Fatalf("after the disk has room again: %v", err)
	}
}

// rmpeer while a peer was down: on relaunch it accepts the takeover and
// reports the allocations it can no longer vouch for.
func TestRelaunchAfterRmpeer(t *testing.T) {
	dirA := t.TempDir()
	n := newFakeNet(t, 1)
	a := n.add("a", simRange, seedAB(), dirA)
	b := n.add("b", simRange, seedAB(), "")
	ctx := context.Background()
	if _, err := a.Allocate(ctx, "c1", "eth0", ""); err != nil {
		t.Fatal(err)
	}
	n.pump()
	n.mu.Lock()
	n.down["a"] = true
	n.mu.Unlock()
	if got, err := b.RemovePeer("a"); err != nil || got != 1<<15 {
		t.Fatalf("rmpeer: %d %v", got, err)
	}
	n2 := newFakeNet(t, 2)
	n2.pin("b", testSigner("b").Public())
	a2 := n2.add("a", simRange, seedAB(), dirA)
	err := a2.MergeState(b.LocalState())
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "rmpeer") {
		t.Fatalf("merge after rmpeer: %v", err)
	}
	if o, _ := a2.Owner(netip.MustParseAddr("10.32.0.1")); o != "b" {
		t.Fatalf("takeover not accepted: owner %q", o)
	}
	if len(a2.OwnedPrefixes()) != 0 {
		t.Fatalf("a still owns %v", a2.OwnedPrefixes())
	}
}

func TestHandOver(t *testing.T) {
	dir := t.TempDir()
	n := newFakeNet(t, 1)
	a := n.add("a", simRange, seedAB(), dir)
	b := n.add("b", simRange, seedAB(), "")
	if _, err := a.Allocate(context.Background(), "c1", "eth0", ""); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.HandOver(context.Background()) }()
	var err error
	for waiting := true; waiting; {
		select {
		case err = <-done:
			waiting = false
		default:
			n.pump()
		}
	}
	n.pump()
	if err != nil {
		t.Fatal(err)
	}
	if o, _ := b.Owner(netip.MustParseAddr("10.32.0.1")); o != "b" {
		t.Fatalf("after handover owner %q", o)
	}
	if pf := b.OwnedPrefixes(); len(pf) != 1 || pf[0] != simRange {
		t.Fatalf("b owns %v", pf)
	}
	if _, err := os.Stat(filepath.Join(dir, StateFileName)); !os.IsNotExist(err) {
		t.Fatalf("state not deleted: %v", err)
	}
	if _, err := a.Allocate(context.Background(), "c2", "eth0", ""); !errors.Is(err, ErrNotReady) {
		t.Fatalf("allocate after handover: %v", err)
	}
}

func TestChangesSignalled(t *testing.T) {
	n := newFakeNet(t, 1)
	n.add("a", simRange, Init{Mode: ModeSeed, Seeds: []string{"a"}}, "")
	o := n.add("o", simRange, Init{Mode: ModeObserver}, "")
	select {
	case <-o.Changes():
		t.Fatal("observer without a ring signalled a change")
	default:
	}
	if _, err := n.allocatePumping(t, o, "c"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-o.Changes():
	default:
		t.Fatal("no change signalled after a donation")
	}
}

// OwnerPrefixes gives every owner what Status gives it as Ranges, with the
// generation of the snapshot, which moves when ownership does.
func TestOwnerPrefixesMatchStatus(t *testing.T) {
	n := newFakeNet(t, 1)
	a := n.add("a", simRange, seedAB(), "")
	n.add("b", simRange, seedAB(), "")
	gen, got := a.OwnerPrefixes()
	if gen == 0 || gen != a.OwnerGen() || len(got) != 2 {
		t.Fatalf("generation %d (OwnerGen %d), owners %v", gen, a.OwnerGen(), got)
	}
	for _, e := range a.Status().Entries {
		if !slices.Equal(got[e.Name], e.Ranges) {
			t.Fatalf("%s: OwnerPrefixes %v, Status %v", e.Name, got[e.Name], e.Ranges)
		}
	}
	n.mu.Lock()
	n.down["b"] = true
	n.mu.Unlock()
	if _, err := a.RemovePeer("b"); err != nil {
		t.Fatal(err)
	}
	gen2, got2 := a.OwnerPrefixes()
	if gen2 == gen || len(got2) != 1 || !slices.Equal(got2["a"], []netip.Prefix{simRange}) {
		t.Fatalf("after rmpeer b: generation %d (was %d), owners %v", gen2, gen, got2)
	}
}
