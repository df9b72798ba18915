package kube

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/kube/client/clientset"
	"k8s.io/client-go/tools/clientcmd"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/test/kubeapi"
)

// skipOrFail skips loudly, except in CI where a skipped test hides a broken
// setup and so fails.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := "SKIPPED (kube tests against a real apiserver): " + fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// TestAgainstAPIServer runs everything that needs a real kube-apiserver on
// one instance (starting one costs ~3 s; the first build ~8 min, cached).
func TestAgainstAPIServer(t *testing.T) {
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root (etcd, cached build in %s)", kubeapi.K8SDir())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	api, err := kubeapi.Start(ctx, t)
	if errors.Is(err, kubeapi.ErrUnavailable) {
		skipOrFail(t, "%v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("apiserver ready after %s (includes any build)", time.Since(start).Round(time.Millisecond))
	admin, err := fullClient(api.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}

	// The agent's own client: the DaemonSet's ServiceAccount, so every test
	// below also proves the manifest's RBAC is enough.
	// agent is client-go's full clientset, for the RBAC checks;
	// agentClient is the one weft's agent uses (NewClient).
	var agent kubernetes.Interface
	var agentClient Client
	t.Run("ManifestApply", func(t *testing.T) {
		// A server dry run cannot validate objects in a namespace that the
		// same file creates (the namespace is only pretended), so dry-run a
		// copy aimed at an existing namespace: every object then goes through
		// the apiserver's validation and admission. The real apply below
		// still starts from a cluster without weft-system, as a user's does.
		raw, err := os.ReadFile(manifestPath)
		if err != nil {
			t.Fatal(err)
		}
		dry := filepath.Join(t.TempDir(), "weft-dryrun.yaml")
		if err := os.WriteFile(dry, []byte(strings.ReplaceAll(string(raw), DefaultNamespace, "weft-dryrun")), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := api.Kubectl("create", "namespace", "weft-dryrun"); err != nil {
			t.Fatal(err)
		}
		out, err := api.Kubectl("apply", "--dry-run=server", "-f", dry)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(out), "(server dry run)"); n != 7 {
			t.Fatalf("dry run handled %d objects, want 7:\n%s", n, out)
		}
		if dss, err := admin.AppsV1().DaemonSets("").List(ctx, metav1.ListOptions{}); err != nil || len(dss.Items) != 0 {
			t.Fatalf("dry run created a DaemonSet (err=%v)", err)
		}
		if _, err := admin.RbacV1().ClusterRoles().Get(ctx, "weft", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("dry run created the ClusterRole (err=%v)", err)
		}
		if _, err := api.Kubectl("apply", "-f", manifestPath); err != nil {
			t.Fatal(err)
		}
		out, err = api.Kubectl("-n", DefaultNamespace, "get", "daemonset", "weft", "-o", "jsonpath={.spec.template.spec.containers[0].image}")
		if err != nil || string(out) != "ghcr.io/weftnet/weft:latest" {
			t.Fatalf("daemonset after apply: %q %v", out, err)
		}
		// Re-applying is a no-op, as `kubectl apply -f <url>` is run again on upgrades.
		if out, err := api.Kubectl("apply", "-f", manifestPath); err != nil || strings.Contains(string(out), "configured") {
			t.Fatalf("second apply changed something: %s %v", out, err)
		}
		tok, err := api.Kubectl("-n", DefaultNamespace, "create", "token", "weft", "--duration=1h")
		if err != nil {
			t.Fatal(err)
		}
		kc, err := api.TokenKubeconfig("weft-sa", strings.TrimSpace(string(tok)))
		if err != nil {
			t.Fatal(err)
		}
		if agent, err = fullClient(kc); err != nil {
			t.Fatal(err)
		}
		if agentClient, err = NewClient(kc); err != nil {
			t.Fatal(err)
		}
		// What NetworkPolicy enforcement reads, it may list.
		if _, err := agent.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); err != nil {
			t.Errorf("SA may not list pods: %v", err)
		}
		if _, err := agent.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err != nil {
			t.Errorf("SA may not list namespaces: %v", err)
		}
		if _, err := agent.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{}); err != nil {
			t.Errorf("SA may not list network policies: %v", err)
		}
		// Least privilege: things weft has no business doing are refused.
		if _, err := agent.CoreV1().Pods("default").Get(ctx, "any", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("SA may get pods (err=%v)", err)
		}
		if err := agent.CoreV1().Pods("default").Delete(ctx, "any", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("SA may delete pods (err=%v)", err)
		}
		if err := agent.NetworkingV1().NetworkPolicies("default").Delete(ctx, "any", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("SA may delete network policies (err=%v)", err)
		}
		if _, err := agent.CoreV1().Secrets(DefaultNamespace).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("SA may list secrets (err=%v)", err)
		}
		if err := agent.CoreV1().Nodes().Delete(ctx, "any", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("SA may delete Nodes (err=%v)", err)
		}
	})
	if agent == nil {
		t.Fatal("no ServiceAccount client; the rest needs it")
	}
	newCluster := func(t *testing.T, node string) *Cluster {
		c, err := New(Config{Client: agentClient, NodeName: node, Namespace: DefaultNamespace, Logger: testLogger(t, node),
			LeaseDuration: 2 * time.Second, RenewDeadline: 1500 * time.Millisecond, RetryPeriod: 200 * time.Millisecond,
			ReclaimInterval: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	nodes := &nodeMaker{t: t, ctx: ctx, c: admin}

	t.Run("WatchPeers", func(t *testing.T) {
		nodes.create("wp-self", "198.18.1.1")
		nodes.create("wp-b", "198.18.1.3")
		c := newCluster(t, "wp-self")
		wctx, stop := context.WithCancel(ctx)
		got := make(chan []string, 100)
		done := make(chan error, 1)
		go func() { done <- c.WatchPeers(wctx, func(a []string) { got <- a }) }()
		wantPeers := func(want ...string) {
			t.Helper()
			deadline := time.After(10 * time.Second)
			var last []string
			for {
				select {
				case last = <-got:
					// Other subtests' Nodes are not there yet; filter to this test's range.
					if slices.Equal(only(last, "198.18.1."), want) {
						return
					}
				case <-deadline:
					t.Fatalf("peers: last %v, want %v", last, want)
				}
			}
		}
		wantPeers("198.18.1.3")
		nodes.create("wp-a", "198.18.1.2")
		wantPeers("198.18.1.2", "198.18.1.3")
		nodes.create("wp-noaddr", "")
		nodes.delete("wp-b")
		wantPeers("198.18.1.2")
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("WatchPeers: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("WatchPeers did not return after cancel")
		}
	})

	t.Run("BootstrapRingOnce", func(t *testing.T) {
		const n = 5
		var wg sync.WaitGroup
		results := make([][]string, n)
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				results[i], errs[i] = newCluster(t, fmt.Sprintf("boot-%d", i)).BootstrapRing(ctx, fmt.Sprintf("boot-%d", i))
			})
		}
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("agent %d: %v", i, errs[i])
			}
			if len(results[i]) != 1 || !slices.Equal(results[i], results[0]) {
				t.Fatalf("agent %d got seeds %v, agent 0 got %v: more than one ring", i, results[i], results[0])
			}
		}
		if !strings.HasPrefix(results[0][0], "boot-") {
			t.Fatalf("seed %q is none of the agents", results[0][0])
		}
		// A node joining much later adopts the same ring.
		late, err := newCluster(t, "boot-late").BootstrapRing(ctx, "boot-late")
		if err != nil || !slices.Equal(late, results[0]) {
			t.Fatalf("late joiner: %v %v, want %v", late, err, results[0])
		}
	})

	t.Run("BootstrapRingCorrupt", func(t *testing.T) {
		ns := "weft-corrupt"
		if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: BootstrapConfigMap}, Data: map[string]string{"seeds": "a,,b"}}
		if _, err := admin.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		c, err := New(Config{Client: clientset.Wrap(admin), NodeName: "x", Namespace: ns})
		if err != nil {
			t.Fatal(err)
		}
		bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if _, err := c.BootstrapRing(bctx, "x"); !errors.Is(err, ErrBadSeeds) {
			t.Fatalf("corrupt ConfigMap: err %v, want ErrBadSeeds", err)
		}
		got, _ := admin.CoreV1().ConfigMaps(ns).Get(ctx, BootstrapConfigMap, metav1.GetOptions{})
		if got.Data["seeds"] != "a,,b" {
			t.Fatalf("corrupt ConfigMap was overwritten: %q", got.Data["seeds"])
		}
	})

	t.Run("SetNetworkAvailable", func(t *testing.T) {
		n := nodes.create("na-1", "198.18.2.1")
		n.Status.Conditions = []corev1.NodeCondition{
			{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady"},
			{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionTrue, Reason: "NoRouteCreated"},
		}
		if _, err := admin.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := newCluster(t, "na-1").SetNetworkAvailable(ctx); err != nil {
			t.Fatal(err)
		}
		got, err := admin.CoreV1().Nodes().Get(ctx, "na-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		conds := map[corev1.NodeConditionType]corev1.NodeCondition{}
		for _, c := range got.Status.Conditions {
			conds[c.Type] = c
		}
		if c := conds[corev1.NodeNetworkUnavailable]; c.Status != corev1.ConditionFalse || c.Reason != NetworkReadyReason {
			t.Errorf("NetworkUnavailable = %+v", c)
		}
		if c := conds[corev1.NodeReady]; c.Status != corev1.ConditionTrue {
			t.Errorf("kubelet's Ready condition lost: %+v", got.Status.Conditions)
		}
		if len(got.Status.Conditions) != 2 {
			t.Errorf("conditions %+v, want 2", got.Status.Conditions)
		}
		// A Node that does not exist: an error naming it, nothing created.
		if err := newCluster(t, "na-missing").SetNetworkAvailable(ctx); !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), "na-missing") {
			t.Errorf("missing Node: err %v, want NotFound naming it", err)
		}
	})

	t.Run("Reclaimer", func(t *testing.T) { testReclaimer(t, ctx, nodes, newCluster) })
	t.Run("SigningKeys", func(t *testing.T) { testSigningKeys(t, ctx, agentClient, nodes, newCluster) })
	t.Run("NodeEvents", func(t *testing.T) { testNodeEvents(t, ctx, api, admin, agentClient, nodes) })
}

