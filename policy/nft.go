package policy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netnstest"
)

// nft.go writes a program to the kernel.

// backend is where programs go: the kernel (nftBackend), or a fake in
// tests that keeps the sets as the kernel would.
type backend interface {
	writeFull(p *program, contents map[string]map[string]int) error
	writeChange(p *program, contents map[string]map[string]int, c change) error
	readDrops() (ingress, egress uint64, err error)
	remove() error
	ensureBridgeNF() error
	forgetFlows(f flowFilter) (int, error)
	forgetUnreplied(addr netip.Addr) error
	flushNeighbours(addrs map[netip.Addr]bool) (int, error)
}

// nftBackend programs nftables in the namespace of cfg.
type nftBackend struct{ cfg Config }

func (b nftBackend) writeFull(p *program, contents map[string]map[string]int) error {
	return writeFull(b.cfg, p, contents)
}
func (b nftBackend) writeChange(p *program, contents map[string]map[string]int, c change) error {
	return writeChange(b.cfg, p, contents, c)
}
func (b nftBackend) readDrops() (uint64, uint64, error)    { return readDrops(b.cfg) }
func (b nftBackend) remove() error                         { return removeTable(b.cfg) }
func (b nftBackend) forgetFlows(f flowFilter) (int, error) { return forgetFlows(b.cfg, f) }
func (b nftBackend) forgetUnreplied(a netip.Addr) error    { return forgetUnreplied(b.cfg, a) }
func (b nftBackend) flushNeighbours(a map[netip.Addr]bool) (int, error) {
	return flushNeighbours(b.cfg, a)
}
func (b nftBackend) ensureBridgeNF() error { return ensureBridgeNF(b.cfg.NetNS) }

// sockBuf is the netlink socket buffer size forced on the connection: a
// whole table with thousands of set elements goes in one sendmsg, which
// the default buffer (~200 KiB) would refuse.
const sockBuf = 64 << 20

func bigBuffers(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for _, opt := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, sockBuf); e != nil {
				serr = e
			}
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		// Without CAP_NET_ADMIN: fall back to the capped sizes.
		_ = c.SetWriteBuffer(sockBuf)
		_ = c.SetReadBuffer(sockBuf)
	}
	return nil
}

// openConn returns an nftables connection to the namespace of cfg.
func openConn(cfg Config) (*nftables.Conn, func(), error) {
	opts := []nftables.ConnOption{nftables.WithSockOptions(bigBuffers)}
	done := func() {}
	if cfg.NetNS != "" {
		var h netns.NsHandle
		var err error
		if strings.Contains(cfg.NetNS, "/") {
			h, err = netns.GetFromPath(cfg.NetNS)
		} else {
			h, err = netns.GetFromName(cfg.NetNS)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("policy: network namespace %s: %w", cfg.NetNS, err)
		}
		opts = append(opts, nftables.WithNetNSFd(int(h)))
		done = func() { _ = h.Close() }
	}
	c, err := nftables.New(opts...)
	if err != nil {
		done()
		return nil, nil, fmt.Errorf("policy: nftables: %w", err)
	}
	return c, done, nil
}

func table(cfg Config) *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: cfg.Table}
}

var namedPortType = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)

func nftSet(t *nftables.Table, d *setDef) *nftables.Set {
	s := &nftables.Set{Table: t, Name: d.name}
	switch d.typ {
	case setAddr:
		s.KeyType = nftables.TypeIPAddr
	case setCIDR:
		s.KeyType, s.Interval = nftables.TypeIPAddr, true
	case setPorts:
		s.KeyType, s.Interval = nftables.TypeInetService, true
	case setNamedPort:
		s.KeyType, s.Concatenation = namedPortType, true
	}
	return s
}

// spanElems encodes spans as interval set elements: each start, and the
// first value after each end flagged as an interval end (none when the
// span runs to the top of the key space).
func spanElems(typ setType, spans []span) []nftables.SetElement {
	var out []nftables.SetElement
	enc := func(v uint32) []byte {
		if typ == setPorts {
			return binary.BigEndian.AppendUint16(nil, uint16(v))
		}
		return binary.BigEndian.AppendUint32(nil, v)
	}
	top := uint32(0xffffffff)
	if typ == setPorts {
		top = 0xffff
	}
	for _, s := range spans {
		out = append(out, nftables.SetElement{Key: enc(s.lo)})
		if s.hi < top {
			out = append(out, nftables.SetElement{Key: enc(s.hi + 1), IntervalEnd: true})
		}
	}
	return out
}

