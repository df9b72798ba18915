package agent_test

// NetworkPolicy glue against whole agents (agenttest) in Kubernetes mode:
// the objects come from a fake clientset through the real informers, the
// engine is agenttest's in-memory one. policy_kube_test.go does the same
// against a real kube-apiserver and the real engine.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftnet/weft/kube/client/clientset"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/weftnet/weft/agent"
	"github.com/weftnet/weft/agent/agenttest"
	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/policy"
)

// kubeAgent is one agent in Kubernetes mode on client, with eng as its
// policy engine, ready.
func kubeAgent(t *testing.T, client kubernetes.Interface, eng *agenttest.PolicyEngine, networkPolicy bool) (*agenttest.Cluster, *agenttest.Node) {
	t.Helper()
	c := agenttest.New(t, agenttest.Options{N: 1, IPAMInit: "consensus=1", Configure: func(_ int, cfg *agent.Config) {
		cfg.Kube, cfg.NetworkPolicy = true, networkPolicy
		cfg.Devices.KubeClient = clientset.Wrap(client)
		cfg.Devices.PolicyEngine = eng.Factory
	}})
	c.StartAll()
	c.WaitFormed()
	return c, c.Nodes[0]
}

func policyPod(ns, name, node string, l map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: l},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "x",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {ContainerPort: 9000}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodPending},
	}
}

func denyIngress(ns, name string, sel map[string]string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}}}
}

// waitPolicySynced waits until the agent's policy informers have synced.
func waitPolicySynced(ctx context.Context, c *agenttest.Cluster, n *agenttest.Node) {
	c.Wait("the policy informers to sync", func() error {
		st, err := n.Client.Policy(ctx)
		if err == nil && !st.Synced {
			err = errors.New("not synced")
		}
		return err
	})
}

func hasContainer(t *testing.T, n *agenttest.Node, id string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cs, err := n.Client.Containers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(cs, func(c api.Container) bool { return c.ContainerID == id })
}

