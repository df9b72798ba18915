package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Builders for policies in tests.

func sel(kv ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func mexpr(key string, op metav1.LabelSelectorOperator, values ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}

func netpol(ns, name string, target *metav1.LabelSelector, types ...networkingv1.PolicyType) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: *target, PolicyTypes: types},
	}
}

type ruleSpec struct {
	peers []networkingv1.NetworkPolicyPeer
	ports []networkingv1.NetworkPolicyPort
}

func withIngress(np *networkingv1.NetworkPolicy, rs ...ruleSpec) *networkingv1.NetworkPolicy {
	for _, r := range rs {
		np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: r.peers, Ports: r.ports})
	}
	return np
}

func withEgress(np *networkingv1.NetworkPolicy, rs ...ruleSpec) *networkingv1.NetworkPolicy {
	for _, r := range rs {
		np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: r.peers, Ports: r.ports})
	}
	return np
}

func podPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: s}
}

func nsPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: s}
}

func bothPeer(ns, pod *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: ns, PodSelector: pod}
}

func blockPeer(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func port(proto corev1.Protocol, p int32) networkingv1.NetworkPolicyPort {
	v := intstr.FromInt32(p)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &v}
}

func portRange(proto corev1.Protocol, p, end int32) networkingv1.NetworkPolicyPort {
	pp := port(proto, p)
	pp.EndPort = &end
	return pp
}

func namedPort(proto corev1.Protocol, name string) networkingv1.NetworkPolicyPort {
	v := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &v}
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// The test cluster, seen from one node (10.32.0.1; its pods 10.32.0.x,
// the other node's 10.32.1.x).
var (
	nodeAddr = ip("10.32.0.1")
	webIP    = ip("10.32.0.10")
	web2IP   = ip("10.32.0.12")
	dbIP     = ip("10.32.0.11")
	rwebIP   = ip("10.32.1.10")
	clientIP = ip("10.32.0.20")
	toolIP   = ip("10.32.1.20")
	xIP      = ip("10.32.0.30")
	extIP    = ip("192.0.2.5")
)

func testWorld() *world {
	return &world{
		namespaces: map[string]map[string]string{
			"prod":  {"team": "a", "env": "prod"},
			"dev":   {"team": "b"},
			"other": {},
		},
		pods: []Pod{
			{Namespace: "prod", Name: "web", IPs: []netip.Addr{webIP}, Labels: map[string]string{"app": "web", "tier": "front"}, Local: true,
				Ports: []NamedPort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080}}},
			{Namespace: "prod", Name: "web2", IPs: []netip.Addr{web2IP}, Labels: map[string]string{"app": "web"}, Local: true,
				Ports: []NamedPort{{Name: "http", Port: 9090}}},
			{Namespace: "prod", Name: "db", IPs: []netip.Addr{dbIP}, Labels: map[string]string{"app": "db"}, Local: true,
				Ports: []NamedPort{{Name: "pg", Protocol: corev1.ProtocolTCP, Port: 5432}}},
			{Namespace: "prod", Name: "rweb", IPs: []netip.Addr{rwebIP}, Labels: map[string]string{"app": "web"}},
			{Namespace: "dev", Name: "client", IPs: []netip.Addr{clientIP}, Labels: map[string]string{"app": "client"}, Local: true},
			{Namespace: "dev", Name: "tool", IPs: []netip.Addr{toolIP}, Labels: map[string]string{"app": "tool"}},
			{Namespace: "other", Name: "x", IPs: []netip.Addr{xIP}, Local: true},
		},
		node: []netip.Addr{nodeAddr},
	}
}

func tcp(src, dst netip.Addr, dport uint16) packet {
	return packet{src: src, dst: dst, proto: protoTCP, dport: dport}
}

func udp(src, dst netip.Addr, dport uint16) packet {
	return packet{src: src, dst: dst, proto: protoUDP, dport: dport}
}

func withState(p packet, s ctState) packet { p.state = s; return p }

