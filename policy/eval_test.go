package policy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
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
	fail         error
	failOnce     bool                  // fail is for the next write only
	bridgeErr    error                 // what ensureBridgeNF says
	flushes      []map[netip.Addr]bool // the addresses of each flushNeighbours
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
	if !c.rules && (!reflect.DeepEqual(p.ingress, k.prog.ingress) || !reflect.DeepEqual(p.egress, k.prog.egress)) {
		k.t.Errorf("rules changed without a rewrite of the chains")
	}
	k.diffs++
	k.elemOps = 0
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

func (k *fakeKernel) readDrops() (uint64, uint64, error)  { return 0, 0, nil }
func (k *fakeKernel) forgetFlows(flowFilter) (int, error) { return 0, nil }
func (k *fakeKernel) flushNeighbours(a map[netip.Addr]bool) (int, error) {
	k.flushes = append(k.flushes, maps.Clone(a))
	return len(a), nil
}
func (k *fakeKernel) remove() error         { k.prog, k.sets = nil, nil; return nil }
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
	v, _ := k.runChain(k.prog.forward, pk)
	return v != vDrop
}

// runChain returns the verdict that ends the chain, and false when it ran
// off the end (the base chain's policy: accept; a jumped-to chain: return).
func (k *fakeKernel) runChain(rules []rule, pk packet) (verdict, bool) {
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
		case vJump:
			var sub []rule
			switch r.jump {
			case chainIngress:
				sub = k.prog.ingress
			case chainEgress:
				sub = k.prog.egress
			default:
				k.t.Fatalf("jump to unknown chain %q", r.jump)
			}
			if v, ok := k.runChain(sub, pk); ok && v != vReturn {
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