// fakeRing stands for the IPAM ring: owners and an idempotent remove that
// counts effective removals.
type fakeRing struct {
	mu      sync.Mutex
	owners  map[string]bool
	removed map[string][]string // owner -> which reclaimers removed it (effective only)
	calls   int
}

func (r *fakeRing) Owners() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var o []string
	for n := range r.owners {
		o = append(o, n)
	}
	slices.Sort(o)
	return o
}

func (r *fakeRing) remove(by, name string) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if !r.owners[name] {
		return 0, nil
	}
	delete(r.owners, name)
	r.removed[name] = append(r.removed[name], by)
	return 256, nil
}

func (r *fakeRing) has(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.owners[name]
}

func testReclaimer(t *testing.T, ctx context.Context, nodes *nodeMaker, newCluster func(*testing.T, string) *Cluster) {
	for _, n := range []string{"rc-a", "rc-b", "rc-c", "rc-d"} {
		nodes.create(n, "")
	}
	// rc-x owns ranges but has no Node from the start (deleted while no
	// reclaimer ran): level-triggered reclaim must catch it without an event.
	ring := &fakeRing{owners: map[string]bool{"rc-a": true, "rc-b": true, "rc-c": true, "rc-d": true, "rc-x": true}, removed: map[string][]string{}}

	// The first removal of rc-d blocks inside remove, so the test can stop
	// that holder halfway through; it then fails as a dying agent would.
	inRemove := make(chan string, 2)
	release := make(chan struct{})
	var once sync.Once
	removeFor := func(id string) func(string) (uint64, error) {
		return func(name string) (uint64, error) {
			if name == "rc-d" {
				blocked := false
				once.Do(func() { blocked = true })
				if blocked {
					inRemove <- id
					<-release
					return 0, errors.New("agent died halfway")
				}
			}
			return ring.remove(id, name)
		}
	}
	ctxs := map[string]context.CancelFunc{}
	done := map[string]chan struct{}{}
	for _, id := range []string{"rc-a", "rc-b"} {
		rctx, cancel := context.WithCancel(ctx)
		stopped := make(chan struct{})
		ctxs[id], done[id] = cancel, stopped
		c := newCluster(t, id)
		go func() { defer close(stopped); c.RunReclaimer(rctx, ring.Owners, removeFor(id)) }()
	}
	t.Cleanup(func() {
		for id, cancel := range ctxs {
			cancel()
			<-done[id]
		}
	})

	waitFor(t, 15*time.Second, "rc-x reclaimed without any Node event", func() bool { return !ring.has("rc-x") })
	nodes.delete("rc-c")
	waitFor(t, 15*time.Second, "rc-c reclaimed after its Node was deleted", func() bool { return !ring.has("rc-c") })

	nodes.delete("rc-d")
	var holder string
	select {
	case holder = <-inRemove:
	case <-time.After(15 * time.Second):
		t.Fatal("no reclaimer tried to remove rc-d")
	}
	other := map[string]string{"rc-a": "rc-b", "rc-b": "rc-a"}[holder]
	ctxs[holder]() // the holder stops while inside remove...
	close(release) // ...and its remove fails
	select {
	case <-done[holder]:
	case <-time.After(10 * time.Second):
		t.Fatalf("RunReclaimer of %s did not return after cancel", holder)
	}
	waitFor(t, 15*time.Second, "rc-d reclaimed by the other agent", func() bool { return !ring.has("rc-d") })

	ring.mu.Lock()
	defer ring.mu.Unlock()
	for _, n := range []string{"rc-x", "rc-c", "rc-d"} {
		if len(ring.removed[n]) != 1 {
			t.Errorf("%s removed %d times in effect (by %v), want exactly once", n, len(ring.removed[n]), ring.removed[n])
		}
	}
	if by := ring.removed["rc-d"]; len(by) == 1 && by[0] != other {
		t.Errorf("rc-d removed by %s, want the surviving agent %s", by[0], other)
	}
	for _, n := range []string{"rc-a", "rc-b"} {
		if !ring.owners[n] {
			t.Errorf("live Node %s was reclaimed", n)
		}
	}
	t.Logf("remove called %d times for 3 effective removals", ring.calls)
}