func TestPolicyGatesCNIAdd(t *testing.T) {
	client := fake.NewClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "host1"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "np"}},
		policyPod("np", "web", "host1", map[string]string{"app": "web"}),
		denyIngress("np", "deny-web", map[string]string{"app": "web"}),
	)
	// The API server "fails" listing policies until released: the agent
	// must neither apply anything nor admit a pod before its first sync.
	var down atomic.Bool
	down.Store(true)
	client.PrependReactor("list", "networkpolicies", func(k8stesting.Action) (bool, runtime.Object, error) {
		if down.Load() {
			return true, nil, errors.New("connection refused")
		}
		return false, nil, nil
	})
	eng := agenttest.NewPolicyEngine()
	c, n := kubeAgent(t, client, eng, true)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	add := func(id, ns, pod string) (netip.Addr, error) {
		r, err := n.Client.Allocate(ctx, api.AllocateRequest{ContainerID: id, IfName: "eth0", PodNamespace: ns, PodName: pod})
		if err != nil {
			return netip.Addr{}, err
		}
		p, err := netip.ParsePrefix(r.Address)
		if err != nil {
			t.Fatal(err)
		}
		return p.Addr(), nil
	}

	// Not synced: "try again", and the address is given back.
	if _, err := add("c-early", "np", "web"); api.Code(err) != api.CodeNotReady {
		t.Fatalf("ADD before the informers synced: %v, want %s", err, api.CodeNotReady)
	}
	if hasContainer(t, n, "c-early") {
		t.Error("ADD turned away kept its address")
	}
	if st, err := n.Client.Policy(ctx); err != nil || !st.Enabled || st.Synced || st.Reason == "" {
		t.Errorf("policy status before sync: %+v %v", st, err)
	}
	if a := eng.Applies(); a != 0 {
		t.Fatalf("%d Apply before the first full sync; the previous agent's table must stay until then", a)
	}

	down.Store(false)
	waitPolicySynced(ctx, c, n)

	// A pod the cache does not know: "try again", no address leaked.
	start := time.Now()
	if _, err := add("c-ghost", "np", "ghost"); api.Code(err) != api.CodeNotReady {
		t.Fatalf("ADD of an unknown pod: %v, want %s", err, api.CodeNotReady)
	}
	// Bounded by the wait for the cache (1 s), not by the allocation's own
	// deadline (20 s); the margin is for a loaded test machine.
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("unknown pod answered after %v; want about 1 s", took)
	}
	if hasContainer(t, n, "c-ghost") {
		t.Error("ADD of an unknown pod kept its address")
	}

	// A known pod: when ADD returns, its address, labels and named ports
	// are applied, and it is isolated.
	addr, err := add("c-web", "np", "web")
	if err != nil {
		t.Fatal(err)
	}
	p, ok := eng.Applied("np", "web")
	if !ok || !slices.Equal(p.IPs, []netip.Addr{addr}) || !p.Local || p.Labels["app"] != "web" ||
		len(p.Ports) != 1 || p.Ports[0].Name != "http" || p.Ports[0].Port != 8080 || p.Ports[0].Protocol != corev1.ProtocolTCP {
		t.Fatalf("when ADD returned, the engine had %+v (ok=%v), want local np/web at %s with port http", p, ok, addr)
	}
	if in, _ := eng.Selected("np", "web"); !in {
		t.Error("np/web not isolated for ingress when ADD returned")
	}
	// Packets queued for the address before it was isolated are dropped:
	// its neighbour entries were flushed after the Apply that isolated it.
	if fl := eng.Flushed(); len(fl) == 0 || !slices.Equal(fl[len(fl)-1].Addrs, []netip.Addr{addr}) || !fl[len(fl)-1].Applied {
		t.Errorf("neighbour flushes when ADD returned: %+v, want the last one of [%s] after its Apply", fl, addr)
	}
	// So are the unreplied conntrack entries such packets left.
	if un := eng.Unreplied(); len(un) == 0 || !slices.Equal(un[len(un)-1].Addrs, []netip.Addr{addr}) || !un[len(un)-1].Applied {
		t.Errorf("unreplied conntrack deletes when ADD returned: %+v, want the last one of [%s] after its Apply", un, addr)
	}
	admitted := len(eng.History("np", "web"))

	// The status later confirms the address: no flap.
	pod := policyPod("np", "web", "host1", map[string]string{"app": "web"})
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: addr.String(), PodIPs: []corev1.PodIP{{IP: addr.String()}}}
	if _, err := client.CoreV1().Pods("np").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.Wait("the status update to reach the engine", func() error {
		if len(eng.History("np", "web")) <= admitted {
			return errors.New("no update yet")
		}
		return nil
	})
	for i, h := range eng.History("np", "web")[admitted-1:] {
		if !slices.Equal(h.IPs, []netip.Addr{addr}) {
			t.Errorf("update %d after ADD gave np/web the addresses %v, want %s throughout", i, h.IPs, addr)
		}
	}

	// A label change takes it out of the policy.
	pod.Labels = map[string]string{"app": "other"}
	if _, err := client.CoreV1().Pods("np").Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.Wait("np/web no longer selected", func() error {
		if in, _ := eng.Selected("np", "web"); in {
			return errors.New("still selected")
		}
		return nil
	})

	// A burst of 200 pods elsewhere is a few transactions, not 200.
	before, burst := eng.Applies(), time.Now()
	for i := range 200 {
		p := policyPod("np", fmt.Sprintf("remote-%d", i), "host2", nil)
		p.Status.PodIPs = []corev1.PodIP{{IP: fmt.Sprintf("10.40.%d.%d", i/200, i%200+1)}}
		if _, err := client.CoreV1().Pods("np").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	c.Wait("the 200 remote pods applied", func() error {
		if got := eng.AppliedPods(); got < 201 {
			return fmt.Errorf("%d pods applied", got)
		}
		return nil
	})
	// The fake API server takes a while to create 200 pods: at most one
	// transaction per debounce window (20 ms) of that, where one per event
	// would be 200.
	took := time.Since(burst)
	if n, most := eng.Applies()-before, int(took/(20*time.Millisecond))+5; n > most {
		t.Errorf("200 pod events over %v took %d transactions; want them coalesced (at most %d)", took.Round(time.Millisecond), n, most)
	} else {
		t.Logf("200 pod events over %v: %d transactions", took.Round(time.Millisecond), n)
	}

	// Status and metrics.
	st, err := n.Client.Policy(ctx)
	if err != nil || !st.Enabled || !st.Synced || st.Policies != 1 || st.LocalPods != 1 || st.SelectedPods != 0 ||
		st.Applies == 0 || st.LastApply.IsZero() {
		t.Errorf("policy status: %+v %v", st, err)
	}
	m := scrape(t, n)
	if v := value(t, m, "weft_policy_policies", nil); v != 1 {
		t.Errorf("weft_policy_policies = %v, want 1", v)
	}
	if v := value(t, m, "weft_policy_selected_pods", nil); v != 0 {
		t.Errorf("weft_policy_selected_pods = %v, want 0", v)
	}
	for _, dir := range []string{"ingress", "egress"} {
		value(t, m, "weft_policy_drops_total", map[string]string{"direction": dir})
	}
	if h := m["weft_policy_apply_seconds"]; h == nil || h.Metric[0].GetHistogram().GetSampleCount() == 0 {
		t.Errorf("weft_policy_apply_seconds has no samples: %v", h)
	}

	// DEL: the address leaves the engine with the release.
	if err := n.Client.Release(ctx, api.ReleaseRequest{ContainerID: "c-web", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	c.Wait("np/web out of the engine after its DEL, its flows forgotten", func() error {
		if p, ok := eng.Applied("np", "web"); ok {
			return fmt.Errorf("still there: %+v", p)
		}
		if !slices.Contains(eng.Forgotten(), addr) {
			return fmt.Errorf("conntrack of %s not forgotten: %v", addr, eng.Forgotten())
		}
		return nil
	})
}

// A failed Apply turns the ADD away (and gives the address back), and
// is retried in the background.
func TestPolicyApplyFailureIsTryAgain(t *testing.T) {
	client := fake.NewClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "host1"}},
		policyPod("np", "web", "host1", map[string]string{"app": "web"}),
	)
	eng := agenttest.NewPolicyEngine()
	c, n := kubeAgent(t, client, eng, true)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	waitPolicySynced(ctx, c, n)
	eng.FailApply(errors.New("netlink: operation not permitted"))
	_, err := n.Client.Allocate(ctx, api.AllocateRequest{ContainerID: "c1", IfName: "eth0", PodNamespace: "np", PodName: "web"})
	if api.Code(err) != api.CodeNotReady || !strings.Contains(err.Error(), "operation not permitted") {
		t.Fatalf("ADD while Apply fails: %v, want %s naming the cause", err, api.CodeNotReady)
	}
	if hasContainer(t, n, "c1") {
		t.Error("ADD turned away kept its address")
	}
	if st, _ := n.Client.Policy(ctx); st.LastError == "" || st.ApplyFailures == 0 {
		t.Errorf("status does not show the failure: %+v", st)
	}
	eng.FailApply(nil)
	if _, err := n.Client.Allocate(ctx, api.AllocateRequest{ContainerID: "c1", IfName: "eth0", PodNamespace: "np", PodName: "web"}); err != nil {
		t.Fatalf("ADD once Apply works again: %v", err)
	}
}