// engineFor loads w into an Engine over a fake kernel and applies it.
func engineFor(t testing.TB, w *world) (*Engine, *fakeKernel) {
	t.Helper()
	fk := newFakeKernel(t)
	e := newEngine(Config{NodeAddrs: func() []netip.Addr { return w.node }, DenyLog: w.denyLog}, slog.New(slog.DiscardHandler), fk)
	for ns, l := range w.namespaces {
		e.SetNamespace(ns, l)
	}
	for _, p := range w.pods {
		e.SetPod(p)
	}
	for _, np := range w.policies {
		e.SetPolicy(np)
	}
	if err := e.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	return e, fk
}

type verdictCase struct {
	pk    packet
	allow bool
}

func TestVerdicts(t *testing.T) {
	const TCP, UDP, SCTP = corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP
	I, E := networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress
	all := &metav1.LabelSelector{}
	cases := []struct {
		name     string
		policies []*networkingv1.NetworkPolicy
		wantErr  string // in Status.LastError
		checks   []verdictCase
	}{
		{
			name: "no policy allows all",
			checks: []verdictCase{
				{tcp(clientIP, webIP, 80), true}, {tcp(webIP, extIP, 443), true}, {udp(toolIP, dbIP, 53), true},
				{packet{src: clientIP, dst: webIP, proto: 1}, true},
			},
		},
		{
			name:     "default deny ingress",
			policies: []*networkingv1.NetworkPolicy{netpol("prod", "deny", all, I)},
			checks: []verdictCase{
				{tcp(clientIP, webIP, 8080), false},
				{tcp(toolIP, webIP, 8080), false},                   // from the other node
				{tcp(dbIP, webIP, 8080), false},                     // same namespace
				{packet{src: clientIP, dst: dbIP, proto: 1}, false}, // ICMP too
				{tcp(webIP, clientIP, 80), true},                    // egress not isolated
				{tcp(xIP, clientIP, 80), true},                      // unselected pod
				{tcp(nodeAddr, webIP, 8080), true},                  // own node
				{withState(tcp(clientIP, webIP, 8080), ctEstablished), true},
				{withState(tcp(clientIP, webIP, 8080), ctInvalid), false},
				{withState(tcp(webIP, clientIP, 80), ctInvalid), true}, // client is not isolated
				{tcp(extIP, webIP, 80), false},
			},
		},
		{
			name: "allow from namespace",
			policies: []*networkingv1.NetworkPolicy{
				netpol("prod", "deny", all, I),
				withIngress(netpol("prod", "from-dev", all), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{nsPeer(sel("team", "b"))}}),
			},
			checks: []verdictCase{
				{tcp(clientIP, webIP, 8080), true}, {tcp(toolIP, dbIP, 5432), true},
				{tcp(xIP, webIP, 8080), false}, {tcp(dbIP, webIP, 8080), false}, {tcp(extIP, webIP, 8080), false},
			},
		},
		{
			name: "namespace by its name label",
			policies: []*networkingv1.NetworkPolicy{
				withIngress(netpol("prod", "from-other", all), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{nsPeer(sel("kubernetes.io/metadata.name", "other"))}}),
			},
			checks: []verdictCase{{tcp(xIP, webIP, 80), true}, {tcp(clientIP, webIP, 80), false}},
		},
		{
			name: "pod and namespace selector combined vs separate",
			policies: []*networkingv1.NetworkPolicy{
				withIngress(netpol("prod", "and", sel("app", "web")), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{bothPeer(sel("team", "b"), sel("app", "client"))}}),
				withIngress(netpol("prod", "or", sel("app", "db")), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{nsPeer(sel("team", "b")), podPeer(sel("app", "web"))}}),
			},
			checks: []verdictCase{
				{tcp(clientIP, webIP, 80), true}, {tcp(toolIP, webIP, 80), false}, {tcp(dbIP, webIP, 80), false},
				{tcp(toolIP, dbIP, 80), true}, {tcp(clientIP, dbIP, 80), true}, {tcp(webIP, dbIP, 80), true},
				{tcp(rwebIP, dbIP, 80), true}, {tcp(xIP, dbIP, 80), false},
			},
		},
		{
			name: "ipBlock with except",
			policies: []*networkingv1.NetworkPolicy{
				withIngress(netpol("prod", "block", all), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{blockPeer("10.32.0.0/16", "10.32.0.20/32", "10.32.1.0/24")}}),
			},
			checks: []verdictCase{
				{tcp(xIP, webIP, 80), true}, {tcp(clientIP, webIP, 80), false}, {tcp(toolIP, webIP, 80), false},
				{tcp(extIP, webIP, 80), false}, {tcp(ip("10.32.200.1"), webIP, 80), true},
			},
		},
		{
			name: "named port resolves per destination pod",
			policies: []*networkingv1.NetworkPolicy{
				withIngress(netpol("prod", "http", sel("app", "web")), ruleSpec{ports: []networkingv1.NetworkPolicyPort{namedPort(TCP, "http")}}),
			},
			checks: []verdictCase{
				{tcp(clientIP, webIP, 8080), true}, {tcp(clientIP, webIP, 9090), false}, {udp(clientIP, webIP, 8080), false},
				{tcp(clientIP, web2IP, 9090), true}, {tcp(clientIP, web2IP, 8080), false},
			},
		},
		{
			name: "endPort range",
			policies: []*networkingv1.NetworkPolicy{
				withIngress(netpol("prod", "range", all), ruleSpec{ports: []networkingv1.NetworkPolicyPort{portRange(TCP, 8000, 8100), port(TCP, 22)}}),
			},
			checks: []verdictCase{
				{tcp(clientIP, webIP, 8000), true}, {tcp(clientIP, webIP, 8080), true}, {tcp(clientIP, webIP, 8100), true},
				{tcp(clientIP, webIP, 8101), false}, {tcp(clientIP, webIP, 7999), false}, {tcp(clientIP, webIP, 22), true},
				{udp(clientIP, webIP, 8080), false},
			},
		},
		{
			name: "protocols",
			policies: []*networkingv1.NetworkPolicy{
				withIngress(netpol("prod", "protos", all), ruleSpec{ports: []networkingv1.NetworkPolicyPort{port(UDP, 53), port(SCTP, 9000), {Protocol: ptr(corev1.ProtocolTCP)}}}),
			},
			checks: []verdictCase{
				{udp(clientIP, webIP, 53), true}, {udp(clientIP, webIP, 54), false},
				{packet{src: clientIP, dst: webIP, proto: protoSCTP, dport: 9000}, true},
				{packet{src: clientIP, dst: webIP, proto: protoSCTP, dport: 53}, false},
				{tcp(clientIP, webIP, 1), true}, {tcp(clientIP, webIP, 65535), true}, // all TCP ports
				{packet{src: clientIP, dst: webIP, proto: 1}, false},
			},
		},
		{
			name: "egress",
			policies: []*networkingv1.NetworkPolicy{
				withEgress(netpol("prod", "web-out", sel("app", "web"), E), ruleSpec{
					peers: []networkingv1.NetworkPolicyPeer{podPeer(sel("app", "db"))},
					ports: []networkingv1.NetworkPolicyPort{port(TCP, 5432)},
				}),
			},
			checks: []verdictCase{
				{tcp(webIP, dbIP, 5432), true}, {tcp(webIP, dbIP, 80), false}, {tcp(webIP, extIP, 443), false},
				{tcp(webIP, nodeAddr, 10250), true}, {tcp(dbIP, extIP, 443), true}, {tcp(clientIP, webIP, 80), true},
				{withState(tcp(webIP, extIP, 443), ctEstablished), true},
				{tcp(rwebIP, extIP, 443), true}, // a remote pod's egress is its node's business
			},
		},
		{
			name: "policyTypes default: egress rules make egress isolated too",
			policies: []*networkingv1.NetworkPolicy{
				withEgress(netpol("prod", "web-out", sel("app", "web")), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{blockPeer("192.0.2.0/24")}}),
			},
			checks: []verdictCase{
				{tcp(webIP, extIP, 443), true}, {tcp(webIP, ip("198.51.100.1"), 443), false},
				{tcp(clientIP, webIP, 80), false}, // ingress isolated, no ingress rule
			},
		},
		{
			name: "policyTypes egress only ignores ingress rules",
			policies: []*networkingv1.NetworkPolicy{
				withIngress(netpol("prod", "e", sel("app", "web"), E), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{podPeer(sel("app", "db"))}}),
			},
			checks: []verdictCase{{tcp(clientIP, webIP, 80), true}, {tcp(webIP, clientIP, 80), false}},
		},
		{
			name: "empty selectors",
			policies: []*networkingv1.NetworkPolicy{
				withIngress(netpol("prod", "same-ns", sel("app", "web")), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{podPeer(all)}}),
				withIngress(netpol("prod", "all-ns", sel("app", "db")), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{nsPeer(all)}}),
			},
			checks: []verdictCase{
				{tcp(dbIP, webIP, 80), true}, {tcp(rwebIP, webIP, 80), true}, {tcp(clientIP, webIP, 80), false},
				{tcp(clientIP, dbIP, 80), true}, {tcp(toolIP, dbIP, 80), true}, {tcp(extIP, dbIP, 80), false},
			},
		},
		{
			name: "match expressions",
			policies: []*networkingv1.NetworkPolicy{
				withIngress(netpol("prod", "in", sel("app", "web")), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{nsPeer(mexpr("team", metav1.LabelSelectorOpIn, "b", "c"))}}),
				withIngress(netpol("prod", "notin", sel("app", "db")), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{bothPeer(all, mexpr("app", metav1.LabelSelectorOpNotIn, "client", "web"))}}),
				withIngress(netpol("dev", "exists", all), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{nsPeer(mexpr("env", metav1.LabelSelectorOpExists))}}),
				withIngress(netpol("other", "dne", all), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{nsPeer(mexpr("team", metav1.LabelSelectorOpDoesNotExist))}}),
			},
			checks: []verdictCase{
				{tcp(clientIP, webIP, 80), true}, {tcp(dbIP, webIP, 80), false},
				{tcp(toolIP, dbIP, 80), true}, {tcp(xIP, dbIP, 80), true}, {tcp(clientIP, dbIP, 80), false}, {tcp(rwebIP, dbIP, 80), false},
				{tcp(webIP, clientIP, 80), true}, {tcp(toolIP, clientIP, 80), false},
				{tcp(clientIP, xIP, 80), false}, {tcp(webIP, xIP, 80), false},
			},
		},
		{
			name: "union of policies",
			policies: []*networkingv1.NetworkPolicy{
				withIngress(netpol("prod", "a", sel("app", "web")), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{nsPeer(sel("team", "b"))}, ports: []networkingv1.NetworkPolicyPort{port(TCP, 8080)}}),
				withIngress(netpol("prod", "b", sel("tier", "front")), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{podPeer(sel("app", "db"))}}),
			},
			checks: []verdictCase{
				{tcp(clientIP, webIP, 8080), true}, {tcp(clientIP, webIP, 80), false}, {tcp(dbIP, webIP, 80), true},
				{tcp(dbIP, web2IP, 80), false}, {tcp(clientIP, web2IP, 8080), true},
			},
		},
		{
			name: "egress and ingress both on this node",
			policies: []*networkingv1.NetworkPolicy{
				withEgress(netpol("prod", "web-out", sel("app", "web"), E), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{podPeer(sel("app", "db"))}}),
				withIngress(netpol("prod", "db-in", sel("app", "db"), I), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{podPeer(sel("app", "web"))}, ports: []networkingv1.NetworkPolicyPort{port(TCP, 5432)}}),
			},
			checks: []verdictCase{
				{tcp(webIP, dbIP, 5432), true}, {tcp(webIP, dbIP, 80), false}, {tcp(clientIP, dbIP, 5432), false},
				{tcp(rwebIP, dbIP, 5432), true},
			},
		},
		{
			name: "invalid parts fail closed",
			policies: []*networkingv1.NetworkPolicy{
				withIngress(netpol("prod", "bad", sel("app", "web")),
					ruleSpec{ports: []networkingv1.NetworkPolicyPort{port(TCP, 0)}},                          // every port invalid: nothing
					ruleSpec{peers: []networkingv1.NetworkPolicyPeer{blockPeer("bogus")}},                    // every peer invalid: nothing
					ruleSpec{peers: []networkingv1.NetworkPolicyPeer{blockPeer("10.32.0.0/16", "nonsense")}}, // bad except: nothing
					ruleSpec{ports: []networkingv1.NetworkPolicyPort{portRange(TCP, 9000, 8000), port("ICMP", 1), port(UDP, 70000)}},
					ruleSpec{peers: []networkingv1.NetworkPolicyPeer{nsPeer(mexpr("team", "Bogus", "b")), podPeer(sel("app", "db"))}}, // one good peer
				),
			},
			wantErr: "bad",
			checks: []verdictCase{
				{tcp(clientIP, webIP, 80), false}, {tcp(clientIP, webIP, 8500), false}, {udp(clientIP, webIP, 4464), false},
				{tcp(xIP, webIP, 80), false}, {tcp(dbIP, webIP, 80), true},
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := testWorld()
			w.policies = c.policies
			e, fk := engineFor(t, w)
			for _, vc := range c.checks {
				if got := w.allowed(vc.pk); got != vc.allow {
					t.Errorf("reference: %v allowed=%v, want %v", vc.pk, got, vc.allow)
				}
				if got := fk.allowed(vc.pk); got != vc.allow {
					t.Errorf("compiled: %v allowed=%v, want %v", vc.pk, got, vc.allow)
				}
			}
			st := e.Status()
			if c.wantErr == "" && st.LastError != "" {
				t.Errorf("LastError %q", st.LastError)
			}
			if c.wantErr != "" && !strings.Contains(st.LastError, c.wantErr) {
				t.Errorf("LastError %q, want it to mention %q", st.LastError, c.wantErr)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestSelectedAndStatus(t *testing.T) {
	w := testWorld()
	w.policies = []*networkingv1.NetworkPolicy{
		netpol("prod", "deny", sel("app", "web"), networkingv1.PolicyTypeIngress),
		netpol("prod", "deny-out", sel("app", "db"), networkingv1.PolicyTypeEgress),
	}
	e, _ := engineFor(t, w)
	for _, c := range []struct {
		ns, name string
		in, out  bool
	}{{"prod", "web", true, false}, {"prod", "db", false, true}, {"prod", "rweb", false, false}, {"dev", "client", false, false}, {"no", "pod", false, false}} {
		if in, out := e.Selected(c.ns, c.name); in != c.in || out != c.out {
			t.Errorf("Selected(%s/%s) = %v,%v, want %v,%v", c.ns, c.name, in, out, c.in, c.out)
		}
	}
	st := e.Status()
	if st.Policies != 2 || st.LocalPods != 5 || st.SelectedLocal != 3 || st.LastApply.IsZero() || st.Rules == 0 || st.Sets == 0 {
		t.Errorf("status %+v", st)
	}
}

// A label change is a set element update only: no rule is rewritten, and
// reachability flips.
func TestLabelChangeIsElementUpdate(t *testing.T) {
	w := testWorld()
	w.policies = []*networkingv1.NetworkPolicy{
		netpol("prod", "deny", sel("app", "web"), networkingv1.PolicyTypeIngress),
		withIngress(netpol("prod", "from-db", sel("app", "web")), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{podPeer(sel("app", "db"))}}),
	}
	e, fk := engineFor(t, w)
	if fk.allowed(tcp(clientIP, webIP, 80)) || !fk.allowed(tcp(dbIP, webIP, 80)) {
		t.Fatal("initial verdicts wrong")
	}
	prog := fk.prog
	// web loses its label: no longer isolated.
	p := w.pods[0]
	p.Labels = map[string]string{"app": "web-old"}
	e.SetPod(p)
	if err := e.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fk.fulls != 1 || fk.diffs != 1 || fk.prog != prog {
		t.Fatalf("label change: %d full writes, %d diffs (want 1, 1)", fk.fulls, fk.diffs)
	}
	if !fk.allowed(tcp(clientIP, webIP, 80)) {
		t.Error("web still isolated after losing its label")
	}
	// The remote web pod gets the db label: now allowed in to web2.
	if fk.allowed(tcp(rwebIP, web2IP, 80)) {
		t.Fatal("rweb allowed before its label change")
	}
	c := w.pods[3]
	c.Labels = map[string]string{"app": "db"}
	e.SetPod(c)
	if err := e.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !fk.allowed(tcp(rwebIP, web2IP, 80)) || fk.allowed(tcp(xIP, web2IP, 80)) {
		t.Error("rweb's new label not in force")
	}
	if fk.elemOps != 2 { // out of app=web, into app=db
		t.Errorf("label change sent %d set elements, want 2", fk.elemOps)
	}
	// Unchanged inputs: no kernel write at all.
	e.SetPod(c)
	diffs := fk.diffs
	if err := e.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fk.diffs != diffs {
		t.Error("an Apply without changes wrote to the kernel")
	}
	// The same policy again (an informer's resync): nothing to do.
	diffs = fk.diffs
	e.SetPolicy(w.policies[1])
	if err := e.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fk.diffs != diffs {
		t.Error("re-setting an unchanged policy wrote to the kernel")
	}
	// Namespace relabel moves its pods in and out of namespace selectors.
	e.SetPolicy(withIngress(netpol("prod", "from-dev", sel("app", "web")), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{nsPeer(sel("team", "b"))}}))
	if err := e.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !fk.allowed(tcp(toolIP, web2IP, 80)) {
		t.Fatal("tool not allowed from team b")
	}
	e.SetNamespace("dev", map[string]string{"team": "z"})
	if err := e.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fk.allowed(tcp(toolIP, web2IP, 80)) {
		t.Error("tool still allowed after its namespace lost the label")
	}
	// Deleting a pod takes its addresses out of every set.
	e.DeletePod("prod", "db")
	if err := e.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	for name, s := range fk.sets {
		if s[addrKey(dbIP)] {
			t.Errorf("deleted pod's address still in set %s", name)
		}
	}
	// Deleting the policies: nothing isolated.
	e.DeletePolicy("prod", "deny")
	e.DeletePolicy("prod", "from-db")
	e.DeletePolicy("prod", "from-dev")
	if err := e.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !fk.allowed(tcp(extIP, web2IP, 80)) || len(fk.sets[setIngressIso]) != 0 {
		t.Error("isolation left after the policies went")
	}
}

// After a failed write the next Apply rewrites everything, so the kernel
// never stays behind.
func TestApplyAfterFailureRewrites(t *testing.T) {
	w := testWorld()
	w.policies = []*networkingv1.NetworkPolicy{netpol("prod", "deny", sel("app", "web"), networkingv1.PolicyTypeIngress)}
	e, fk := engineFor(t, w)
	fk.fail = errors.New("netlink: boom")
	fk.failOnce = false
	p := w.pods[1]
	p.Labels = map[string]string{"app": "web"}
	p.Name = "web3"
	p.IPs = []netip.Addr{ip("10.32.0.13")}
	e.SetPod(p)
	if err := e.Apply(context.Background()); err == nil {
		t.Fatal("Apply hid the kernel's error")
	}
	if st := e.Status(); !strings.Contains(st.LastError, "boom") {
		t.Errorf("LastError %q", st.LastError)
	}
	fk.fail = nil
	if err := e.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fk.fulls != 2 {
		t.Errorf("%d full writes, want 2", fk.fulls)
	}
	if fk.allowed(tcp(clientIP, ip("10.32.0.13"), 80)) {
		t.Error("new pod not isolated after recovery")
	}
	if st := e.Status(); st.LastError != "" {
		t.Errorf("LastError after recovery %q", st.LastError)
	}
}

// Rules and sets grow with the policies, not with the pods.
func TestScaleWithPolicies(t *testing.T) {
	count := func(pods int) Status {
		fk := newFakeKernel(t)
		e := newEngine(Config{}, slog.New(slog.DiscardHandler), fk)
		loadScale(e, 200, pods)
		if err := e.Apply(context.Background()); err != nil {
			t.Fatal(err)
		}
		return e.Status()
	}
	small, big := count(100), count(1000)
	if small.Sets != big.Sets || small.Rules != big.Rules {
		t.Errorf("100 pods: %d sets %d rules; 1000 pods: %d sets %d rules", small.Sets, small.Rules, big.Sets, big.Rules)
	}
	if big.Rules > 4*200+10 || big.Sets > 3*200+10 {
		t.Errorf("200 policies: %d rules, %d sets", big.Rules, big.Sets)
	}
	t.Logf("200 policies x 1000 pods: %d sets, %d rules, %d local pods selected", big.Sets, big.Rules, big.SelectedLocal)
}

// loadScale gives e n policies over 20 namespaces and the given number of
// pods (a tenth of them local), each policy allowing in from one app in
// its namespace and from one namespace, on a port.
func loadScale(e *Engine, n, pods int) {
	for i := range 20 {
		e.SetNamespace(fmt.Sprintf("ns%d", i), map[string]string{"team": fmt.Sprintf("t%d", i%5)})
	}
	for i := range pods {
		e.SetPod(Pod{
			Namespace: fmt.Sprintf("ns%d", i%20), Name: fmt.Sprintf("pod%d", i),
			IPs:    []netip.Addr{netip.AddrFrom4([4]byte{10, 32, byte(i >> 8), byte(i)})},
			Labels: map[string]string{"app": fmt.Sprintf("app%d", i%50), "role": fmt.Sprintf("r%d", i%7)},
			Ports:  []NamedPort{{Name: "http", Port: 8080}},
			Local:  i%10 == 0,
		})
	}
	for i := range n {
		np := withIngress(netpol(fmt.Sprintf("ns%d", i%20), fmt.Sprintf("p%d", i), sel("app", fmt.Sprintf("app%d", i%50))),
			ruleSpec{
				peers: []networkingv1.NetworkPolicyPeer{podPeer(sel("role", fmt.Sprintf("r%d", i%7))), nsPeer(sel("team", fmt.Sprintf("t%d", i%5)))},
				ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolTCP, int32(8000+i%10))},
			})
		e.SetPolicy(np)
	}
}