// nodeMaker creates and deletes Node objects by hand, as kubelet would.
type nodeMaker struct {
	t   *testing.T
	ctx context.Context
	c   kubernetes.Interface
}

func (m *nodeMaker) create(name, ip string) *corev1.Node {
	m.t.Helper()
	n, err := m.c.CoreV1().Nodes().Create(m.ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		m.t.Fatal(err)
	}
	if ip != "" {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}, {Type: corev1.NodeInternalIP, Address: ip}}
		if n, err = m.c.CoreV1().Nodes().UpdateStatus(m.ctx, n, metav1.UpdateOptions{}); err != nil {
			m.t.Fatal(err)
		}
	}
	return n
}

func (m *nodeMaker) delete(name string) {
	m.t.Helper()
	if err := m.c.CoreV1().Nodes().Delete(m.ctx, name, metav1.DeleteOptions{}); err != nil {
		m.t.Fatal(err)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", timeout, what)
		}
		<-tick.C
	}
}

func only(addrs []string, prefix string) []string {
	var out []string
	for _, a := range addrs {
		if strings.HasPrefix(a, prefix) {
			out = append(out, a)
		}
	}
	return out
}

// fullClient is client-go's whole clientset from a kubeconfig, for what
// the tests do beyond weft's Client.
func fullClient(kubeconfig string) (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}
