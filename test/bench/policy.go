package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/test/kubecluster"
)

// The policy section (issue 19) brings up the three-node Kubernetes cluster
// of test/kubecluster with weft installed as shipped, fills the policy sets
// with 1,000 fake pods (Pod objects that no scheduler takes, their
// status.podIPs set through the API) and 200 NetworkPolicies, and measures
// with real traffic between real pods:
//
//   - update latency: a pod label change or a policy change to enforcement
//     on all three nodes: TCP connects every 5 ms from a client pod to a
//     server pod on each node; "allowed" is the first connect that gets
//     through, "denied" the first of an unbroken run of connects that do not;
//   - throughput of one TCP stream pod to pod across nodes (iperf3 run in the
//     pods' network namespaces) with the 200 policies applied and with none,
//     alternately in the same run.

const (
	benchRealNS       = "bench-real"
	benchFakeNSCount  = 10
	benchFakePerNS    = 100 // 1,000 fake pods
	benchFakePolicies = 19  // per fake namespace: 190, plus 10 in bench-real
	benchLabelKey     = "access"
	benchPollEvery    = 5 * time.Millisecond
	benchPollTimeout  = 200 * time.Millisecond
)

var policyChangesFlag = flag.Int("policy-changes", 20, "policy section: changes of each kind (pod label, policy), half allowing and half denying")

func policyBench(ctx context.Context, bin string) error {
	if err := kubecluster.Check(); err != nil {
		fmt.Printf("\nNetworkPolicy: SKIPPED, no Kubernetes cluster on this machine: %v\n", err)
		return nil
	}
	changes := *policyChangesFlag
	if changes < 2 {
		changes = 2
	}
	fmt.Fprintln(os.Stderr, "policy: bringing up the three-node Kubernetes cluster (a few minutes)")
	dir, err := os.MkdirTemp("", "wkc-")
	if err != nil {
		return err
	}
	lvl := new(slog.LevelVar)
	lvl.Set(slog.LevelWarn)
	c, err := kubecluster.Start(ctx, kubecluster.Options{Dir: dir, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))})
	if err != nil {
		os.RemoveAll(dir)
		return err
	}
	defer func() {
		if err := c.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "policy: teardown:", err)
		}
	}()
	s := &kubecluster.Scenario{C: c, Say: func(string, ...any) {}, Show: func(string, string) {}}
	if err := s.Install(ctx, &kubecluster.Results{}); err != nil {
		return fmt.Errorf("install weft: %w\n%s", err, c.Diagnose())
	}
	b := &policyBed{c: c, bin: bin, ns: map[string]*kubecluster.Netns{}, ips: map[string]netip.Addr{}}
	defer b.close()
	if b.cs, err = c.Clientset(500, 1000); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "policy: real pods, 1,000 fake pods and 200 policies")
	if err := b.setup(ctx); err != nil {
		return fmt.Errorf("%w\n%s", err, c.Diagnose())
	}
	dp, err := b.datapath(ctx)
	if err != nil {
		return err
	}
	if err := b.applyPolicies(ctx); err != nil {
		return err
	}
	if err := b.waitState(ctx, "lc", true); err != nil {
		return err
	}
	if err := b.waitState(ctx, "pc", false); err != nil {
		return err
	}
	st, err := b.sizes(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "policy: update latency")
	rows, err := b.latency(ctx, changes)
	if err != nil {
		return fmt.Errorf("%w\n%s", err, c.Diagnose())
	}
	fmt.Fprintln(os.Stderr, "policy: throughput with 200 policies and with none")
	none, with, err := b.throughput(ctx)
	if err != nil {
		return fmt.Errorf("%w\n%s", err, c.Diagnose())
	}

	fmt.Printf("\nNetworkPolicy: three-node Kubernetes cluster (test/kubecluster), %s between nodes\n", dp)
	fmt.Printf("200 NetworkPolicies; %d fake pods (API objects with status.podIPs, never run) and %d real pods in the sets\n", benchFakeNSCount*benchFakePerNS, len(b.ips))
	fmt.Printf("programmed per node: %s\n\n", st)
	fmt.Printf("Update -> enforced on all 3 nodes, observed by TCP connects every %s from a pod to a server pod on each node\n", benchPollEvery)
	fmt.Printf("%-44s %4s %9s %9s %9s\n", "change", "n", "p50", "p99", "max")
	for _, r := range rows {
		fmt.Printf("%-44s %4d %9s %9s %9s\n", r.name, len(r.d), durPct(r.d, 50), durPct(r.d, 99), durPct(r.d, 100))
	}
	fmt.Println("(from the API request to the first probe that shows the new state on the last of the three nodes; resolution ~5 ms)")
	med := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	fmt.Printf("\nThroughput pod -> pod across nodes, one TCP stream, iperf3 %d s, %d runs each, alternating\n", *seconds, *runs)
	fmt.Printf("%-44s %9s\n", "policies", "Gbit/s")
	fmt.Printf("%-44s %9.2f\n", "none", med(none))
	fmt.Printf("%-44s %9.2f\n", "200 (the server selected by 10 of them)", med(with))
	ratio := med(with) / med(none)
	fmt.Printf("ratio 200 policies / none: %.3f (target >= 0.95)\n", ratio)
	return nil
}