// --network-policy=false in Kubernetes removes the table a previous agent
// left, applies nothing and gates nothing.
func TestPolicyOffRemovesTable(t *testing.T) {
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "host1"}})
	eng := agenttest.NewPolicyEngine()
	_, n := kubeAgent(t, client, eng, false)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := n.Client.Allocate(ctx, api.AllocateRequest{ContainerID: "c1", IfName: "eth0", PodNamespace: "np", PodName: "unknown"}); err != nil {
		t.Fatalf("ADD with enforcement off: %v", err)
	}
	if eng.Removes() != 1 || eng.Applies() != 0 {
		t.Errorf("enforcement off: %d Remove, %d Apply; want 1 and 0", eng.Removes(), eng.Applies())
	}
	st, err := n.Client.Policy(ctx)
	if err != nil || st.Enabled || !strings.Contains(st.Reason, "--network-policy=false") {
		t.Errorf("policy status: %+v %v", st, err)
	}
}

// weft reset removes the policy table, and nothing puts it back.
func TestPolicyResetRemovesTable(t *testing.T) {
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "host1"}})
	eng := agenttest.NewPolicyEngine()
	c, n := kubeAgent(t, client, eng, true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c.Wait("first apply", func() error {
		if eng.Applies() == 0 {
			return errors.New("none yet")
		}
		return nil
	})
	if err := n.Client.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if eng.Removes() != 1 {
		t.Fatalf("reset: %d Remove, want 1", eng.Removes())
	}
	applies := eng.Applies()
	if _, err := client.NetworkingV1().NetworkPolicies("np").Create(ctx, denyIngress("np", "late", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n.Stop()
	if eng.Applies() != applies {
		t.Errorf("%d Apply after reset", eng.Applies()-applies)
	}
}

// value is the value of the gauge or counter name with these labels; the
// test fails if there is no such series.
func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	mf := mfs[name]
	if mf == nil {
		t.Fatalf("no metric %s", name)
	}
next:
	for _, m := range mf.Metric {
		for k, v := range labels {
			if label(m, k) != v {
				continue next
			}
		}
		if g := m.GetGauge(); g != nil {
			return g.GetValue()
		}
		return m.GetCounter().GetValue()
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}

// The engine is configured from the agent: the deny log from the flag, and
// this node's own addresses (underlay and the bridge's overlay address),
// whose traffic with the node's pods is always allowed.
func TestPolicyEngineConfig(t *testing.T) {
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "host1"}})
	eng := agenttest.NewPolicyEngine()
	var got atomic.Pointer[policy.Config]
	c := agenttest.New(t, agenttest.Options{N: 1, IPAMInit: "consensus=1", Configure: func(_ int, cfg *agent.Config) {
		cfg.Kube, cfg.NetworkPolicy, cfg.NetworkPolicyDenyLog = true, true, true
		cfg.Devices.KubeClient = clientset.Wrap(client)
		cfg.Devices.PolicyEngine = func(pc policy.Config) (agent.PolicyEngine, error) {
			got.Store(&pc)
			return eng, nil
		}
	}})
	c.StartAll()
	c.WaitFormed()
	pc := got.Load()
	if pc == nil || !pc.DenyLog || pc.NodeAddrs == nil {
		t.Fatalf("engine config %+v: want DenyLog and NodeAddrs", pc)
	}
	addrs := pc.NodeAddrs()
	if !slices.Contains(addrs, agenttest.HostAddr(0)) || !slices.Contains(addrs, c.Nodes[0].Agent().HostAddr()) {
		t.Errorf("NodeAddrs %v: want the underlay %s and the bridge's %s", addrs, agenttest.HostAddr(0), c.Nodes[0].Agent().HostAddr())
	}
}

