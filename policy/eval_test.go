package policy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

// The evaluator interprets a compiled program the way nftables runs it,
// over the set contents a (fake) kernel holds, so the compiler's output can
// be checked against Kubernetes' semantics (ref_test.go) without a kernel.

type ctState uint8

const (
	ctNew ctState = iota
	ctEstablished
	ctInvalid
)

type packet struct {
	src, dst netip.Addr
	proto    uint8
	dport    uint16
	state    ctState
}

func (p packet) String() string {
	return fmt.Sprintf("%v->%v proto %d dport %d state %d", p.src, p.dst, p.proto, p.dport, p.state)
}

// fakeKernel is a backend that keeps what nftables would hold, and fails on
// what nftables would refuse (a delete of a missing element, a set the
// program does not have).
type fakeKernel struct {
	t            testing.TB
	prog         *program
	sets         map[string]map[string]bool
	fulls, diffs int
	elemOps      int // set elements sent by the last write
	ruleOps      int // rules sent by the last write
	// chains as the kernel has them: the program's, in the order the
	// writes left them (jumps are inserted at the head).
	chains    map[string][]rule
	fail      error
	failOnce  bool                  // fail is for the next write only
	bridgeErr error                 // what ensureBridgeNF says
	flushes   []map[netip.Addr]bool // the addresses of each flushNeighbours
}

func newFakeKernel(t testing.TB) *fakeKernel { return &fakeKernel{t: t} }

// failing returns the error to fail a write with, if any.
func (k *fakeKernel) failing() error {
	err := k.fail
	if k.failOnce {
		k.fail = nil
	}
	return err
}

func (k *fakeKernel) writeFull(p *program, contents map[string]map[string]int) error {
	if err := k.failing(); err != nil {
		return err
	}
	k.prog, k.fulls, k.elemOps = p, k.fulls+1, 0
	k.chains = map[string][]rule{chainForward: p.forward, chainIngress: p.ingress, chainEgress: p.egress, chainEgressOK: p.egressOK}
	for n, rs := range p.chains {
		k.chains[n] = rs
	}
	k.ruleOps = p.ruleCount()
	k.sets = map[string]map[string]bool{}
	for name := range p.sets {
		k.sets[name] = map[string]bool{}
		for e := range contents[name] {
			k.sets[name][e] = true
			k.elemOps++
		}
	}
	return nil
}

func (k *fakeKernel) writeChange(p *program, contents map[string]map[string]int, c change) error {
	if err := k.failing(); err != nil {
		return err
	}
	if k.prog == nil {
		k.t.Errorf("change to a table never written")
		return errors.New("no table")
	}
	k.diffs++
	k.elemOps = 0
	k.ruleOps = c.rulesWritten(p)
	k.changeChains(p, c)
	for _, n := range c.newSets {
		if k.sets[n] != nil {
			k.t.Errorf("set %s made twice", n)
		}
		k.sets[n] = map[string]bool{}
		for e := range contents[n] {
			k.sets[n][e] = true
			k.elemOps++
		}
	}
	for set, keys := range c.diff.del {
		for _, e := range keys {
			if !k.sets[set][e] {
				k.t.Errorf("delete of missing element %x from %s", e, set)
			}
			delete(k.sets[set], e)
			k.elemOps++
		}
	}
	for set, keys := range c.diff.add {
		if k.sets[set] == nil {
			k.t.Errorf("add to missing set %s", set)
			continue
		}
		for _, e := range keys {
			k.sets[set][e] = true
			k.elemOps++
		}
	}
	for _, n := range c.oldSets {
		if k.sets[n] == nil {
			k.t.Errorf("delete of missing set %s", n)
		}
		delete(k.sets, n)
	}
	k.prog = p
	for n := range p.sets {
		if k.sets[n] == nil {
			k.t.Errorf("program's set %s is not in the kernel", n)
		}
	}
	if len(k.sets) != len(p.sets) {
		k.t.Errorf("kernel has %d sets, the program %d", len(k.sets), len(p.sets))
	}
	return nil
}