func keyElems(keys []string) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(keys))
	for _, k := range keys {
		out = append(out, nftables.SetElement{Key: []byte(k)})
	}
	return out
}

// condExprs is the nftables form of one condition.
func condExprs(c cond) []expr.Any {
	lookup := func(set string) *expr.Lookup { return &expr.Lookup{SourceRegister: 1, SetName: set} }
	ctState := func(bits uint32, op expr.CmpOp) []expr.Any {
		return []expr.Any{
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: make([]byte, 4)},
			&expr.Cmp{Op: op, Register: 1, Data: make([]byte, 4)},
		}
	}
	dport := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
	switch c.op {
	case condIPv4:
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		}
	case condEstRel:
		return ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED, expr.CmpOpNeq)
	case condInvalid:
		return ctState(expr.CtStateBitINVALID, expr.CmpOpNeq)
	case condSaddr:
		return []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}, lookup(c.set)}
	case condDaddr:
		return []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}, lookup(c.set)}
	case condProto:
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{c.proto}},
		}
	case condDport:
		return []expr.Any{dport, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, c.port)}}
	case condDportSet:
		return []expr.Any{dport, lookup(c.set)}
	case condNamedPort:
		// ip daddr . meta l4proto . th dport: three 32-bit registers from
		// register 1 (= NFT_REG32_00) on, as nft lays out a concatenation.
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: unix.NFT_REG32_01},
			&expr.Payload{DestRegister: unix.NFT_REG32_02, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			lookup(c.set),
		}
	}
	panic(fmt.Sprintf("policy: unknown condition %d", c.op))
}

func ruleExprs(r rule) []expr.Any {
	var e []expr.Any
	for _, c := range r.conds {
		e = append(e, condExprs(c)...)
	}
	if r.log != "" {
		e = append(e,
			&expr.Limit{Type: expr.LimitTypePkts, Rate: denyLogRate, Unit: expr.LimitTimeSecond, Burst: denyLogBurst},
			&expr.Log{Level: expr.LogLevelInfo, Key: 1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_LEVEL, Data: []byte(r.log)},
		)
	}
	if r.counter != "" {
		e = append(e, &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: r.counter})
	}
	switch r.verdict {
	case vAccept:
		e = append(e, &expr.Verdict{Kind: expr.VerdictAccept})
	case vDrop:
		e = append(e, &expr.Verdict{Kind: expr.VerdictDrop})
	case vReturn:
		e = append(e, &expr.Verdict{Kind: expr.VerdictReturn})
	case vJump:
		e = append(e, &expr.Verdict{Kind: expr.VerdictJump, Chain: r.jump})
	case vGoto:
		e = append(e, &expr.Verdict{Kind: expr.VerdictGoto, Chain: r.jump})
	}
	return e
}

