package agent_test

// NetworkPolicy glue against a real kube-apiserver (test/kubeapi) with the
// real engine (package policy) programming nftables in a network namespace
// this test makes, the agent on the ServiceAccount of prog/kube/weft.yaml
// (so its RBAC is proven enough). Needs root.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/kube/client/clientset"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/agent"
	"github.com/weftnet/weft/agent/agenttest"
	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/internal/roottest"
	"github.com/weftnet/weft/kube"
	"github.com/weftnet/weft/policy"
	"github.com/weftnet/weft/test/kubeapi"
)

// policyNetns makes a network namespace for the engine's table, deleted
// when the test ends.
func policyNetns(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("weft-npa-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name
}

// nftTable lists the policy table in ns ("" if it does not exist).
func nftTable(t *testing.T, ns string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "inet", policy.DefaultTable).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "No such file") {
			return ""
		}
		t.Fatalf("nft list table: %v: %s", err, out)
	}
	return string(out)
}

// clientWith is a clientset on an HTTP transport of its own, whose
// connections the caller closes: the goroutine leak check counts their
// read loops, and client-go's shared transports keep them.
func clientWith(t *testing.T, cfg *rest.Config) (kubernetes.Interface, *http.Transport) {
	t.Helper()
	tlsCfg, err := rest.TLSConfigFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true, Proxy: http.ProxyFromEnvironment}
	rt, err := rest.HTTPWrappersForConfig(cfg, tr)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfigAndClient(cfg, &http.Client{Transport: rt})
	if err != nil {
		t.Fatal(err)
	}
	return cs, tr
}

// serviceAccountClient applies the manifest and returns a client with the
// token of its ServiceAccount.
func serviceAccountClient(t *testing.T, s *kubeapi.APIServer) (kubernetes.Interface, *http.Transport) {
	t.Helper()
	if out, err := s.Kubectl("apply", "-f", "../prog/kube/weft.yaml"); err != nil {
		t.Fatalf("apply the manifest: %v: %s", err, out)
	}
	tok, err := s.Kubectl("-n", kube.DefaultNamespace, "create", "token", "weft", "--duration=1h")
	if err != nil {
		t.Fatal(err)
	}
	kc, err := s.TokenKubeconfig("weft-sa", strings.TrimSpace(string(tok)))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	return clientWith(t, cfg)
}