// Without br_netfilter the table is still written (remote traffic is
// covered) and the status says what is not.
func TestNoBridgeNFIsReported(t *testing.T) {
	fk := newFakeKernel(t)
	fk.bridgeErr = ErrNoBridgeNF
	e := newEngine(Config{}, slog.New(slog.DiscardHandler), fk)
	e.SetPolicy(netpol("prod", "deny", sel(), networkingv1.PolicyTypeIngress))
	if err := e.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fk.fulls != 1 || !strings.Contains(e.Status().LastError, "br_netfilter") {
		t.Errorf("%d writes, LastError %q", fk.fulls, e.Status().LastError)
	}
	fk.bridgeErr = nil
	if err := e.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := e.Status(); st.LastError != "" {
		t.Errorf("LastError %q once br_netfilter is there", st.LastError)
	}
}

// An incremental change the kernel refuses is followed, in the same Apply,
// by a full rewrite.
func TestApplyFallsBackToFullWrite(t *testing.T) {
	w := testWorld()
	w.policies = []*networkingv1.NetworkPolicy{netpol("prod", "deny", sel("app", "web"), networkingv1.PolicyTypeIngress)}
	e, fk := engineFor(t, w)
	fk.fail, fk.failOnce = errors.New("netlink: no such table"), true
	p := w.pods[4]
	p.Labels = map[string]string{"app": "web"}
	p.Namespace = "prod"
	e.SetPod(p)
	if err := e.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fk.fulls != 2 || fk.allowed(tcp(xIP, clientIP, 80)) {
		t.Errorf("%d full writes (want 2); new member isolated: %v", fk.fulls, !fk.allowed(tcp(xIP, clientIP, 80)))
	}
}