func durPct(d []time.Duration, p int) string {
	if len(d) == 0 {
		return "-"
	}
	v := slices.Clone(d)
	slices.Sort(v)
	i := min(len(v)-1, len(v)*p/100)
	return v[i].Round(100 * time.Microsecond).String()
}

type policyBed struct {
	c   *kubecluster.Cluster
	bin string // holds weft
	cs  kubernetes.Interface
	ns  map[string]*kubecluster.Netns // pod -> its namespace
	ips map[string]netip.Addr         // real pod -> address
	srv []string                      // the servers, one per node
}

func (b *policyBed) close() {
	for _, n := range b.ns {
		n.Close()
	}
}

func realPod(name, node string, labels map[string]string) *corev1.Pod {
	l := map[string]string{"bench-pod": name}
	for k, v := range labels {
		l[k] = v
	}
	grace := int64(1)
	no := false
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: benchRealNS, Labels: l},
		Spec: corev1.PodSpec{
			NodeSelector:                  map[string]string{"kubernetes.io/hostname": node},
			TerminationGracePeriodSeconds: &grace,
			AutomountServiceAccountToken:  &no,
			Containers: []corev1.Container{{Name: "probe", Image: kubecluster.ProbeImage, ImagePullPolicy: corev1.PullNever,
				Args: []string{"probe", "--name", name, "--listen", ":" + strconv.Itoa(kubecluster.ProbePort)}}},
		},
	}
}