// setElems is the content of set n: pods' elements for a dynamic set, the
// spans of a static one.
func setElems(p *program, contents map[string]map[string]int, n string) []nftables.SetElement {
	d := p.sets[n]
	if !d.dynamic() {
		return spanElems(d.typ, d.spans)
	}
	keys := make([]string, 0, len(contents[n]))
	for k := range contents[n] {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keyElems(keys)
}

func addSets(conn *nftables.Conn, t *nftables.Table, p *program, contents map[string]map[string]int, names []string) error {
	for _, n := range names {
		if err := conn.AddSet(nftSet(t, p.sets[n]), setElems(p, contents, n)); err != nil {
			return fmt.Errorf("policy: set %s: %w", n, err)
		}
	}
	return nil
}

func nftRule(t *nftables.Table, chain string, r rule) *nftables.Rule {
	nr := &nftables.Rule{Table: t, Chain: &nftables.Chain{Name: chain, Table: t}, Exprs: ruleExprs(r)}
	if r.tag != "" {
		nr.UserData = userdata.AppendString(nil, userdata.TypeComment, r.tag)
	}
	return nr
}

func addRules(conn *nftables.Conn, t *nftables.Table, chain string, rules []rule) {
	for _, r := range rules {
		conn.AddRule(nftRule(t, chain, r))
	}
}

// writeFull replaces the table with the program and set contents, in one
// transaction: the old table (if any) is deleted and the new one made in
// the same batch, so no packet sees a moment without rules.
func writeFull(cfg Config, p *program, contents map[string]map[string]int) error {
	conn, done, err := openConn(cfg)
	if err != nil {
		return err
	}
	defer done()
	t := table(cfg)
	conn.AddTable(t) // so that the delete below finds one
	conn.DelTable(t)
	t = conn.AddTable(t)
	for _, n := range []string{counterIngress, counterEgress} {
		conn.AddObj(&nftables.CounterObj{Table: t, Name: n})
	}
	names := make([]string, 0, len(p.sets))
	for n := range p.sets {
		names = append(names, n)
	}
	slices.Sort(names)
	if err := addSets(conn, t, p, contents, names); err != nil {
		return err
	}
	accept := nftables.ChainPolicyAccept
	conn.AddChain(&nftables.Chain{
		Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	// Every chain before any rule: rules jump to them.
	chains := slices.Sorted(maps.Keys(p.chains))
	for _, n := range append([]string{chainIngress, chainEgress, chainEgressOK}, chains...) {
		conn.AddChain(&nftables.Chain{Name: n, Table: t})
	}
	for _, n := range chains {
		addRules(conn, t, n, p.chains[n])
	}
	addRules(conn, t, chainIngress, p.ingress)
	addRules(conn, t, chainEgress, p.egress)
	addRules(conn, t, chainEgressOK, p.egressOK)
	addRules(conn, t, chainForward, p.forward)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("policy: write table inet %s (%d sets, %d rules): %w", cfg.Table, len(p.sets), p.ruleCount(), err)
	}
	return nil
}

// change is what an Apply changes in a table that has the previous
// program: set element adds and deletes; on a policy change also new and
// unused sets, the policy chains that appear, go or change, and the jumps
// to them that go or come (a changed jump is both).
type change struct {
	newSets, oldSets []string
	diff             elemDiff
	newChains        []string   // made and filled
	oldChains        []string   // deleted, after their jumps
	modChains        []string   // flushed and refilled
	delJumps         []jumpRule // deleted from the ingress / egress chain (by tag)
	addJumps         []jumpRule // inserted there
}

// rules reports whether the change touches any chain.
func (c change) rules() bool {
	return len(c.newChains)+len(c.oldChains)+len(c.modChains)+len(c.delJumps)+len(c.addJumps) > 0
}

// rulesWritten is how many rules a change sends to the kernel.
func (c change) rulesWritten(p *program) int {
	n := len(c.addJumps)
	for _, ch := range slices.Concat(c.newChains, c.modChains) {
		n += len(p.chains[ch])
	}
	return n
}

// writeChange sends a change in one transaction. Sets and chains are made
// before the rules that use them, and jumps and rules deleted before the
// chains and sets they use, so no rule refers to a missing set or chain
// at any point of the batch. Jumps are inserted at the head of their chain:
// the order of the policies' jumps and the fixed allows there does not
// matter (each allows or falls through), and the deny stays the last rule.
func writeChange(cfg Config, p *program, contents map[string]map[string]int, c change) error {
	conn, done, err := openConn(cfg)
	if err != nil {
		return err
	}
	defer done()
	t := table(cfg)
	var handles map[string]uint64
	if len(c.delJumps) > 0 {
		if handles, err = jumpHandles(conn, t, c.delJumps); err != nil {
			return err
		}
	}
	if err := addSets(conn, t, p, contents, c.newSets); err != nil {
		return err
	}
	for set, keys := range c.diff.del {
		if err := conn.SetDeleteElements(nftSet(t, p.sets[set]), keyElems(keys)); err != nil {
			return fmt.Errorf("policy: set %s: %w", set, err)
		}
	}
	for set, keys := range c.diff.add {
		if err := conn.SetAddElements(nftSet(t, p.sets[set]), keyElems(keys)); err != nil {
			return fmt.Errorf("policy: set %s: %w", set, err)
		}
	}
	for _, n := range c.newChains {
		conn.AddChain(&nftables.Chain{Name: n, Table: t})
	}
	for _, n := range c.modChains {
		conn.FlushChain(&nftables.Chain{Name: n, Table: t})
	}
	for _, n := range slices.Concat(c.newChains, c.modChains) {
		addRules(conn, t, n, p.chains[n])
	}
	for _, j := range c.delJumps {
		h, ok := handles[j.chain+"/"+j.r.tag]
		if !ok {
			return fmt.Errorf("policy: table inet %s: no jump to %s in chain %s", cfg.Table, j.r.tag, j.chain)
		}
		if err := conn.DelRule(&nftables.Rule{Table: t, Chain: &nftables.Chain{Name: j.chain, Table: t}, Handle: h}); err != nil {
			return fmt.Errorf("policy: delete jump to %s: %w", j.r.tag, err)
		}
	}
	for _, j := range c.addJumps {
		conn.InsertRule(nftRule(t, j.chain, j.r))
	}
	for _, n := range c.oldChains {
		ch := &nftables.Chain{Name: n, Table: t}
		conn.FlushChain(ch)
		conn.DelChain(ch)
	}
	for _, n := range c.oldSets {
		conn.DelSet(&nftables.Set{Table: t, Name: n})
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("policy: update table inet %s: %w", cfg.Table, err)
	}
	return nil
}

// jumpHandles reads the handles of the jumps to policy chains in the
// chains that js delete from, by chain "/" tag: deleting a rule takes its
// handle, which the library does not keep from the batch that made it.
func jumpHandles(conn *nftables.Conn, t *nftables.Table, js []jumpRule) (map[string]uint64, error) {
	out := map[string]uint64{}
	for _, chain := range []string{chainIngress, chainEgress} {
		if !slices.ContainsFunc(js, func(j jumpRule) bool { return j.chain == chain }) {
			continue
		}
		rs, err := conn.GetRules(t, &nftables.Chain{Name: chain, Table: t})
		if err != nil {
			return nil, fmt.Errorf("policy: rules of chain %s: %w", chain, err)
		}
		for _, r := range rs {
			if tag, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok && tag != "" {
				out[chain+"/"+tag] = r.Handle
			}
		}
	}
	return out, nil
}

// readDrops reads the deny rules' named counters.
func readDrops(cfg Config) (ingress, egress uint64, err error) {
	conn, done, err := openConn(cfg)
	if err != nil {
		return 0, 0, err
	}
	defer done()
	objs, err := conn.GetObjects(table(cfg))
	if err != nil {
		return 0, 0, fmt.Errorf("policy: counters of table inet %s: %w", cfg.Table, err)
	}
	for _, o := range objs {
		c, ok := o.(*nftables.CounterObj)
		if !ok {
			continue
		}
		switch c.Name {
		case counterIngress:
			ingress = c.Packets
		case counterEgress:
			egress = c.Packets
		}
	}
	return ingress, egress, nil
}

// removeTable deletes the table; a missing one is fine.
func removeTable(cfg Config) error {
	conn, done, err := openConn(cfg)
	if err != nil {
		return err
	}
	defer done()
	t := table(cfg)
	conn.AddTable(t)
	conn.DelTable(t)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("policy: delete table inet %s: %w", cfg.Table, err)
	}
	return nil
}

// bridgeNFPath is the switch that sends bridged IPv4 through the inet
// hooks; it is per network namespace.
const bridgeNFPath = "/proc/sys/net/bridge/bridge-nf-call-iptables"

// ErrNoBridgeNF means br_netfilter is absent: bridged pod-to-pod traffic on
// one node does not pass the policy rules.
var ErrNoBridgeNF = errors.New("policy: br_netfilter not available (" + bridgeNFPath + " missing)")

// ensureBridgeNF sets net.bridge.bridge-nf-call-iptables to 1 in ns.
func ensureBridgeNF(ns string) error {
	return netnstest.Do(ns, func() error {
		b, err := os.ReadFile(bridgeNFPath)
		if errors.Is(err, os.ErrNotExist) {
			return ErrNoBridgeNF
		}
		if err != nil {
			return fmt.Errorf("policy: read %s: %w", bridgeNFPath, err)
		}
		if strings.TrimSpace(string(b)) == "1" {
			return nil
		}
		if err := os.WriteFile(bridgeNFPath, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("policy: set %s: %w", bridgeNFPath, err)
		}
		return nil
	})
}