// Inputs, Apply and the readers from many goroutines (run with -race).
func TestConcurrentUse(t *testing.T) {
	w := testWorld()
	w.policies = []*networkingv1.NetworkPolicy{netpol("prod", "deny", sel("app", "web"), networkingv1.PolicyTypeIngress)}
	e, _ := engineFor(t, w)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				p := w.pods[(g+i)%len(w.pods)]
				p.Labels = map[string]string{"app": fmt.Sprintf("a%d", i%3)}
				e.SetPod(p)
				e.SetNamespace("dev", map[string]string{"team": fmt.Sprint(i % 2)})
				if i%10 == 0 {
					e.SetPolicy(netpol("prod", fmt.Sprintf("p%d", g), sel("app", fmt.Sprintf("a%d", i%3))))
				}
				if err := e.Apply(context.Background()); err != nil {
					t.Error(err)
					return
				}
				_ = e.Status()
				_, _ = e.Drops()
				_, _ = e.Selected("prod", "web")
			}
		}()
	}
	wg.Wait()
	// After all that, a fresh Engine with the same inputs agrees.
	final := newFakeKernel(t)
	f := newEngine(Config{NodeAddrs: func() []netip.Addr { return w.node }}, slog.New(slog.DiscardHandler), final)
	e.mu.Lock()
	for ns, l := range e.namespaces {
		f.SetNamespace(ns, l)
	}
	for _, ps := range e.pods {
		f.SetPod(ps.pod)
	}
	for _, np := range e.policies {
		f.SetPolicy(np)
	}
	e.mu.Unlock()
	if err := f.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !setsEqual(e.kern.(*fakeKernel).sets, final.sets) {
		t.Error("sets after concurrent use differ from a fresh Engine's")
	}
}

