package policy

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// FuzzCompile builds random worlds (policies, valid and invalid, namespaces
// and pods) from the fuzzer's bytes, compiles them, and checks that the
// compiled program, run by the evaluator over what the fake kernel holds,
// gives the reference semantics' verdict for every packet between the
// world's addresses; then it changes labels and pods, applies
// incrementally, and checks again, and that the kernel's sets equal a
// fresh Engine's.
func FuzzCompile(f *testing.F) {
	for _, seed := range [][]byte{
		{},
		{3, 2, 1, 0, 5, 7, 9, 11, 13, 2, 4, 6, 8, 10, 12, 14, 16},
		[]byte("network policy engine fuzz seed with some bytes in it"),
		{255, 254, 253, 252, 251, 250, 249, 248, 247, 246, 245, 244, 243, 242, 241, 240, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkWorld(t, data, "") })
}

// checkWorld is the fuzz body: build, compare, change, compare again.
func checkWorld(t *testing.T, data []byte, name string) {
	g := &gen{b: data}
	w := g.world()
	e, fk := engineFor(t, w)
	compareAll(t, w, fk, name+" initial")
	// Changes: relabel pods and a namespace, delete a pod, drop or add a
	// policy.
	for range 1 + g.n(4) {
		switch g.n(6) {
		case 0, 1:
			if len(w.pods) == 0 {
				continue
			}
			i := g.n(len(w.pods))
			w.pods[i].Labels = g.labels()
			e.SetPod(w.pods[i])
		case 2:
			ns := fmt.Sprintf("n%d", g.n(3))
			w.namespaces[ns] = g.nsLabels()
			e.SetNamespace(ns, w.namespaces[ns])
		case 3:
			if len(w.pods) == 0 {
				continue
			}
			i := g.n(len(w.pods))
			e.DeletePod(w.pods[i].Namespace, w.pods[i].Name)
			w.pods = append(w.pods[:i], w.pods[i+1:]...)
		case 4:
			if len(w.policies) == 0 {
				continue
			}
			i := g.n(len(w.policies))
			e.DeletePolicy(w.policies[i].Namespace, w.policies[i].Name)
			w.policies = append(w.policies[:i], w.policies[i+1:]...)
		case 5:
			np := g.policy(fmt.Sprintf("new%d", g.i))
			w.policies = append(w.policies, np)
			e.SetPolicy(np)
		}
		if g.n(2) == 0 { // sometimes several changes in one Apply
			continue
		}
		if err := e.Apply(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	compareAll(t, w, fk, name+" after changes")
	_, fresh := engineFor(t, w)
	if !setsEqual(fk.sets, fresh.sets) {
		t.Errorf("%s: incremental sets differ from a fresh Engine's:\n%v\n%v", name, fk.sets, fresh.sets)
	}
}

func setsEqual(a, b map[string]map[string]bool) bool {
	return maps.EqualFunc(a, b, func(x, y map[string]bool) bool { return maps.Equal(x, y) })
}

func compareAll(t *testing.T, w *world, fk *fakeKernel, when string) {
	t.Helper()
	addrs := []netip.Addr{ip("192.0.2.7"), ip("10.32.0.254"), ip("10.33.0.1")}
	for _, p := range w.pods {
		addrs = append(addrs, p.IPs...)
	}
	bad := 0
	for _, src := range addrs {
		for _, dst := range addrs {
			for _, proto := range []uint8{protoTCP, protoUDP, protoSCTP, 1} {
				for _, port := range []uint16{53, 80, 85, 8080, 65535} {
					for _, st := range []ctState{ctNew, ctEstablished, ctInvalid} {
						if st != ctNew && port != 80 {
							continue
						}
						pk := packet{src: src, dst: dst, proto: proto, dport: port, state: st}
						if proto == 1 {
							pk.dport = 0
						}
						want, got := w.allowed(pk), fk.allowed(pk)
						if want != got && bad < 5 {
							bad++
							t.Errorf("%s: %v: compiled allowed=%v, reference %v", when, pk, got, want)
						}
					}
				}
			}
		}
	}
	if bad > 0 {
		for _, np := range w.policies {
			t.Logf("policy %s/%s: %+v", np.Namespace, np.Name, np.Spec)
		}
		for _, p := range w.pods {
			t.Logf("pod %+v", p)
		}
		t.Logf("namespaces %v", w.namespaces)
	}
}

// gen draws a world from bytes; when they run out every choice is 0.
type gen struct {
	b []byte
	i int
}

func (g *gen) n(k int) int {
	if k <= 1 || g.i >= len(g.b) {
		return 0
	}
	v := int(g.b[g.i]) % k
	g.i++
	return v
}

func pick[T any](g *gen, xs ...T) T { return xs[g.n(len(xs))] }

func (g *gen) labels() map[string]string {
	l := map[string]string{}
	if v := pick(g, "a", "b", "c", ""); v != "" {
		l["app"] = v
	}
	if v := pick(g, "", "x", "y"); v != "" {
		l["tier"] = v
	}
	return l
}

func (g *gen) nsLabels() map[string]string {
	l := map[string]string{}
	if v := pick(g, "a", "b", ""); v != "" {
		l["team"] = v
	}
	if g.n(2) == 1 {
		l["env"] = "x"
	}
	return l
}

func (g *gen) world() *world {
	w := &world{namespaces: map[string]map[string]string{}, denyLog: g.n(2) == 1}
	for i := range 3 {
		if g.n(4) != 0 { // sometimes a namespace the engine never hears of
			w.namespaces[fmt.Sprintf("n%d", i)] = g.nsLabels()
		}
	}
	if g.n(2) == 1 {
		w.node = []netip.Addr{ip("10.32.0.254")}
	}
	for i := range 1 + g.n(7) {
		local := g.n(3) != 0
		a := netip.AddrFrom4([4]byte{10, 32, 0, byte(1 + i)})
		if !local {
			a = netip.AddrFrom4([4]byte{10, 32, 1, byte(1 + i)})
		}
		p := Pod{Namespace: fmt.Sprintf("n%d", g.n(3)), Name: fmt.Sprintf("p%d", i), IPs: []netip.Addr{a}, Labels: g.labels(), Local: local}
		for range g.n(3) {
			p.Ports = append(p.Ports, NamedPort{
				Name:     pick(g, "http", "dns", "bad"),
				Protocol: pick[corev1.Protocol](g, "", "TCP", "UDP", "SCTP", "XX"),
				Port:     pick[int32](g, 80, 53, 8080, 0, 70000, 85),
			})
		}
		w.pods = append(w.pods, p)
	}
	for i := range g.n(4) {
		w.policies = append(w.policies, g.policy(fmt.Sprintf("np%d", i)))
	}
	return w
}

func (g *gen) policy(name string) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("n%d", g.n(3)), Name: name}}
	np.Spec.PodSelector = *g.selector(false)
	for range g.n(3) {
		np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, pick[networkingv1.PolicyType](g, "Ingress", "Egress", "Ingress", "Egress", "Bogus"))
	}
	for range g.n(3) {
		np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: g.peers(), Ports: g.ports()})
	}
	for range g.n(3) {
		np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: g.peers(), Ports: g.ports()})
	}
	return np
}

