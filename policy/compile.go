package policy

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The compiler turns the policies into a program: named sets and three
// chains of rules, each rule a list of conditions and a verdict. The same
// program is written to nftables (nft.go) and interpreted by the tests'
// evaluator, so what the tests prove about the program holds for the
// kernel's rules.
//
// Which parts of a policy become what:
//
//   - the policy's podSelector: an address set of the pods it selects in its
//     namespace ("target"); the ingress chain jumps to the policy's own
//     ingress chain on ip daddr @target, the egress chain to its egress
//     chain on ip saddr @target. Local pods a target set holds go into
//     ingress-iso / egress-iso, by the policy's types. A policy with no
//     rules in a direction has no chain there: isolation alone denies.
//   - a peer's podSelector / namespaceSelector: an address set, one per
//     distinct (namespace scope, canonical selectors), shared by every
//     policy that uses it, the target sets included.
//   - a peer's ipBlock: an interval set of the CIDR minus its exceptions.
//   - numeric ports: one `th dport N`, or an interval set for several ports
//     or an endPort range; named ports: a set of pod address . protocol .
//     port per port name, since a name resolves per destination pod.
//
// Rules are per policy rule: (peers or any) x (port groups or any), in the
// policy's chain. Each policy is compiled on its own (polProg) and the
// Engine keeps the results, so a policy change compiles one policy and
// rewrites one chain; link puts the policies together.
// Anything invalid (bad CIDR, port out of range, endPort < port, unknown
// protocol, bad selector) is left out and reported: an entry left out of
// a list allows nothing, and a list whose every entry is invalid yields no
// rule at all (it never widens to "any").

// Fixed set names; the others are named by a hash of what they hold.
const (
	setIngressIso = "ingress-iso"
	setEgressIso  = "egress-iso"
	setNode       = "node"
)

// Chain names. Each policy that has rules in a direction gets its own
// chain ("pi-" / "pe-" and a hash of its namespace/name), jumped to from
// the direction's chain when the packet's pod is one the policy selects:
// a policy change rewrites that policy's chain and its jump, nothing else.
const (
	chainForward  = "forward"
	chainIngress  = "ingress"
	chainEgress   = "egress"
	chainEgressOK = "egress-ok"
	prefixIngress = "pi-"
	prefixEgress  = "pe-"
)

// Named counters of the deny rules, per direction. Named objects, so that
// rewriting the rules on a policy change does not reset them; the tags are
// the deny rules' comments, for a reader of `nft list`.
const (
	counterIngress = "drops-ingress"
	counterEgress  = "drops-egress"
	tagDropIngress = "weft:drop:ingress"
	tagDropEgress  = "weft:drop:egress"
)

// Protocol numbers.
const (
	protoTCP  = 6
	protoUDP  = 17
	protoSCTP = 132
)

type setType uint8

const (
	setAddr      setType = iota // ipv4_addr: pods, nodes
	setCIDR                     // ipv4_addr, interval: ipBlocks
	setPorts                    // inet_service, interval: port lists and ranges
	setNamedPort                // ipv4_addr . inet_proto . inet_service
)

// span is an inclusive range of addresses (as uint32) or ports.
type span struct{ lo, hi uint32 }

// setDef is one named set. Static sets (setCIDR, setPorts) carry their
// spans; dynamic ones are filled from pods (members.go).
type setDef struct {
	name  string
	typ   setType
	spans []span   // setCIDR, setPorts: sorted, disjoint, not adjacent
	sel   *peerSel // a selector set: which pods
	port  string   // setNamedPort: the port name
}

func (s *setDef) dynamic() bool { return s.typ == setAddr || s.typ == setNamedPort }

// peerSel selects pods: in namespace ns, or in the namespaces nsSel
// matches, whose labels podSel matches.
type peerSel struct {
	ns     string
	nsSel  labels.Selector // nil: scoped to ns
	podSel labels.Selector
}

func (p *peerSel) matches(namespace string, podLabels, nsLabels labels.Set) bool {
	if p.nsSel == nil {
		if namespace != p.ns {
			return false
		}
	} else if !p.nsSel.Matches(nsLabels) {
		return false
	}
	return p.podSel.Matches(podLabels)
}

type condOp uint8

const (
	condIPv4      condOp = iota // meta nfproto ipv4
	condEstRel                  // ct state established,related
	condInvalid                 // ct state invalid
	condSaddr                   // ip saddr @set
	condDaddr                   // ip daddr @set
	condProto                   // meta l4proto proto
	condDport                   // th dport lo
	condDportSet                // th dport @set
	condNamedPort               // ip daddr . meta l4proto . th dport @set
)

