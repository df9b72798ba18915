package policy

import (
	"encoding/binary"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Memberships: which elements each pod puts in the dynamic sets. Every
// element is reference counted (two pods may share an address for a moment
// while one is deleted and its address is reused), and every change of a
// count is noted in touched, so an incremental Apply sends the kernel only
// the elements that appeared or disappeared.

// nsNameLabel is the label the API server puts on every namespace; set here
// too, so a selector on it works before the namespace informer delivers.
const nsNameLabel = "kubernetes.io/metadata.name"

// addrKey is a set element of an ipv4_addr set.
func addrKey(a netip.Addr) string {
	b := a.As4()
	return string(b[:])
}

// namedKey is a set element of an ipv4_addr . inet_proto . inet_service
// set: each field is padded to the 4-byte register size.
func namedKey(a netip.Addr, proto uint8, port uint16) string {
	var k [12]byte
	b := a.As4()
	copy(k[:4], b[:])
	k[4] = proto
	binary.BigEndian.PutUint16(k[8:10], port)
	return string(k[:])
}

func ipv4s(ips []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range ips {
		if a = a.Unmap(); a.Is4() {
			out = append(out, a)
		}
	}
	return out
}

// podProto is the protocol number of a container port ("" is TCP).
func podProto(p corev1.Protocol) (uint8, bool) {
	if p == "" {
		return protoTCP, true
	}
	return protoNumber(&p)
}

// nsLabelCache hands out a namespace's labels as a labels.Set, with the
// name label filled in, computing each once per Apply.
type nsLabelCache struct {
	ns    map[string]map[string]string
	cache map[string]labels.Set
}

func (c *nsLabelCache) get(ns string) labels.Set {
	if s, ok := c.cache[ns]; ok {
		return s
	}
	s := labels.Set{}
	for k, v := range c.ns[ns] {
		s[k] = v
	}
	if _, ok := s[nsNameLabel]; !ok {
		s[nsNameLabel] = ns
	}
	c.cache[ns] = s
	return s
}

// podContrib lists the elements pod p puts in the sets of prog.
func podContrib(prog *program, p *Pod, nsl *nsLabelCache) []elemRef {
	if p.Name == "" {
		return nil // deleted
	}
	ips := ipv4s(p.IPs)
	if len(ips) == 0 {
		return nil
	}
	var out []elemRef
	var ingIso, egIso bool
	var podLabels labels.Set = p.Labels
	var nsLabels labels.Set
	for _, s := range prog.selSets {
		if s.sel.nsSel == nil && s.sel.ns != p.Namespace {
			continue // the common case, decided without the labels
		}
		if s.sel.nsSel != nil && nsLabels == nil {
			nsLabels = nsl.get(p.Namespace)
		}
		if !s.sel.matches(p.Namespace, podLabels, nsLabels) {
			continue
		}
		for _, a := range ips {
			out = append(out, elemRef{s.name, addrKey(a)})
		}
		if p.Local {
			ingIso = ingIso || prog.ingressTargets[s.name]
			egIso = egIso || prog.egressTargets[s.name]
		}
	}
	for _, a := range ips {
		if ingIso {
			out = append(out, elemRef{setIngressIso, addrKey(a)})
		}
		if egIso {
			out = append(out, elemRef{setEgressIso, addrKey(a)})
		}
	}
	for _, s := range prog.namedSets {
		for _, np := range p.Ports {
			if np.Name != s.port || np.Port < 1 || np.Port > 65535 {
				continue
			}
			proto, ok := podProto(np.Protocol)
			if !ok {
				continue
			}
			for _, a := range ips {
				out = append(out, elemRef{s.name, namedKey(a, proto, uint16(np.Port))})
			}
		}
	}
	return out
}

func nodeContrib(addrs []netip.Addr) []elemRef {
	var out []elemRef
	for _, a := range ipv4s(addrs) {
		out = append(out, elemRef{setNode, addrKey(a)})
	}
	return out
}

// ref adds (d=1) or removes (d=-1) references, noting which elements
// changed.
func (e *Engine) ref(refs []elemRef, d int) {
	for _, r := range refs {
		m := e.contents[r.set]
		if m == nil {
			continue // a set of an older program
		}
		n := m[r.key] + d
		if n <= 0 {
			delete(m, r.key)
		} else {
			m[r.key] = n
		}
		t := e.touched[r.set]
		if t == nil {
			t = map[string]struct{}{}
			e.touched[r.set] = t
		}
		t[r.key] = struct{}{}
	}
}

func (e *Engine) nodeAddrs() []netip.Addr {
	if e.cfg.NodeAddrs == nil {
		return nil
	}
	return e.cfg.NodeAddrs()
}

// recomputeAll fills the dynamic sets of e.prog from scratch.
func (e *Engine) recomputeAll() {
	e.contents = map[string]map[string]int{}
	for name, s := range e.prog.sets {
		if s.dynamic() {
			e.contents[name] = map[string]int{}
		}
	}
	e.touched = map[string]map[string]struct{}{}
	nsl := &nsLabelCache{ns: e.namespaces, cache: map[string]labels.Set{}}
	for k, ps := range e.pods {
		if ps.pod.Name == "" {
			delete(e.pods, k)
			continue
		}
		ps.contrib = podContrib(e.prog, &ps.pod, nsl)
		e.ref(ps.contrib, 1)
	}
	e.nodeKeys = nil
	nc := nodeContrib(e.nodeAddrs())
	e.ref(nc, 1)
	for _, r := range nc {
		e.nodeKeys = append(e.nodeKeys, r.key)
	}
	clear(e.dirtyPods)
	clear(e.dirtyNS)
	e.touched = map[string]map[string]struct{}{}
}

// recomputeDirty updates the dynamic sets for the pods and namespaces that
// changed, and for the node's addresses.
func (e *Engine) recomputeDirty() {
	if len(e.dirtyNS) > 0 {
		for k, ps := range e.pods {
			if _, ok := e.dirtyNS[ps.pod.Namespace]; ok {
				e.dirtyPods[k] = struct{}{}
			}
		}
	}
	nsl := &nsLabelCache{ns: e.namespaces, cache: map[string]labels.Set{}}
	for k := range e.dirtyPods {
		ps, ok := e.pods[k]
		if !ok {
			continue
		}
		e.ref(ps.contrib, -1)
		if ps.pod.Name == "" {
			delete(e.pods, k)
			continue
		}
		ps.contrib = podContrib(e.prog, &ps.pod, nsl)
		e.ref(ps.contrib, 1)
	}
	e.refNode()
	clear(e.dirtyPods)
	clear(e.dirtyNS)
}

// refNode moves the node set's references to the node's addresses now.
func (e *Engine) refNode() {
	old := make([]elemRef, 0, len(e.nodeKeys))
	for _, k := range e.nodeKeys {
		old = append(old, elemRef{setNode, k})
	}
	e.ref(old, -1)
	nc := nodeContrib(e.nodeAddrs())
	e.ref(nc, 1)
	e.nodeKeys = e.nodeKeys[:0]
	for _, r := range nc {
		e.nodeKeys = append(e.nodeKeys, r.key)
	}
}

// elemDiff is what an incremental Apply sends.
type elemDiff struct {
	add, del map[string][]string // set -> element keys
}

func (d elemDiff) empty() bool { return len(d.add) == 0 && len(d.del) == 0 }

// diff compares the touched elements with what the kernel has.
func (e *Engine) diff() elemDiff {
	d := elemDiff{add: map[string][]string{}, del: map[string][]string{}}
	for set, keys := range e.touched {
		have := e.installed[set]
		for k := range keys {
			_, want := e.contents[set][k]
			_, got := have[k]
			switch {
			case want && !got:
				d.add[set] = append(d.add[set], k)
			case !want && got:
				d.del[set] = append(d.del[set], k)
			}
		}
	}
	return d
}

// snapshotInstalled records that the kernel has exactly e.contents.
func (e *Engine) snapshotInstalled() {
	e.installed = make(map[string]map[string]struct{}, len(e.contents))
	for set, m := range e.contents {
		h := make(map[string]struct{}, len(m))
		for k := range m {
			h[k] = struct{}{}
		}
		e.installed[set] = h
	}
	e.touched = map[string]map[string]struct{}{}
}

// commitDiff records that the kernel took d.
func (e *Engine) commitDiff(d elemDiff) {
	for set, keys := range d.add {
		h := e.installed[set]
		for _, k := range keys {
			h[k] = struct{}{}
		}
	}
	for set, keys := range d.del {
		for _, k := range keys {
			delete(e.installed[set], k)
		}
	}
	e.touched = map[string]map[string]struct{}{}
}

// compile compiles the policies and notes what could not be compiled.
// Each policy is compiled once per change of its spec: the Engine keeps the
// results (SetPolicy stores a new copy only when the spec changed).
func (e *Engine) compile() *program {
	for k, pp := range e.progs {
		if np, ok := e.policies[k]; !ok || np != pp.src {
			delete(e.progs, k)
		}
	}
	for k, np := range e.policies {
		if _, ok := e.progs[k]; !ok {
			e.progs[k] = compilePolicy(k, np)
		}
	}
	p := link(e.progs, e.cfg.DenyLog)
	e.compErr = ""
	if len(p.errs) > 0 {
		e.compErr = joinErrs(p.errs)
		e.log.Warn("network policies partly invalid; their invalid parts allow nothing", "errors", p.errs)
	}
	return p
}

func (e *Engine) applyFull() error {
	e.prog = e.compile()
	e.recomputeAll()
	e.policiesDirty = false
	in, out, _ := e.kern.readDrops()
	if err := e.kern.writeFull(e.prog, e.contents); err != nil {
		return err
	}
	if e.synced || e.installed != nil {
		// Our own table was replaced: keep its drops in the totals.
		e.dropBase[0] += in
		e.dropBase[1] += out
	}
	e.snapshotInstalled()
	e.synced = true
	return nil
}

func (e *Engine) applyIncremental() error {
	e.recomputeDirty()
	d := e.diff()
	if d.empty() {
		e.touched = map[string]map[string]struct{}{}
		return nil
	}
	if err := e.kern.writeChange(e.prog, e.contents, change{diff: d}); err != nil {
		return err
	}
	e.commitDiff(d)
	return nil
}

// applyPolicies moves the kernel from the previous program to a new one
// without rewriting the table: the chains of the policies that changed are
// made, refilled or deleted with their jumps, new sets made, unused ones
// deleted, and the sets both programs have get element changes only. Pods keep their memberships of the sets that stay
// (a set's name is a hash of what selects its members), so only the new
// sets are matched against every pod.
func (e *Engine) applyPolicies() error {
	old, np := e.prog, e.compile()
	e.prog = np // even on failure: the next Apply rewrites all from np
	e.policiesDirty = false
	var newSel, newNamed []*setDef
	var c change
	// Rules refer to sets by a hash of what selects their members, so
	// equal rules mean an unchanged chain (say, a policy was replaced by
	// an equivalent one).
	chainDiff(old, np, &c)
	for name, s := range np.sets {
		if _, ok := old.sets[name]; ok {
			continue
		}
		c.newSets = append(c.newSets, name)
		switch {
		case s.sel != nil:
			newSel = append(newSel, s)
		case s.typ == setNamedPort:
			newNamed = append(newNamed, s)
		}
	}
	slices.Sort(c.newSets)
	for name := range old.sets {
		if _, ok := np.sets[name]; !ok {
			c.oldSets = append(c.oldSets, name)
		}
	}
	slices.Sort(c.oldSets)
	if len(e.dirtyNS) > 0 {
		for k, ps := range e.pods {
			if _, ok := e.dirtyNS[ps.pod.Namespace]; ok {
				e.dirtyPods[k] = struct{}{}
			}
		}
	}
	partial := &program{sets: np.sets, selSets: newSel, namedSets: newNamed}
	nsl := &nsLabelCache{ns: e.namespaces, cache: map[string]labels.Set{}}
	// Memberships move by reference counts, as for a label change: a pod
	// whose memberships are the same (most, for most policy changes) costs
	// a comparison. New sets start empty here and are sent with their
	// elements; the old ones go after.
	e.touched = map[string]map[string]struct{}{}
	for _, n := range c.newSets {
		if np.sets[n].dynamic() {
			e.contents[n] = map[string]int{}
		}
	}
	for k, ps := range e.pods {
		if ps.pod.Name == "" {
			e.ref(ps.contrib, -1)
			delete(e.pods, k)
			continue
		}
		var nc []elemRef
		if _, dirty := e.dirtyPods[k]; dirty {
			nc = podContrib(np, &ps.pod, nsl)
		} else {
			nc = carryContrib(np, ps, partial, nsl)
		}
		if !slices.Equal(nc, ps.contrib) {
			e.ref(ps.contrib, -1)
			e.ref(nc, 1)
		}
		ps.contrib = nc
	}
	clear(e.dirtyPods)
	clear(e.dirtyNS)
	e.refNode()
	for _, n := range c.oldSets {
		delete(e.contents, n)
		delete(e.installed, n)
		delete(e.touched, n)
	}
	isNew := map[string]bool{}
	for _, n := range c.newSets {
		isNew[n] = true
		delete(e.touched, n)
	}
	c.diff = e.diff() // of the sets both programs have
	if err := e.kern.writeChange(np, e.contents, c); err != nil {
		return err
	}
	e.commitDiff(c.diff)
	for n := range isNew {
		if m, ok := e.contents[n]; ok {
			h := make(map[string]struct{}, len(m))
			for k := range m {
				h[k] = struct{}{}
			}
			e.installed[n] = h
		}
	}
	return nil
}

// chainDiff notes in c the policy chains and jumps that differ between
// two programs.
func chainDiff(old, np *program, c *change) {
	for n, rs := range np.chains {
		ors, ok := old.chains[n]
		switch {
		case !ok:
			c.newChains = append(c.newChains, n)
		case !sameRules(ors, rs):
			c.modChains = append(c.modChains, n)
		}
	}
	for n := range old.chains {
		if _, ok := np.chains[n]; !ok {
			c.oldChains = append(c.oldChains, n)
		}
	}
	oj, nj := jumps(old), jumps(np)
	for k, j := range oj {
		if n, ok := nj[k]; !ok || !reflect.DeepEqual(n.r, j.r) {
			c.delJumps = append(c.delJumps, j)
		}
	}
	for k, j := range nj {
		if o, ok := oj[k]; !ok || !reflect.DeepEqual(o.r, j.r) {
			c.addJumps = append(c.addJumps, j)
		}
	}
	slices.Sort(c.newChains)
	slices.Sort(c.modChains)
	slices.Sort(c.oldChains)
	byTag := func(a, b jumpRule) int { return strings.Compare(a.chain+"/"+a.r.tag, b.chain+"/"+b.r.tag) }
	slices.SortFunc(c.delJumps, byTag)
	slices.SortFunc(c.addJumps, byTag)
}

// sameRules compares two chains' rules; an unchanged policy's compiled
// chain is the very same slice, which spares the deep comparison.
func sameRules(a, b []rule) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] {
		return true
	}
	return reflect.DeepEqual(a, b)
}