// A policy change at scale (200 policies, 1000 pods) rewrites only the
// changed policy's chain and its jump: the kernel gets a handful of rules,
// not the whole ruleset, and the verdicts stay those of a fresh Engine.
func TestPolicyChangeWorkIsBounded(t *testing.T) {
	fk := newFakeKernel(t)
	e := newEngine(Config{}, slog.New(slog.DiscardHandler), fk)
	loadScale(e, 200, 1000)
	ctx := context.Background()
	if err := e.Apply(ctx); err != nil {
		t.Fatal(err)
	}
	total := e.Status().Rules
	extra := withIngress(netpol("ns1", "extra", sel("app", "app1")),
		ruleSpec{peers: []networkingv1.NetworkPolicyPeer{podPeer(sel("role", "r3"))}, ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolTCP, 80)}})
	changed := withIngress(netpol("ns1", "extra", sel("app", "app2")),
		ruleSpec{peers: []networkingv1.NetworkPolicyPeer{podPeer(sel("role", "r4"))}})
	steps := []struct {
		name      string
		do        func()
		wantRules int // rules sent: the policy's one rule (+ its jump)
	}{
		{"add", func() { e.SetPolicy(extra) }, 2},
		{"change", func() { e.SetPolicy(changed) }, 2},
		{"delete", func() { e.DeletePolicy("ns1", "extra") }, 0},
		{"add a default deny (no chain)", func() { e.SetPolicy(netpol("ns2", "deny", sel(), networkingv1.PolicyTypeIngress)) }, 0},
		{"change one of the 200", func() {
			e.SetPolicy(withIngress(netpol("ns7", "p7", sel("app", "app7")), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{podPeer(sel("role", "r1"))}}))
		}, 1},
	}
	for _, s := range steps {
		fulls := fk.fulls
		s.do()
		if err := e.Apply(ctx); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if fk.fulls != fulls {
			t.Errorf("%s: the table was rewritten", s.name)
		}
		if fk.ruleOps != s.wantRules {
			t.Errorf("%s: %d rules sent to the kernel, want %d (the table has %d)", s.name, fk.ruleOps, s.wantRules, total)
		}
		// The kernel's state gives the same verdicts as a fresh Engine's.
		fresh := newFakeKernel(t)
		e2 := newEngine(Config{}, slog.New(slog.DiscardHandler), fresh)
		e.mu.Lock()
		for _, np := range e.policies {
			e2.SetPolicy(np)
		}
		for ns, l := range e.namespaces {
			e2.SetNamespace(ns, l)
		}
		for _, ps := range e.pods {
			e2.SetPod(ps.pod)
		}
		e.mu.Unlock()
		if err := e2.Apply(ctx); err != nil {
			t.Fatal(err)
		}
		if !setsEqual(fk.sets, fresh.sets) {
			t.Errorf("%s: sets differ from a fresh Engine's", s.name)
		}
		for _, pk := range []packet{
			tcp(netip.MustParseAddr("10.32.0.3"), netip.MustParseAddr("10.32.0.1"), 80),
			tcp(netip.MustParseAddr("10.32.0.10"), netip.MustParseAddr("10.32.0.52"), 8002),
			tcp(netip.MustParseAddr("10.32.0.4"), netip.MustParseAddr("10.32.0.2"), 80),
			tcp(netip.MustParseAddr("10.32.1.44"), netip.MustParseAddr("10.32.0.7"), 8007),
		} {
			if got, want := fk.allowed(pk), fresh.allowed(pk); got != want {
				t.Errorf("%s: %v allowed=%v, a fresh Engine says %v", s.name, pk, got, want)
			}
		}
	}
}