type cond struct {
	op    condOp
	set   string
	proto uint8
	port  uint16
}

type verdict uint8

const (
	vAccept verdict = iota
	vDrop
	vReturn
	vJump
	vGoto     // to chain jump; where it ends, the calling chain ends
	vContinue // no verdict: the next rule
)

type rule struct {
	conds   []cond
	verdict verdict
	jump    string // vJump, vGoto: the chain
	counter string // a named counter the rule counts into
	tag     string // the rule's comment
	log     string // rate-limited log with this prefix (DenyLog)
}

// Deny logging: at most denyLogRate lines a second per direction (burst
// denyLogBurst), to the kernel log of the agent's namespace. Logging from
// other namespaces is off unless net.netfilter.nf_log_all_netns=1.
const (
	denyLogRate  = 10
	denyLogBurst = 20
)

// program is the compiled form of the policies.
type program struct {
	sets      map[string]*setDef
	selSets   []*setDef // dynamic selector sets, by name
	namedSets []*setDef // named port sets, by name
	// Target sets of the policies with Ingress / Egress in their types.
	ingressTargets, egressTargets map[string]bool
	// forward is the base chain; ingress and egress hold their fixed rules
	// and a jump to every policy chain (tagged with its name); egressOK is
	// where an egress allow goes on to the ingress check.
	forward, ingress, egress, egressOK []rule
	chains                             map[string][]rule // the policies' chains, by name
	errs                               []string
}

func (p *program) setCount() int { return len(p.sets) }
func (p *program) ruleCount() int {
	n := len(p.forward) + len(p.ingress) + len(p.egress) + len(p.egressOK)
	for _, rs := range p.chains {
		n += len(rs)
	}
	return n
}

// polProg is one policy compiled on its own: the sets it uses, its
// chains and the jumps to them.
type polProg struct {
	src  *networkingv1.NetworkPolicy // compiled from (the Engine's copy)
	sets map[string]*setDef
	// Target set, "" when the policy is not of that type.
	ingressTarget, egressTarget string
	jumps                       []jumpRule        // into the ingress / egress chain
	chains                      map[string][]rule // by name
	errs                        []string
}

// jumpRule is a rule of the ingress or egress chain that jumps to a
// policy's chain; rule.tag is the chain's name.
type jumpRule struct {
	chain string // chainIngress or chainEgress
	r     rule
}

// Compile errors (wrapped in program.errs' texts), so tests can tell them apart.
var (
	errBadSelector = errors.New("bad label selector")
	errBadCIDR     = errors.New("bad CIDR")
	errBadPort     = errors.New("bad port")
	errBadProto    = errors.New("unknown protocol")
	errBadType     = errors.New("unknown policy type")
)

func hashName(prefix, k string) string {
	h := sha256.Sum256([]byte(k))
	return prefix + hex.EncodeToString(h[:8])
}

type compiler struct {
	sets map[string]*setDef
	errs []string
	pol  string // namespace/name of the policy being compiled
}

func (c *compiler) errf(err error, format string, args ...any) {
	c.errs = append(c.errs, fmt.Sprintf("%s: %v: %s", c.pol, err, fmt.Sprintf(format, args...)))
}

// compile builds the program of a set of policies. It never fails: what it
// cannot compile it leaves out (failing closed) and lists in errs.
func compile(policies map[string]*networkingv1.NetworkPolicy, denyLog bool) *program {
	progs := make(map[string]*polProg, len(policies))
	for k, np := range policies {
		progs[k] = compilePolicy(k, np)
	}
	return link(progs, denyLog)
}

// compilePolicy compiles one policy, known as key (namespace/name).
func compilePolicy(key string, np *networkingv1.NetworkPolicy) *polProg {
	c := &compiler{sets: map[string]*setDef{}, pol: key}
	pp := &polProg{src: np, sets: c.sets, chains: map[string][]rule{}}
	c.policy(pp, np)
	pp.errs = c.errs
	return pp
}