// changeChains does to the chains what the kernel does with c, failing on
// what it would refuse, and checks that the result is p's chains.
func (k *fakeKernel) changeChains(p *program, c change) {
	for _, n := range c.newChains {
		if _, ok := k.chains[n]; ok {
			k.t.Errorf("chain %s made twice", n)
		}
		k.chains[n] = p.chains[n]
	}
	for _, n := range c.modChains {
		if _, ok := k.chains[n]; !ok {
			k.t.Errorf("refill of missing chain %s", n)
		}
		k.chains[n] = p.chains[n]
	}
	for _, j := range c.delJumps {
		rs := k.chains[j.chain]
		i := slices.IndexFunc(rs, func(r rule) bool { return r.verdict == vJump && r.tag == j.r.tag })
		if i < 0 {
			k.t.Errorf("delete of missing jump to %s from %s", j.r.tag, j.chain)
			continue
		}
		k.chains[j.chain] = slices.Delete(slices.Clone(rs), i, i+1)
	}
	for _, j := range c.addJumps {
		if _, ok := k.chains[j.r.jump]; !ok {
			k.t.Errorf("jump to missing chain %s", j.r.jump)
		}
		k.chains[j.chain] = slices.Insert(slices.Clone(k.chains[j.chain]), 0, j.r)
	}
	for _, n := range c.oldChains {
		for _, from := range []string{chainIngress, chainEgress} {
			if slices.ContainsFunc(k.chains[from], func(r rule) bool { return r.jump == n }) {
				k.t.Errorf("delete of chain %s that %s still jumps to", n, from)
			}
		}
		delete(k.chains, n)
	}
	// The result must be the program: main chains in any order of rules
	// (see writeChange), the others exactly.
	key := func(r rule) string { return fmt.Sprintf("%+v", r) }
	for n, want := range map[string][]rule{chainForward: p.forward, chainIngress: p.ingress, chainEgress: p.egress, chainEgressOK: p.egressOK} {
		a, b := slices.Sorted(slices.Values(mapSlice(k.chains[n], key))), slices.Sorted(slices.Values(mapSlice(want, key)))
		if !slices.Equal(a, b) {
			k.t.Errorf("chain %s after the change:\n%v\nwant (in any order)\n%v", n, a, b)
		}
	}
	for n, want := range p.chains {
		if !reflect.DeepEqual(k.chains[n], want) {
			k.t.Errorf("chain %s after the change: %+v, want %+v", n, k.chains[n], want)
		}
	}
	if len(k.chains) != len(p.chains)+4 {
		k.t.Errorf("kernel has %d chains, the program %d", len(k.chains), len(p.chains)+4)
	}
}

func mapSlice[T, U any](in []T, f func(T) U) []U {
	out := make([]U, 0, len(in))
	for _, v := range in {
		out = append(out, f(v))
	}
	return out
}

func (k *fakeKernel) readDrops() (uint64, uint64, error)  { return 0, 0, nil }
func (k *fakeKernel) forgetFlows(flowFilter) (int, error) { return 0, nil }
func (k *fakeKernel) forgetUnreplied(netip.Addr) error    { return nil }
func (k *fakeKernel) flushNeighbours(a map[netip.Addr]bool) (int, error) {
	k.flushes = append(k.flushes, maps.Clone(a))
	return len(a), nil
}
func (k *fakeKernel) remove() error         { k.prog, k.sets, k.chains = nil, nil, nil; return nil }
func (k *fakeKernel) ensureBridgeNF() error { return k.bridgeErr }

func (k *fakeKernel) snapshot() map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for n, s := range k.sets {
		out[n] = maps.Clone(s)
	}
	return out
}

// allowed runs pk through the forward chain.
func (k *fakeKernel) allowed(pk packet) bool {
	if k.prog == nil {
		return true // no table: nothing filters
	}
	v, _ := k.runChain(chainForward, pk)
	return v != vDrop
}