// selector draws a selector; nil only when nilOK.
func (g *gen) selector(nilOK bool) *metav1.LabelSelector {
	switch g.n(5) {
	case 0:
		if nilOK {
			return nil
		}
		return &metav1.LabelSelector{}
	case 1:
		return &metav1.LabelSelector{}
	case 2:
		return &metav1.LabelSelector{MatchLabels: map[string]string{pick(g, "app", "team", "tier", "kubernetes.io/metadata.name"): pick(g, "a", "b", "x", "n1")}}
	default:
		s := &metav1.LabelSelector{}
		for range 1 + g.n(2) {
			op := pick[metav1.LabelSelectorOperator](g, "In", "NotIn", "Exists", "DoesNotExist", "Bad")
			var vals []string
			if op == "In" || op == "NotIn" || g.n(6) == 0 {
				for range g.n(3) {
					vals = append(vals, pick(g, "a", "b", "x", "n0"))
				}
			}
			s.MatchExpressions = append(s.MatchExpressions, metav1.LabelSelectorRequirement{
				Key: pick(g, "app", "team", "tier", "env"), Operator: op, Values: vals})
		}
		return s
	}
}

func (g *gen) peers() []networkingv1.NetworkPolicyPeer {
	var out []networkingv1.NetworkPolicyPeer
	for range g.n(3) {
		var p networkingv1.NetworkPolicyPeer
		switch g.n(5) {
		case 0:
			b := &networkingv1.IPBlock{CIDR: pick(g, "10.32.0.0/16", "10.32.0.0/24", "0.0.0.0/0", "192.0.2.0/24", "bogus", "fd00::/8", "10.32.0.8/29", "10.32.1.5/32")}
			for range g.n(3) {
				b.Except = append(b.Except, pick(g, "10.32.0.0/28", "10.32.0.4/30", "nonsense", "10.32.1.0/24", "::/0", "10.32.0.2/32"))
			}
			p.IPBlock = b
			if g.n(8) == 0 {
				p.PodSelector = &metav1.LabelSelector{}
			}
		default:
			p.PodSelector = g.selector(true)
			p.NamespaceSelector = g.selector(true)
		}
		out = append(out, p)
	}
	return out
}

func (g *gen) ports() []networkingv1.NetworkPolicyPort {
	var out []networkingv1.NetworkPolicyPort
	for range g.n(3) {
		var pp networkingv1.NetworkPolicyPort
		if pr := pick[corev1.Protocol](g, "", "TCP", "UDP", "SCTP", "ICMP"); pr != "" {
			pp.Protocol = &pr
		}
		switch g.n(4) {
		case 0:
		case 1, 2:
			v := intstr.FromInt32(pick[int32](g, 80, 53, 8080, 65535, 0, 70000, -1, 85))
			pp.Port = &v
		case 3:
			v := intstr.FromString(pick(g, "http", "dns", "bad", ""))
			pp.Port = &v
		}
		if g.n(3) == 0 {
			pp.EndPort = ptr(pick[int32](g, 80, 90, 8080, 8081, 100000, 10))
		}
		out = append(out, pp)
	}
	return out
}

// The fuzz body, run over many generated worlds in a plain test run, so
// `go test` covers far more than the seeds.
func TestCompileRandomWorlds(t *testing.T) {
	n := 400
	if testing.Short() {
		n = 300
	}
	state := uint64(0x9e3779b97f4a7c15)
	for i := range n {
		b := make([]byte, 120)
		for j := range b {
			state ^= state << 13
			state ^= state >> 7
			state ^= state << 17
			b[j] = byte(state)
		}
		checkWorld(t, b, fmt.Sprintf("world %d", i))
		if t.Failed() {
			return
		}
	}
}