// link puts compiled policies together into a program.
func link(progs map[string]*polProg, denyLog bool) *program {
	p := &program{
		sets:           map[string]*setDef{},
		ingressTargets: map[string]bool{},
		egressTargets:  map[string]bool{},
		chains:         map[string][]rule{},
	}
	for _, n := range []string{setIngressIso, setEgressIso, setNode} {
		p.sets[n] = &setDef{name: n, typ: setAddr}
	}
	p.ingress = []rule{{conds: []cond{{op: condSaddr, set: setNode}}, verdict: vAccept}}
	p.egress = []rule{{conds: []cond{{op: condDaddr, set: setNode}}, verdict: vReturn}}
	for _, k := range slices.Sorted(maps.Keys(progs)) {
		pp := progs[k]
		for n, s := range pp.sets {
			if _, ok := p.sets[n]; !ok {
				p.sets[n] = s // equal names are equal sets: either will do
			}
		}
		if pp.ingressTarget != "" {
			p.ingressTargets[pp.ingressTarget] = true
		}
		if pp.egressTarget != "" {
			p.egressTargets[pp.egressTarget] = true
		}
		for _, j := range pp.jumps {
			if j.chain == chainIngress {
				p.ingress = append(p.ingress, j.r)
			} else {
				p.egress = append(p.egress, j.r)
			}
		}
		for n, rs := range pp.chains {
			p.chains[n] = rs
		}
		p.errs = append(p.errs, pp.errs...)
	}
	for _, s := range p.sets {
		switch {
		case s.sel != nil:
			p.selSets = append(p.selSets, s)
		case s.typ == setNamedPort:
			p.namedSets = append(p.namedSets, s)
		}
	}
	byName := func(a, b *setDef) int { return strings.Compare(a.name, b.name) }
	slices.SortFunc(p.selSets, byName)
	slices.SortFunc(p.namedSets, byName)

	ip4 := cond{op: condIPv4}
	p.forward = []rule{
		{conds: []cond{{op: condEstRel}}, verdict: vAccept},
		{conds: []cond{ip4, {op: condDaddr, set: setIngressIso}, {op: condInvalid}}, verdict: vDrop, counter: counterIngress, tag: tagDropIngress},
		{conds: []cond{ip4, {op: condSaddr, set: setEgressIso}, {op: condInvalid}}, verdict: vDrop, counter: counterEgress, tag: tagDropEgress},
		{conds: []cond{ip4, {op: condSaddr, set: setEgressIso}}, verdict: vJump, jump: chainEgress},
		{conds: []cond{ip4, {op: condDaddr, set: setIngressIso}}, verdict: vJump, jump: chainIngress},
	}
	// An egress allow in a policy chain goes here (goto): the packet has
	// its egress verdict, and the destination's ingress decides the rest.
	p.egressOK = []rule{
		{conds: []cond{{op: condDaddr, set: setIngressIso}}, verdict: vGoto, jump: chainIngress},
		{verdict: vAccept},
	}
	if denyLog {
		p.ingress = append(p.ingress, rule{verdict: vContinue, log: "weft-policy deny ingress: "})
		p.egress = append(p.egress, rule{verdict: vContinue, log: "weft-policy deny egress: "})
	}
	p.ingress = append(p.ingress, rule{verdict: vDrop, counter: counterIngress, tag: tagDropIngress})
	p.egress = append(p.egress, rule{verdict: vDrop, counter: counterEgress, tag: tagDropEgress})
	return p
}

// policyTypes applies the API's defaults: Ingress always, Egress when
// there are egress rules, unless policyTypes says.
func (c *compiler) policyTypes(np *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		default:
			c.errf(errBadType, "%q", t)
		}
	}
	return ingress, egress
}

func (c *compiler) policy(pp *polProg, np *networkingv1.NetworkPolicy) {
	ingress, egress := c.policyTypes(np)
	if !ingress && !egress {
		return
	}
	podSel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		// The policy cannot tell whom it selects: it selects nobody. The
		// API server validates selectors, so this is a corrupt object.
		c.errf(errBadSelector, "podSelector: %v", err)
		return
	}
	target := c.selSet(&peerSel{ns: np.Namespace, podSel: podSel})
	if ingress {
		pp.ingressTarget = target
		var rs []rule
		for i, r := range np.Spec.Ingress {
			rs = c.rules(rs, fmt.Sprintf("ingress[%d]", i), np.Namespace, condSaddr, r.From, r.Ports, rule{verdict: vAccept})
		}
		c.chain(pp, chainIngress, prefixIngress, condDaddr, target, rs)
	}
	if egress {
		pp.egressTarget = target
		var rs []rule
		for i, r := range np.Spec.Egress {
			rs = c.rules(rs, fmt.Sprintf("egress[%d]", i), np.Namespace, condDaddr, r.To, r.Ports, rule{verdict: vGoto, jump: chainEgressOK})
		}
		c.chain(pp, chainEgress, prefixEgress, condSaddr, target, rs)
	}
}