// runChain returns the verdict that ends chain, and false when it ran off
// the end (the base chain's policy: accept; a jumped-to chain: return).
// A goto runs its chain in place of this one.
func (k *fakeKernel) runChain(chain string, pk packet) (verdict, bool) {
	rules, ok := k.chains[chain]
	if !ok {
		k.t.Fatalf("jump to unknown chain %q", chain)
	}
	for _, r := range rules {
		if !k.matchAll(r.conds, pk) {
			continue
		}
		switch r.verdict {
		case vContinue:
			continue
		case vAccept, vDrop:
			return r.verdict, true
		case vReturn:
			return vReturn, true
		case vGoto:
			return k.runChain(r.jump, pk)
		case vJump:
			if v, ok := k.runChain(r.jump, pk); ok && v != vReturn {
				return v, true
			}
		}
	}
	return vAccept, false
}

func (k *fakeKernel) matchAll(cs []cond, pk packet) bool {
	for _, c := range cs {
		if !k.match(c, pk) {
			return false
		}
	}
	return true
}

func hasPorts(proto uint8) bool { return proto == protoTCP || proto == protoUDP || proto == protoSCTP }

func (k *fakeKernel) inSet(set string, key []byte) bool {
	d := k.prog.sets[set]
	if d == nil {
		k.t.Fatalf("rule refers to missing set %s", set)
	}
	switch d.typ {
	case setCIDR:
		v := binary.BigEndian.Uint32(key)
		return inSpans(d.spans, v)
	case setPorts:
		v := uint32(binary.BigEndian.Uint16(key))
		return inSpans(d.spans, v)
	}
	return k.sets[set][string(key)]
}

func inSpans(spans []span, v uint32) bool {
	for _, s := range spans {
		if v >= s.lo && v <= s.hi {
			return true
		}
	}
	return false
}

func (k *fakeKernel) match(c cond, pk packet) bool {
	switch c.op {
	case condIPv4:
		return pk.src.Is4()
	case condEstRel:
		return pk.state == ctEstablished
	case condInvalid:
		return pk.state == ctInvalid
	case condSaddr:
		return k.inSet(c.set, []byte(addrKey(pk.src)))
	case condDaddr:
		return k.inSet(c.set, []byte(addrKey(pk.dst)))
	case condProto:
		return pk.proto == c.proto
	case condDport:
		if !hasPorts(pk.proto) {
			k.t.Fatalf("th dport read without a port protocol check: %v", pk)
		}
		return pk.dport == c.port
	case condDportSet:
		if !hasPorts(pk.proto) {
			k.t.Fatalf("th dport read without a port protocol check: %v", pk)
		}
		return k.inSet(c.set, binary.BigEndian.AppendUint16(nil, pk.dport))
	case condNamedPort:
		if !hasPorts(pk.proto) {
			k.t.Fatalf("th dport read without a port protocol check: %v", pk)
		}
		return k.inSet(c.set, []byte(namedKey(pk.dst, pk.proto, pk.dport)))
	}
	k.t.Fatalf("unknown condition %d", c.op)
	return false
}

// FlushNeighbours hands the kernel each address once, IPv4-mapped ones as
// IPv4, and does not go to the kernel for no address.
func TestFlushNeighboursAddrs(t *testing.T) {
	fk := newFakeKernel(t)
	e := newEngine(Config{}, slog.New(slog.DiscardHandler), fk)
	if n, err := e.FlushNeighbours(); n != 0 || err != nil || len(fk.flushes) != 0 {
		t.Fatalf("FlushNeighbours() = %d, %v; kernel calls %v", n, err, fk.flushes)
	}
	n, err := e.FlushNeighbours(netip.MustParseAddr("10.32.0.9"), netip.MustParseAddr("::ffff:10.32.0.9"), netip.MustParseAddr("fd00::9"))
	if err != nil || n != 2 {
		t.Fatalf("FlushNeighbours = %d, %v; want 2, nil", n, err)
	}
	want := map[netip.Addr]bool{netip.MustParseAddr("10.32.0.9"): true, netip.MustParseAddr("fd00::9"): true}
	if len(fk.flushes) != 1 || !maps.Equal(fk.flushes[0], want) {
		t.Fatalf("kernel got %v, want [%v]", fk.flushes, want)
	}
}