// setup: the real pods (a server on every node, two clients on the first),
// the fake namespaces and pods.
func (b *policyBed) setup(ctx context.Context) error {
	c := b.c
	mkNS := func(name string, labels map[string]string) error {
		_, err := b.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
		return err
	}
	if err := mkNS(benchRealNS, nil); err != nil {
		return err
	}
	var pods []*corev1.Pod
	for i, n := range c.Nodes {
		name := fmt.Sprintf("s%d", i+1)
		b.srv = append(b.srv, name)
		pods = append(pods, realPod(name, n.Name, map[string]string{"app": "bench-server"}))
	}
	// lc: its label is flipped; pc: a policy naming it is created and deleted.
	pods = append(pods, realPod("lc", c.Nodes[0].Name, map[string]string{benchLabelKey: "yes"}),
		realPod("pc", c.Nodes[0].Name, map[string]string{"team": "pc"}))
	for _, p := range pods {
		if _, err := b.cs.CoreV1().Pods(benchRealNS).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	ps, err := c.WaitPods(ctx, 3*time.Minute, benchRealNS, "", func(ps []kubecluster.PodStatus) error {
		if len(ps) != len(pods) {
			return fmt.Errorf("%d pods", len(ps))
		}
		for _, p := range ps {
			if p.Phase != "Running" || p.IP == "" {
				return fmt.Errorf("%s %s", p.Name, p.Phase)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, p := range ps {
		b.ips[p.Name] = netip.MustParseAddr(p.IP)
		if p.Name == "lc" || p.Name == "pc" || p.Name == "s2" {
			path, err := c.PodNetns(p.Node, p.IP)
			if err != nil {
				return err
			}
			if b.ns[p.Name], err = kubecluster.EnterNetns(path); err != nil {
				return err
			}
		}
	}
	// 1,000 fake pods: scheduled by no one (a scheduler that does not
	// exist), so they never run; their addresses set through the status
	// subresource as a kubelet would.
	var wg sync.WaitGroup
	errs := make(chan error, benchFakeNSCount)
	for f := range benchFakeNSCount {
		ns := fmt.Sprintf("bench-f%d", f)
		if err := mkNS(ns, map[string]string{"bench-fake": strconv.Itoa(f)}); err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range benchFakePerNS {
				ip := fmt.Sprintf("10.47.%d.%d", 100+f, i+1)
				p := &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("fake-%d", i), Namespace: ns,
						Labels: map[string]string{"app": fmt.Sprintf("fake-%d", i%20), "tier": strconv.Itoa(i % 5)}},
					Spec: corev1.PodSpec{SchedulerName: "bench-nobody",
						Containers: []corev1.Container{{Name: "c", Image: kubecluster.PauseImage,
							Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: 8080}}}}},
				}
				created, err := b.cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
				if err != nil {
					errs <- err
					return
				}
				created.Status.Phase = corev1.PodRunning
				created.Status.PodIP = ip
				created.Status.PodIPs = []corev1.PodIP{{IP: ip}}
				if _, err := b.cs.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// policies are the 200: 19 in each fake namespace (each selects one app
// label and admits another app, pods of the next fake namespace and a
// port range), and 10 in bench-real on the servers: default-deny, allow by
// the label access=yes, and 8 more rules the servers' traffic is matched
// against (ipBlocks over the fake addresses, fake namespaces, ports).
func benchPolicies() []*networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	port := func(p int) *intstr.IntOrString { v := intstr.FromInt32(int32(p)); return &v }
	named := func(n string) *intstr.IntOrString { v := intstr.FromString(n); return &v }
	end := int32(8100)
	var out []*networkingv1.NetworkPolicy
	for f := range benchFakeNSCount {
		for k := range benchFakePolicies {
			out = append(out, &networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", k), Namespace: fmt.Sprintf("bench-f%d", f)},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("fake-%d", k)}},
					Ingress: []networkingv1.NetworkPolicyIngressRule{{
						From: []networkingv1.NetworkPolicyPeer{
							{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("fake-%d", (k+1)%20)}}},
							{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"bench-fake": strconv.Itoa((f + 1) % benchFakeNSCount)}},
								PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": strconv.Itoa(k % 5)}}},
						},
						Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: port(80)}, {Protocol: &tcp, Port: port(8000), EndPort: &end}, {Protocol: &tcp, Port: named("web")}},
					}},
				},
			})
		}
	}
	server := metav1.LabelSelector{MatchLabels: map[string]string{"app": "bench-server"}}
	real := func(name string, rule networkingv1.NetworkPolicyIngressRule) *networkingv1.NetworkPolicy {
		return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: benchRealNS},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: server, Ingress: []networkingv1.NetworkPolicyIngressRule{rule}}}
	}
	out = append(out, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "default-deny", Namespace: benchRealNS},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}})
	out = append(out, real("allow-access", networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{
		{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{benchLabelKey: "yes"}}}}}))
	for i := range 8 {
		var peer networkingv1.NetworkPolicyPeer
		switch i % 3 {
		case 0:
			peer.IPBlock = &networkingv1.IPBlock{CIDR: fmt.Sprintf("10.47.%d.0/24", 100+i), Except: []string{fmt.Sprintf("10.47.%d.128/25", 100+i)}}
		case 1:
			peer.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"bench-fake": strconv.Itoa(i)}}
		case 2:
			peer.NamespaceSelector = &metav1.LabelSelector{}
			peer.PodSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("fake-%d", i)}}
		}
		out = append(out, real(fmt.Sprintf("filler-%d", i), networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{peer},
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: port(kubecluster.ProbePort)}}}))
	}
	return out
}

// allowPC is the policy the policy-change rows create and delete.
func allowPC() *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "allow-pc", Namespace: benchRealNS},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "bench-server"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "pc"}}}}}}}}
}

func (b *policyBed) applyPolicies(ctx context.Context) error {
	for _, p := range benchPolicies() {
		if _, err := b.cs.NetworkingV1().NetworkPolicies(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create policy %s/%s: %w", p.Namespace, p.Name, err)
		}
	}
	return nil
}