// chain makes the policy's chain in one direction, and the jump to it on
// the selected pod's address (self). No rules, no chain: the policy only
// isolates its pods.
func (c *compiler) chain(pp *polProg, from, prefix string, self condOp, target string, rs []rule) {
	if len(rs) == 0 {
		return
	}
	name := hashName(prefix, c.pol)
	pp.chains[name] = rs
	pp.jumps = append(pp.jumps, jumpRule{chain: from,
		r: rule{conds: []cond{{op: self, set: target}}, verdict: vJump, jump: name, tag: name}})
}

// rules appends the rules of one policy rule to out: peer is the condition
// on the other end's address (saddr for ingress), v the rule to allow with.
func (c *compiler) rules(out []rule, where, ns string, peer condOp,
	peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, v rule) []rule {
	peerConds := [][]cond{nil} // no peers: any
	if len(peers) > 0 {
		peerConds = nil
		for i, pr := range peers {
			if cs, ok := c.peer(fmt.Sprintf("%s.peers[%d]", where, i), ns, peer, pr); ok {
				peerConds = append(peerConds, cs)
			}
		}
	}
	portConds := [][]cond{nil} // no ports: any
	if len(ports) > 0 {
		portConds = c.ports(where, ports)
	}
	for _, pc := range peerConds {
		for _, po := range portConds {
			r := v
			r.conds = append(slices.Clone(pc), po...)
			out = append(out, r)
		}
	}
	return out
}

// peer compiles one peer into conditions; ok is false when it matches
// nothing (invalid, or an IPv6 block).
func (c *compiler) peer(where, ns string, op condOp, pr networkingv1.NetworkPolicyPeer) ([]cond, bool) {
	if pr.IPBlock != nil {
		if pr.PodSelector != nil || pr.NamespaceSelector != nil {
			c.errf(errBadSelector, "%s: ipBlock with a selector", where)
			return nil, false
		}
		spans, ok := c.ipBlock(where, pr.IPBlock)
		if !ok {
			return nil, false
		}
		name := hashName("cidr-", fmt.Sprint(spans))
		if _, ok := c.sets[name]; !ok {
			c.sets[name] = &setDef{name: name, typ: setCIDR, spans: spans}
		}
		return []cond{{op: op, set: name}}, true
	}
	ps := &peerSel{ns: ns, podSel: labels.Everything()}
	if pr.PodSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(pr.PodSelector)
		if err != nil {
			c.errf(errBadSelector, "%s.podSelector: %v", where, err)
			return nil, false
		}
		ps.podSel = s
	}
	if pr.NamespaceSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(pr.NamespaceSelector)
		if err != nil {
			c.errf(errBadSelector, "%s.namespaceSelector: %v", where, err)
			return nil, false
		}
		ps.nsSel, ps.ns = s, ""
	} else if pr.PodSelector == nil {
		c.errf(errBadSelector, "%s: empty peer", where)
		return nil, false
	}
	return []cond{{op: op, set: c.selSet(ps)}}, true
}

// selSet returns the name of the address set of ps, making it if new.
// Identical selectors share one set.
func (c *compiler) selSet(ps *peerSel) string {
	var k string
	if ps.nsSel == nil {
		k = "ns=" + ps.ns + "|pod=" + ps.podSel.String()
	} else {
		k = "nssel=" + ps.nsSel.String() + "|pod=" + ps.podSel.String()
	}
	name := hashName("sel-", k)
	if _, ok := c.sets[name]; !ok {
		c.sets[name] = &setDef{name: name, typ: setAddr, sel: ps}
	}
	return name
}

// ipBlock returns the IPv4 ranges of a block minus its exceptions. ok is
// false when it holds no IPv4 address or is invalid (reported).
func (c *compiler) ipBlock(where string, b *networkingv1.IPBlock) ([]span, bool) {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		c.errf(errBadCIDR, "%s.ipBlock.cidr %q", where, b.CIDR)
		return nil, false
	}
	if !cidr.Addr().Is4() {
		return nil, false // an IPv6 block: never matches this IPv4 cluster
	}
	spans := []span{prefixSpan(cidr)}
	for _, ex := range b.Except {
		e, err := netip.ParsePrefix(ex)
		if err != nil {
			// Allowing the whole block would allow what the exception
			// denies: leave the peer out.
			c.errf(errBadCIDR, "%s.ipBlock.except %q", where, ex)
			return nil, false
		}
		if !e.Addr().Is4() {
			continue
		}
		spans = subtract(spans, prefixSpan(e))
	}
	return spans, len(spans) > 0
}