// A pod deleted and created again under the same name: the ADD names the
// new one by K8S_POD_UID, and the gate does not admit it on the old
// object's labels while the cache still has that one.
func TestPolicyGateWaitsForPodUID(t *testing.T) {
	old := policyPod("np", "web", "host1", map[string]string{"app": "old"})
	old.UID = "uid-old"
	client := fake.NewClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "host1"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "np"}},
		old,
		denyIngress("np", "deny-web", map[string]string{"app": "web"}),
	)
	eng := agenttest.NewPolicyEngine()
	c, n := kubeAgent(t, client, eng, true)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	waitPolicySynced(ctx, c, n)
	add := func(id, uid string) (api.AllocateResponse, error) {
		return n.Client.Allocate(ctx, api.AllocateRequest{ContainerID: id, IfName: "eth0", PodNamespace: "np", PodName: "web", PodUID: uid})
	}

	// Only the old pod is cached: "try again", not an admission on its labels.
	if _, err := add("c-new", "uid-new"); api.Code(err) != api.CodeNotReady {
		t.Fatalf("ADD of the new pod while only the old one is cached: %v, want %s", err, api.CodeNotReady)
	}
	if h := eng.History("np", "web"); slices.ContainsFunc(h, func(p policy.Pod) bool { return p.Local && len(p.IPs) > 0 }) {
		t.Errorf("the old object was admitted with an address: %+v", h)
	}

	// The new pod arrives while the next ADD waits: it is admitted with
	// the new labels, and isolated by them.
	type result struct {
		r   api.AllocateResponse
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := add("c-new", "uid-new")
		done <- result{r, err}
	}()
	if err := client.CoreV1().Pods("np").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	fresh := policyPod("np", "web", "host1", map[string]string{"app": "web"})
	fresh.UID = "uid-new"
	if _, err := client.CoreV1().Pods("np").Create(ctx, fresh, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil {
		// The 1 s wait of the gate may have ended before the informer
		// delivered: the runtime retries, and so does the test, once.
		if api.Code(res.err) != api.CodeNotReady {
			t.Fatal(res.err)
		}
		c.Wait("the new pod in the cache", func() error {
			r, err := add("c-new", "uid-new")
			res = result{r, err}
			return err
		})
	}
	p, ok := eng.Applied("np", "web")
	if !ok || p.Labels["app"] != "web" || !p.Local {
		t.Fatalf("admitted as %+v (ok=%v), want the new pod's labels app=web", p, ok)
	}
	if in, _ := eng.Selected("np", "web"); !in {
		t.Error("the new pod is not isolated by deny-web when its ADD returned")
	}
	// Without a UID (an older runtime) the name alone still admits.
	if _, err := n.Client.Allocate(ctx, api.AllocateRequest{ContainerID: "c-nouid", IfName: "eth0", PodNamespace: "np", PodName: "web"}); err != nil {
		t.Errorf("ADD without K8S_POD_UID: %v", err)
	}
}