// jumps are the program's jumps to policy chains, by chain "/" tag.
func jumps(p *program) map[string]jumpRule {
	out := map[string]jumpRule{}
	for _, ch := range []struct {
		name  string
		rules []rule
	}{{chainIngress, p.ingress}, {chainEgress, p.egress}} {
		for _, r := range ch.rules {
			if r.verdict == vJump && r.tag != "" {
				out[ch.name+"/"+r.tag] = jumpRule{chain: ch.name, r: r}
			}
		}
	}
	return out
}

// carryContrib is a pod's memberships under a new program: those of sets
// that stay, plus the new sets (in partial) it matches, plus isolation by
// the new program's targets.
func carryContrib(np *program, ps *podState, partial *program, nsl *nsLabelCache) []elemRef {
	var out []elemRef
	for _, r := range ps.contrib {
		if r.set == setIngressIso || r.set == setEgressIso || np.sets[r.set] == nil {
			continue
		}
		out = append(out, r)
	}
	p := &ps.pod
	out = append(out, podContrib(partial, &Pod{Namespace: p.Namespace, Name: p.Name, IPs: p.IPs, Labels: p.Labels, Ports: p.Ports}, nsl)...)
	if !p.Local {
		return out
	}
	var ingIso, egIso bool
	for _, r := range out {
		ingIso = ingIso || np.ingressTargets[r.set]
		egIso = egIso || np.egressTargets[r.set]
	}
	for _, a := range ipv4s(p.IPs) {
		if ingIso {
			out = append(out, elemRef{setIngressIso, addrKey(a)})
		}
		if egIso {
			out = append(out, elemRef{setEgressIso, addrKey(a)})
		}
	}
	return out
}

func joinErrs(errs []string) string {
	const most = 5
	s := ""
	for i, e := range errs {
		if i == most {
			s += "; ..."
			break
		}
		if i > 0 {
			s += "; "
		}
		s += e
	}
	return s
}