func prefixSpan(p netip.Prefix) span {
	p = p.Masked()
	b := p.Addr().As4()
	lo := binary.BigEndian.Uint32(b[:])
	hi := lo | uint32(uint64(1)<<(32-p.Bits())-1)
	return span{lo, hi}
}

// subtract removes x from sorted disjoint spans.
func subtract(spans []span, x span) []span {
	var out []span
	for _, s := range spans {
		if x.hi < s.lo || x.lo > s.hi {
			out = append(out, s)
			continue
		}
		if x.lo > s.lo {
			out = append(out, span{s.lo, x.lo - 1})
		}
		if x.hi < s.hi {
			out = append(out, span{x.hi + 1, s.hi})
		}
	}
	return out
}

// normalize sorts spans and merges overlapping or adjacent ones.
func normalize(spans []span) []span {
	slices.SortFunc(spans, func(a, b span) int {
		switch {
		case a.lo < b.lo:
			return -1
		case a.lo > b.lo:
			return 1
		}
		return 0
	})
	var out []span
	for _, s := range spans {
		if n := len(out); n > 0 && uint64(s.lo) <= uint64(out[n-1].hi)+1 {
			out[n-1].hi = max(out[n-1].hi, s.hi)
			continue
		}
		out = append(out, s)
	}
	return out
}

func protoNumber(p *corev1.Protocol) (uint8, bool) {
	if p == nil {
		return protoTCP, true
	}
	switch *p {
	case corev1.ProtocolTCP:
		return protoTCP, true
	case corev1.ProtocolUDP:
		return protoUDP, true
	case corev1.ProtocolSCTP:
		return protoSCTP, true
	}
	return 0, false
}

// ports compiles a rule's ports into groups of conditions, any of which
// allows. It returns no group when every entry is invalid.
func (c *compiler) ports(where string, ports []networkingv1.NetworkPolicyPort) [][]cond {
	numeric := map[uint8][]span{}
	allOf := map[uint8]bool{}
	type named struct {
		proto uint8
		name  string
	}
	var names []named
	for i, pp := range ports {
		proto, ok := protoNumber(pp.Protocol)
		if !ok {
			c.errf(errBadProto, "%s.ports[%d] %q", where, i, *pp.Protocol)
			continue
		}
		switch {
		case pp.Port == nil:
			if pp.EndPort != nil {
				c.errf(errBadPort, "%s.ports[%d]: endPort without port", where, i)
				continue
			}
			allOf[proto] = true
		case pp.Port.Type == intstr.String:
			if pp.EndPort != nil || pp.Port.StrVal == "" {
				c.errf(errBadPort, "%s.ports[%d]: named port %q with endPort or empty", where, i, pp.Port.StrVal)
				continue
			}
			names = append(names, named{proto, pp.Port.StrVal})
		default:
			lo := int64(pp.Port.IntVal)
			hi := lo
			if pp.EndPort != nil {
				hi = int64(*pp.EndPort)
			}
			if lo < 1 || lo > 65535 || hi < lo || hi > 65535 {
				c.errf(errBadPort, "%s.ports[%d]: %d-%d", where, i, lo, hi)
				continue
			}
			numeric[proto] = append(numeric[proto], span{uint32(lo), uint32(hi)})
		}
	}
	var out [][]cond
	for _, proto := range []uint8{protoTCP, protoUDP, protoSCTP} {
		pc := cond{op: condProto, proto: proto}
		if allOf[proto] {
			out = append(out, []cond{pc})
			continue // covers this protocol's numeric and named ports
		}
		if spans := normalize(numeric[proto]); len(spans) == 1 && spans[0].lo == spans[0].hi {
			out = append(out, []cond{pc, {op: condDport, port: uint16(spans[0].lo)}})
		} else if len(spans) > 0 {
			name := hashName("ports-", fmt.Sprint(spans))
			if _, ok := c.sets[name]; !ok {
				c.sets[name] = &setDef{name: name, typ: setPorts, spans: spans}
			}
			out = append(out, []cond{pc, {op: condDportSet, set: name}})
		}
		seen := map[string]bool{}
		for _, n := range names {
			if n.proto != proto || seen[n.name] {
				continue
			}
			seen[n.name] = true
			out = append(out, []cond{pc, {op: condNamedPort, set: c.namedSet(n.name)}})
		}
	}
	return out
}

func (c *compiler) namedSet(port string) string {
	name := hashName("np-", port)
	if _, ok := c.sets[name]; !ok {
		c.sets[name] = &setDef{name: name, typ: setNamedPort, port: port}
	}
	return name
}