func (b *policyBed) deletePolicies(ctx context.Context) error {
	for _, p := range benchPolicies() {
		if err := b.cs.NetworkingV1().NetworkPolicies(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete policy %s/%s: %w", p.Namespace, p.Name, err)
		}
	}
	return nil
}

// waitState waits until client reaches (allowed) or does not reach every
// server.
func (b *policyBed) waitState(ctx context.Context, client string, allowed bool) error {
	_, err := b.observe(ctx, client, allowed, time.Now(), time.Minute)
	return err
}

// observe probes every server from client every benchPollEvery until each
// shows the wanted state, and returns when the last one did (relative to
// since). Allowed: the send time of the first connect that got through.
// Denied: the send time of the first connect of a run of failures that
// lasts 3 probe timeouts with no success after it.
func (b *policyBed) observe(ctx context.Context, client string, allowed bool, since time.Time, limit time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var last time.Duration
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, len(b.srv))
	for i, srv := range b.srv {
		wg.Add(1)
		go func() {
			defer wg.Done()
			at, err := b.observeOne(ctx, client, netip.AddrPortFrom(b.ips[srv], kubecluster.ProbePort), allowed)
			if err != nil {
				errs[i] = fmt.Errorf("%s -> %s (want allowed=%v): %w", client, srv, allowed, err)
				return
			}
			mu.Lock()
			last = max(last, at.Sub(since))
			mu.Unlock()
		}()
	}
	wg.Wait()
	return last, errors.Join(errs...)
}

type probeResult struct {
	seq  int
	sent time.Time
	ok   bool
}

func (b *policyBed) observeOne(ctx context.Context, client string, to netip.AddrPort, allowed bool) (time.Time, error) {
	ns := b.ns[client]
	results := make(chan probeResult, 256)
	pctx, stop := context.WithCancel(ctx)
	var inflight sync.WaitGroup
	// Stop first, then wait: probes in flight give up on pctx.
	defer func() { stop(); inflight.Wait() }()
	inflight.Add(1) // the ticker itself: later Adds happen while it counts
	go func() {
		defer inflight.Done()
		tick := time.NewTicker(benchPollEvery)
		defer tick.Stop()
		for seq := 0; ; seq++ {
			inflight.Add(1)
			go func() {
				defer inflight.Done()
				sent := time.Now()
				_, err := ns.Connect(pctx, to, benchPollTimeout)
				select {
				case results <- probeResult{seq: seq, sent: sent, ok: err == nil}:
				case <-pctx.Done():
				}
			}()
			select {
			case <-pctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	var got []probeResult // indexed by seq
	for {
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("not within the limit: %w", ctx.Err())
		case r := <-results:
			for len(got) <= r.seq {
				got = append(got, probeResult{seq: -1})
			}
			got[r.seq] = r
		}
		if allowed {
			for _, r := range got {
				if r.seq >= 0 && r.ok {
					return r.sent, nil
				}
			}
			continue
		}
		// Denied: the first failure after the last success, once the
		// failures that follow it span 3 probe timeouts, all known.
		lastOK := -1
		for i, r := range got {
			if r.seq >= 0 && r.ok {
				lastOK = i
			}
		}
		start := lastOK + 1
		if start >= len(got) || got[start].seq < 0 {
			continue
		}
		span := got[start].sent.Add(3 * benchPollTimeout)
		complete := false
		for i := start; i < len(got); i++ {
			if got[i].seq < 0 {
				break // a probe still in flight
			}
			if got[i].sent.After(span) {
				complete = true
				break
			}
		}
		if complete {
			return got[start].sent, nil
		}
	}
}

type latencyRow struct {
	name string
	d    []time.Duration
}

// latency flips lc's label and creates/deletes allow-pc, changes times in
// all, half of each kind in each direction.
func (b *policyBed) latency(ctx context.Context, changes int) ([]latencyRow, error) {
	rows := []latencyRow{{name: "pod label added (access=yes): allowed"}, {name: "pod label removed: denied"},
		{name: "policy created (allow-pc): allowed"}, {name: "policy deleted (allow-pc): denied"},
		{name: "all pod label changes"}, {name: "all policy changes"}}
	setLabel := func(v *string) error {
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{benchLabelKey: v}}})
		_, err := b.cs.CoreV1().Pods(benchRealNS).Patch(ctx, "lc", types.MergePatchType, patch, metav1.PatchOptions{})
		return err
	}
	yes := "yes"
	// lc starts allowed, pc denied (checked by the caller).
	for i := range changes {
		allow := i%2 == 1
		start := time.Now()
		var err error
		if allow {
			err = setLabel(&yes)
		} else {
			err = setLabel(nil)
		}
		if err != nil {
			return nil, err
		}
		d, err := b.observe(ctx, "lc", allow, start, 30*time.Second)
		if err != nil {
			return nil, fmt.Errorf("label change %d: %w", i, err)
		}
		row := 1
		if allow {
			row = 0
		}
		rows[row].d = append(rows[row].d, d)
		rows[4].d = append(rows[4].d, d)
	}
	for i := range changes {
		allow := i%2 == 0
		start := time.Now()
		var err error
		if allow {
			_, err = b.cs.NetworkingV1().NetworkPolicies(benchRealNS).Create(ctx, allowPC(), metav1.CreateOptions{})
		} else {
			err = b.cs.NetworkingV1().NetworkPolicies(benchRealNS).Delete(ctx, "allow-pc", metav1.DeleteOptions{})
		}
		if err != nil {
			return nil, err
		}
		d, err := b.observe(ctx, "pc", allow, start, 30*time.Second)
		if err != nil {
			return nil, fmt.Errorf("policy change %d: %w", i, err)
		}
		row := 3
		if allow {
			row = 2
		}
		rows[row].d = append(rows[row].d, d)
		rows[5].d = append(rows[5].d, d)
	}
	// Leave lc allowed for the throughput runs.
	if err := setLabel(&yes); err != nil {
		return nil, err
	}
	return rows, b.waitState(ctx, "lc", true)
}