func TestPolicyAgainstAPIServer(t *testing.T) {
	roottest.Require(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("TEST NOT RUN: no nft command to read the kernel's table")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s, err := kubeapi.Start(ctx, t)
	if errors.Is(err, kubeapi.ErrUnavailable) {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skipf("TEST NOT RUN: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	admin, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	sa, saHTTP := serviceAccountClient(t, s)
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "host1"}}, metav1.CreateOptions{}))
	must(admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "np"}}, metav1.CreateOptions{}))
	// Without a controller manager nobody makes the default ServiceAccount
	// that admission wants for a pod.
	must(admin.CoreV1().ServiceAccounts("np").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}))
	must(admin.CoreV1().Pods("np").Create(ctx, policyPod("np", "web", "host1", map[string]string{"app": "web"}), metav1.CreateOptions{}))
	must(admin.NetworkingV1().NetworkPolicies("np").Create(ctx, denyIngress("np", "deny-web", map[string]string{"app": "web"}), metav1.CreateOptions{}))

	ns := policyNetns(t)
	// After the API server and the admin client: their goroutines are the
	// test's, not the agent's.
	c := agenttest.New(t, agenttest.Options{N: 1, IPAMInit: "consensus=1"})
	var (
		mu  sync.Mutex
		eng *policy.Engine
	)
	engine := func() *policy.Engine {
		mu.Lock()
		defer mu.Unlock()
		return eng
	}
	n := c.Nodes[0]
	cfg := &n.Config
	cfg.Kube, cfg.NetworkPolicy = true, true
	cfg.Devices.KubeClient = clientset.Wrap(sa)
	cfg.Devices.PolicyEngine = func(pc policy.Config) (agent.PolicyEngine, error) {
		pc.NetNS = ns
		e, err := policy.New(pc)
		mu.Lock()
		eng = e
		mu.Unlock()
		return e, err
	}
	// Before the harness's goroutine check (cleanups run last-registered
	// first): stop the agent, then close the connections its informers
	// left idle.
	t.Cleanup(func() {
		n.Stop()
		saHTTP.CloseIdleConnections()
	})
	c.StartAll()
	c.WaitFormed()
	waitSynced := func() { waitPolicySynced(ctx, c, n) }
	waitSynced()

	// ADD of a pod the API server does not have: "try again", no leak.
	if _, err := n.Client.Allocate(ctx, api.AllocateRequest{ContainerID: "c-ghost", IfName: "eth0", PodNamespace: "np", PodName: "ghost"}); api.Code(err) != api.CodeNotReady {
		t.Fatalf("ADD of an unknown pod: %v, want %s", err, api.CodeNotReady)
	}
	if hasContainer(t, n, "c-ghost") {
		t.Error("ADD of an unknown pod kept its address")
	}

	// ADD of np/web: when it returns, the kernel has its address and it is
	// isolated.
	addStart := time.Now()
	r, err := n.Client.Allocate(ctx, api.AllocateRequest{ContainerID: "c-web", IfName: "eth0", PodNamespace: "np", PodName: "web"})
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParsePrefix(r.Address).Addr()
	t.Logf("CNI ADD of np/web (allocation, cache lookup, Apply into the kernel) answered in %v", time.Since(addStart))
	if in, _ := engine().Selected("np", "web"); !in {
		t.Error("np/web not isolated for ingress when ADD returned")
	}
	if table := nftTable(t, ns); !strings.Contains(table, addr.String()) {
		t.Errorf("when ADD returned, the kernel's table had no %s:\n%s", addr, table)
	}

	selected := func(want bool, why string) {
		t.Helper()
		c.Wait(why, func() error {
			if in, _ := engine().Selected("np", "web"); in != want {
				return fmt.Errorf("np/web selected for ingress: %v", in)
			}
			return nil
		})
	}
	// Label change: out of the policy, and back in.
	relabel := func(v string) {
		t.Helper()
		p, err := admin.CoreV1().Pods("np").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Labels["app"] = v
		must(admin.CoreV1().Pods("np").Update(ctx, p, metav1.UpdateOptions{}))
	}
	relabel("other")
	selected(false, "np/web unselected after its label changed")
	relabel("web")
	selected(true, "np/web selected again after its label came back")
	// A default deny for the namespace, then the first policy deleted: still
	// selected; both deleted: free.
	must(admin.NetworkingV1().NetworkPolicies("np").Create(ctx, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "np", Name: "default-deny"}}, metav1.CreateOptions{}))
	c.Wait("two policies", func() error {
		if st := engine().Status(); st.Policies != 2 {
			return fmt.Errorf("%d policies", st.Policies)
		}
		return nil
	})
	if err := admin.NetworkingV1().NetworkPolicies("np").Delete(ctx, "deny-web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.Wait("one policy", func() error {
		if st := engine().Status(); st.Policies != 1 {
			return fmt.Errorf("%d policies", st.Policies)
		}
		return nil
	})
	selected(true, "np/web selected by the default deny")
	st, err := n.Client.Policy(ctx)
	if err != nil || st.Policies != 1 || st.LocalPods != 1 || st.SelectedPods != 1 || st.Sets == 0 || st.Rules == 0 || st.LastError != "" {
		t.Errorf("policy status: %+v %v", st, err)
	}
	t.Logf("policy status: %d sets, %d rules, %d transactions, the last took %v", st.Sets, st.Rules, st.Applies, st.LastApplyTook)

	// A restart keeps the table the previous agent left until the new one
	// has synced: the pod is never unprotected.
	n.Stop()
	if table := nftTable(t, ns); !strings.Contains(table, addr.String()) {
		t.Fatalf("the table lost np/web's address when the agent stopped:\n%s", table)
	}
	n.Start()
	c.WaitFormed()
	waitSynced()
	c.Wait("np/web selected after the restart", func() error {
		e := engine()
		if in, _ := e.Selected("np", "web"); !in {
			return errors.New("not selected")
		}
		return nil
	})
	if table := nftTable(t, ns); !strings.Contains(table, addr.String()) {
		t.Errorf("after the restart, the table has no %s:\n%s", addr, table)
	}

	if err := admin.NetworkingV1().NetworkPolicies("np").Delete(ctx, "default-deny", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	selected(false, "np/web free once no policy selects it")
}