// throughput runs iperf3 from lc (first node) to s2 (second node) in their
// network namespaces, alternately with no policy and with the 200.
func (b *policyBed) throughput(ctx context.Context) (none, with []float64, err error) {
	src, dst := b.ns["lc"].Path, b.ns["s2"].Path
	addr := b.ips["s2"]
	for range *runs {
		if err := b.deletePolicies(ctx); err != nil {
			return nil, nil, err
		}
		// No policy: pc (named by none) reaches every server again.
		if err := b.waitState(ctx, "pc", true); err != nil {
			return nil, nil, err
		}
		g, err := iperf(ctx, src, dst, addr, 1)
		if err != nil {
			return nil, nil, err
		}
		none = append(none, g)
		if err := b.applyPolicies(ctx); err != nil {
			return nil, nil, err
		}
		if err := b.waitState(ctx, "pc", false); err != nil {
			return nil, nil, err
		}
		if err := b.waitState(ctx, "lc", true); err != nil {
			return nil, nil, err
		}
		if g, err = iperf(ctx, src, dst, addr, 1); err != nil {
			return nil, nil, err
		}
		with = append(with, g)
	}
	return none, with, nil
}

// datapath is how the first node sends to the second.
func (b *policyBed) datapath(ctx context.Context) (string, error) {
	cs, err := api.NewClient(api.SocketPath(b.c.Nodes[0].WeftRunDir()), 5*time.Second).Connections(ctx)
	if err != nil {
		return "", err
	}
	for _, cn := range cs {
		if cn.Peer == b.c.Nodes[1].Name {
			if cn.Encrypted {
				return cn.Datapath + " (encrypted)", nil
			}
			return cn.Datapath, nil
		}
	}
	return "", fmt.Errorf("%s has no connection to %s", b.c.Nodes[0].Name, b.c.Nodes[1].Name)
}

// sizes reads each node's policy status (weft status policy) when the agent
// has one.
func (b *policyBed) sizes(ctx context.Context) (string, error) {
	var parts []string
	for _, n := range b.c.Nodes {
		cmd := exec.CommandContext(ctx, filepath.Join(b.bin, "weft"), "status", "policy")
		cmd.Env = append(os.Environ(), "WEFT_RUN_DIR="+n.WeftRunDir())
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Sprintf("(weft status policy: %v: %s)", err, strings.TrimSpace(string(out))), nil
		}
		parts = append(parts, n.Name+": "+strings.Join(strings.Fields(string(out)), " "))
	}
	return strings.Join(parts, "; "), nil
}
