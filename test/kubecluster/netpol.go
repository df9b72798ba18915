package kubecluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/internal/netnstest"
	"github.com/weftnet/weft/test/testbed"
)

// The NetworkPolicy phase (issue 19): Kubernetes' semantics checked with
// real traffic between real pods on the three nodes, on the datapath the
// cluster runs and then on the other one.
//
// Every probe is fired by this process from inside the pod's (or node's)
// network namespace (see Netns): a TCP connect with a short timeout, or an
// ICMP echo. "Denied" means three connects in a row got no answer and three
// more after them did not either; each denial is checked beside an allowed
// pair through the same server, so a broken path cannot pass for a policy.

// Namespaces and addresses of the phase.
const (
	npDeny   = "np-deny"   // default-deny ingress, plus allow rules
	npOther  = "np-other"  // plain clients: no policy selects them
	npFriend = "np-friend" // labelled np-access=yes: the allowed namespace
	npEgress = "np-egress" // egress only to ipBlocks of the outside world
	npNamed  = "np-named"  // ingress by named port
	// OutsideProbePort is where servers in the outside world listen.
	OutsideProbePort = 7780
	npSecondPort     = 7778 // a second listener in the named-port pods
)

// Outside-world servers: OutsideAddr itself and two more addresses added to
// the Outside namespace for the phase, one excepted from the allowed block.
var (
	npOutsideAllowed = testbed.OutsideAddr                 // 198.18.0.200, the /32 allowed
	npOutsideExcept  = netip.MustParseAddr("198.18.0.201") // denied: not in /32, then in except
	npOutsideBlock   = netip.MustParseAddr("198.18.0.202") // allowed by the /26, not excepted
)

// NetpolResults are what the phase measured.
type NetpolResults struct {
	Datapaths []string // per datapath checked, e.g. "tun-offload+udp-gso (encrypted)", "fastdp"
	// DenyEnforced is kubectl apply of default-deny started -> the first
	// probe across nodes that gets no answer (probes every ~50 ms; kubectl
	// itself takes ~0.1-0.3 s of it).
	DenyEnforced time.Duration
	// FirstPacket: echo requests sent to the new pods' addresses under
	// default-deny while they came up (and after the agent restart), and
	// replies (must be 0).
	FirstPacketProbes  int
	FirstPacketReplies int
}

// npPod describes one pod of the phase.
type npPod struct {
	name, ns string
	node     *Node
	labels   map[string]string
	port     string // name of containerPort 7777 ("" = none)
	second   string // if set, a second container on npSecondPort with this port name ("-" = unnamed)
	ready    bool   // a readiness probe on 7777 (kubelet probes from the node)
}

func (p npPod) yaml() string {
	labels := maps.Clone(p.labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels["np-pod"] = p.name
	var ls []string
	for k, v := range labels {
		ls = append(ls, fmt.Sprintf("%s: %q", k, v))
	}
	sort.Strings(ls)
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s, labels: {%s}}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  nodeSelector: {kubernetes.io/hostname: %s}
  containers:
  - name: probe
    image: %s
    imagePullPolicy: Never
    args: [probe, --name, %s, --listen, ":%d"]
`, p.name, p.ns, strings.Join(ls, ", "), p.node.Name, ProbeImage, p.name, ProbePort)
	if p.port != "" {
		fmt.Fprintf(&b, "    ports: [{name: %s, containerPort: %d, protocol: TCP}]\n", p.port, ProbePort)
	}
	if p.ready {
		// failureThreshold 1: a single probe dropped by the policy would
		// show as a transition of the Ready condition.
		fmt.Fprintf(&b, "    readinessProbe: {tcpSocket: {port: %d}, periodSeconds: 1, failureThreshold: 1}\n", ProbePort)
	}
	if p.second != "" {
		fmt.Fprintf(&b, `  - name: second
    image: %s
    imagePullPolicy: Never
    args: [probe, --name, %s, --listen, ":%d"]
`, ProbeImage, p.name, npSecondPort)
		if p.second != "-" {
			fmt.Fprintf(&b, "    ports: [{name: %s, containerPort: %d, protocol: TCP}]\n", p.second, npSecondPort)
		}
	}
	return b.String()
}

const npNamespacesYAML = `apiVersion: v1
kind: Namespace
metadata: {name: np-deny}
---
apiVersion: v1
kind: Namespace
metadata: {name: np-other}
---
apiVersion: v1
kind: Namespace
metadata: {name: np-friend, labels: {np-access: "yes"}}
---
apiVersion: v1
kind: Namespace
metadata: {name: np-egress}
---
apiVersion: v1
kind: Namespace
metadata: {name: np-named}
`

// npPolicy is the YAML of NetworkPolicy ns/name with spec (indented YAML).
func npPolicy(ns, name, spec string) string {
	return "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: " + name + ", namespace: " + ns + "}\nspec:\n" + spec
}

// Policies, in the order the phase applies them.
var (
	npDefaultDenyYAML = npPolicy(npDeny, "default-deny", `  podSelector: {}
  policyTypes: [Ingress]
`)
	// Namespace only: every pod of a namespace labelled np-access=yes.
	npAllowNamespaceYAML = npPolicy(npDeny, "allow-friends", `  podSelector: {matchLabels: {app: server}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {np-access: "yes"}}
`)
	// Both in one peer: pods labelled role=client AND in such a namespace.
	npAllowCombinedYAML = npPolicy(npDeny, "allow-friends", `  podSelector: {matchLabels: {app: server}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {np-access: "yes"}}
      podSelector: {matchLabels: {role: client}}
`)
	npEgressYAML = npPolicy(npEgress, "egress-outside", `  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: %s%s}
`)
	npNamedPortYAML = npPolicy(npNamed, "web-only", `  podSelector: {}
  ingress:
  - ports: [{protocol: TCP, port: web}]
`)
)

// npRun is the state of one run of the phase.
type npRun struct {
	s   *Scenario
	c   *Cluster
	r   *NetpolResults
	n1  *Node // clients
	n2  *Node // the isolated server and the new pods
	n3  *Node
	ips map[string]netip.Addr // pod name -> address
	ns  map[string]*Netns     // pod or node name -> its namespace
	// leaks are packets that reached an isolated pod (first packet, agent
	// restart): recorded, and the phase fails at its end.
	leaks []string
}

func (np *npRun) addr(pod string, port int) netip.AddrPort {
	return netip.AddrPortFrom(np.ips[pod], uint16(port))
}

// NetworkPolicy runs the phase and removes what it made (namespaces,
// outside servers) whatever the outcome.
func (s *Scenario) NetworkPolicy(ctx context.Context) (res *NetpolResults, err error) {
	c := s.C
	if len(c.Nodes) < 3 {
		return nil, fmt.Errorf("NetworkPolicy phase: needs 3 nodes, have %d", len(c.Nodes))
	}
	np := &npRun{s: s, c: c, r: &NetpolResults{}, n1: c.Nodes[0], n2: c.Nodes[1], n3: c.Nodes[2],
		ips: map[string]netip.Addr{}, ns: map[string]*Netns{}}
	defer func() {
		for _, n := range np.ns {
			n.Close()
		}
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, derr := c.Kubectl(cctx, "delete", "namespace", npDeny, npOther, npFriend, npEgress, npNamed, "--wait=false", "--ignore-not-found"); derr != nil && err == nil {
			err = derr
		}
	}()
	stopOutside, err := np.startOutside(ctx)
	if err != nil {
		return np.r, err
	}
	defer stopOutside()
	if err := np.setup(ctx); err != nil {
		return np.r, err
	}
	dp, err := np.datapath(ctx)
	if err != nil {
		return np.r, err
	}
	np.r.Datapaths = append(np.r.Datapaths, dp)
	s.Say("NP1. Datapath between %s and %s: %s. Before any policy, %s (on %s) answers a pod on %s.", np.n1.Name, np.n2.Name, dp, "np-deny/server", np.n2.Name, np.n1.Name)
	if err := np.allowed(ctx, "client-a", np.addr("server", ProbePort), "server"); err != nil {
		return np.r, err
	}
	for _, step := range []func(context.Context) error{
		np.defaultDeny, np.combined, np.labelFlip, np.egress, np.namedPort,
	} {
		if err := step(ctx); err != nil {
			return np.r, err
		}
	}
	for _, fp := range []struct {
		name    string
		restart bool
	}{{"fresh-1", false}, {"fresh-2", true}} {
		if err := np.firstPacket(ctx, fp.name, fp.restart); err != nil {
			return np.r, errors.Join(append([]error{err}, leakErrs(np.leaks)...)...)
		}
	}
	if err := np.otherDatapath(ctx); err != nil {
		return np.r, errors.Join(append([]error{err}, leakErrs(np.leaks)...)...)
	}
	return np.r, errors.Join(leakErrs(np.leaks)...)
}

func leakErrs(leaks []string) []error {
	var errs []error
	for _, l := range leaks {
		errs = append(errs, errors.New(l))
	}
	return errs
}

// setup creates the namespaces and pods and parks a thread in each client's
// and each node's network namespace.
func (np *npRun) setup(ctx context.Context) error {
	c := np.c
	np.s.Say("NP0. Namespaces %s, %s, %s (labelled np-access=yes), %s, %s and their pods on the three nodes.", npDeny, npOther, npFriend, npEgress, npNamed)
	pods := []npPod{
		{name: "server", ns: npDeny, node: np.n2, labels: map[string]string{"app": "server"}, ready: true},
		{name: "client-a", ns: npOther, node: np.n1},
		{name: "client-b", ns: npOther, node: np.n2},
		{name: "friend-a", ns: npFriend, node: np.n1, labels: map[string]string{"role": "client"}},
		{name: "friend-c", ns: npFriend, node: np.n3},
		{name: "egress-a", ns: npEgress, node: np.n1},
		// web is port 7777 in web-a and port 7778 in web-c; both serve both.
		{name: "web-a", ns: npNamed, node: np.n1, port: "web", second: "-"},
		{name: "web-c", ns: npNamed, node: np.n3, second: "web"},
	}
	var y strings.Builder
	y.WriteString(npNamespacesYAML)
	for _, p := range pods {
		y.WriteString("---\n")
		y.WriteString(p.yaml())
	}
	if _, err := c.KubectlStdin(ctx, []byte(y.String()), "apply", "-f", "-"); err != nil {
		return err
	}
	for _, p := range pods {
		ps, err := c.WaitPods(ctx, 4*time.Minute, p.ns, "np-pod="+p.name, func(ps []PodStatus) error {
			if err := allRunning(ps, 1); err != nil {
				return err
			}
			if !ps[0].Ready {
				return fmt.Errorf("pod %s/%s not Ready", p.ns, p.name)
			}
			return nil
		})
		if err != nil {
			return err
		}
		np.ips[p.name] = netip.MustParseAddr(ps[0].IP)
	}
	for _, name := range []string{"client-a", "client-b", "friend-a", "friend-c", "egress-a", "server"} {
		node := np.nodeOf(pods, name)
		path, err := podNetnsPath(node, np.ips[name].String())
		if err != nil {
			return err
		}
		if np.ns[name], err = EnterNetns(path); err != nil {
			return err
		}
	}
	for _, n := range c.Nodes {
		var err error
		if np.ns[n.Name], err = EnterNetns(netnsPath(n.Host.Netns)); err != nil {
			return err
		}
	}
	return nil
}

func (np *npRun) nodeOf(pods []npPod, name string) *Node {
	for _, p := range pods {
		if p.name == name {
			return p.node
		}
	}
	return nil
}

// startOutside serves the one-line answer on three addresses of the Outside
// namespace (two of them added for the phase) and returns the cleanup.
func (np *npRun) startOutside(ctx context.Context) (func(), error) {
	out := np.c.Bed.Outside
	var lns []net.Listener
	var added []netip.Addr
	stop := func() {
		for _, ln := range lns {
			ln.Close()
		}
		for _, a := range added {
			_ = exec.Command("ip", "-n", out, "addr", "del", a.String()+"/24", "dev", "eth0").Run()
		}
	}
	for _, a := range []netip.Addr{npOutsideExcept, npOutsideBlock} {
		if b, err := exec.CommandContext(ctx, "ip", "-n", out, "addr", "add", a.String()+"/24", "dev", "eth0").CombinedOutput(); err != nil {
			stop()
			return nil, fmt.Errorf("outside address %s: %w: %s", a, err, b)
		}
		added = append(added, a)
	}
	for _, a := range []netip.Addr{npOutsideAllowed, npOutsideExcept, npOutsideBlock} {
		var ln net.Listener
		err := netnstest.Do(out, func() error {
			var err error
			ln, err = net.Listen("tcp", netip.AddrPortFrom(a, OutsideProbePort).String())
			return err
		})
		if err != nil {
			stop()
			return nil, fmt.Errorf("outside server %s: %w", a, err)
		}
		lns = append(lns, ln)
		go serve(ln, "outside-"+strconv.Itoa(int(a.As4()[3])))
	}
	return stop, nil
}

// serve answers every connection with name, like netprobe.
func serve(ln net.Listener, name string) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
			_, _ = conn.Write([]byte(name + "\n"))
		}()
	}
}

const (
	npProbeTimeout = 300 * time.Millisecond
	npEnforceWait  = 30 * time.Second // a policy change to enforcement, at most
)

// allowed waits until from reaches to and gets want as the answer.
func (np *npRun) allowed(ctx context.Context, from string, to netip.AddrPort, want string) error {
	what := fmt.Sprintf("%s -> %s (%s) allowed", from, to, want)
	return np.c.wait(ctx, npEnforceWait, what, func() error {
		got, err := np.ns[from].Connect(ctx, to, time.Second)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("%w: answered by %q, want %q", errStop, got, want)
		}
		return nil
	})
}

// denied waits until three probes in a row from from to to get no answer,
// then requires three more to fail as well. It returns when the first of
// the failing run was sent.
func (np *npRun) denied(ctx context.Context, from string, to netip.AddrPort) (time.Time, error) {
	what := fmt.Sprintf("%s -> %s denied", from, to)
	deadline := time.Now().Add(npEnforceWait)
	var firstFail time.Time
	fails := 0
	for fails < 3 {
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%s: still answered after %s", what, npEnforceWait)
		}
		sent := time.Now()
		_, err := np.ns[from].Connect(ctx, to, npProbeTimeout)
		switch {
		case err == nil:
			fails = 0
			// Not enforced yet: probe again soon.
			select {
			case <-ctx.Done():
				return time.Time{}, ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		case errors.Is(err, errNoAnswer) || errors.Is(err, errRejected):
			// Dropped, or rejected by the policy (the server is known to
			// listen: every denial has an allowed pair beside it).
			if fails == 0 {
				firstFail = sent
			}
			fails++
		default:
			// Connected, then the answer failed: packets got through.
			return time.Time{}, fmt.Errorf("%s: connected but: %v", what, err)
		}
	}
	for range 3 {
		got, err := np.ns[from].Connect(ctx, to, npProbeTimeout)
		if err == nil || !(errors.Is(err, errNoAnswer) || errors.Is(err, errRejected)) {
			return time.Time{}, fmt.Errorf("%s: connected after three probes got none (%q, %v)", what, got, err)
		}
	}
	return firstFail, nil
}

// npObserve returns once d has passed since from: a span during which
// probes run (and must keep their verdict), not a wait for a condition.
func npObserve(ctx context.Context, from time.Time, d time.Duration) error {
	t := time.NewTimer(time.Until(from.Add(d)))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// reach is one expected outcome: from reaches to and is answered by want,
// or, with want "", does not reach it.
type reach struct {
	from string
	to   netip.AddrPort
	want string
}

// expect checks each outcome in turn (allowed or denied, as above).
func (np *npRun) expect(ctx context.Context, rs ...reach) error {
	for _, r := range rs {
		var err error
		if r.want == "" {
			_, err = np.denied(ctx, r.from, r.to)
		} else {
			err = np.allowed(ctx, r.from, r.to, r.want)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// apply applies y and returns when kubectl was started.
func (np *npRun) apply(ctx context.Context, y string) (time.Time, error) {
	start := time.Now()
	if _, err := np.c.KubectlStdin(ctx, []byte(y), "apply", "-f", "-"); err != nil {
		return time.Time{}, err
	}
	return start, nil
}

func (np *npRun) defaultDeny(ctx context.Context) error {
	s := np.s
	s.Say("NP2. default-deny (ingress) in %s, and allow-friends: from namespaces labelled np-access=yes.", npDeny)
	applied, err := np.apply(ctx, npDefaultDenyYAML+"---\n"+npAllowNamespaceYAML)
	if err != nil {
		return err
	}
	srv := np.addr("server", ProbePort)
	first, err := np.denied(ctx, "client-a", srv)
	if err != nil {
		return err
	}
	np.r.DenyEnforced = first.Sub(applied)
	s.Say("     from another node (%s, np-other): denied, %s after the apply", np.n1.Name, np.r.DenyEnforced.Round(time.Millisecond))
	if err := np.expect(ctx, reach{"client-b", srv, ""}, reach{np.n1.Name, srv, ""}, reach{np.n2.Name, srv, "server"},
		reach{"friend-a", srv, "server"}, reach{"friend-c", srv, "server"},
		// Replies of connections the isolated pod opens are allowed back in.
		reach{"server", np.addr("client-a", ProbePort), "client-a"}); err != nil {
		return err
	}
	s.Say("     from the same node (%s, np-other): denied", np.n2.Name)
	s.Say("     from another node's host network (%s): denied", np.n1.Name)
	s.Say("     from its own node (%s): allowed", np.n2.Name)
	s.Say("     from np-friend on %s and on %s (namespaceSelector): allowed", np.n1.Name, np.n3.Name)
	s.Say("     the isolated server's own connection to client-a on %s: its replies come back (established)", np.n1.Name)
	// Kubelet's readiness probe (every second, one failure flips it) has
	// run through the policy for a while: the pod must still be Ready,
	// and Ready since before the policy.
	if err := npObserve(ctx, applied, 3*time.Second); err != nil {
		return fmt.Errorf("3 s of readiness probes under default-deny: %w", err)
	}
	pod, err := np.getPod(ctx, npDeny, "server")
	if err != nil {
		return err
	}
	for _, cond := range pod.Status.Conditions {
		if cond.Type != corev1.PodReady {
			continue
		}
		if cond.Status != corev1.ConditionTrue || !cond.LastTransitionTime.Time.Before(applied) {
			return fmt.Errorf("np-deny/server under default-deny: Ready=%s since %s (policy applied %s): kubelet's probes from the node were dropped",
				cond.Status, cond.LastTransitionTime.Format(time.RFC3339), applied.Format(time.RFC3339Nano))
		}
		s.Say("     kubelet's readiness probe (every 1 s, failureThreshold 1) kept the server Ready throughout")
		return nil
	}
	return errors.New("np-deny/server: no Ready condition")
}

func (np *npRun) getPod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	out, err := np.c.Kubectl(ctx, "-n", ns, "get", "pod", name, "-o", "json")
	if err != nil {
		return nil, err
	}
	var p corev1.Pod
	if err := json.Unmarshal(out, &p); err != nil {
		return nil, fmt.Errorf("decode pod %s/%s: %w", ns, name, err)
	}
	return &p, nil
}

func (np *npRun) label(ctx context.Context, ns, pod, label string) error {
	_, err := np.c.Kubectl(ctx, "-n", ns, "label", "pod", pod, label, "--overwrite")
	return err
}

func (np *npRun) combined(ctx context.Context) error {
	s := np.s
	s.Say("NP3. allow-friends becomes podSelector role=client AND namespaceSelector np-access=yes; client-a (np-other) gets role=client too.")
	if err := np.label(ctx, npOther, "client-a", "role=client"); err != nil {
		return err
	}
	if _, err := np.apply(ctx, npAllowCombinedYAML); err != nil {
		return err
	}
	srv := np.addr("server", ProbePort)
	if err := np.expect(ctx, reach{"friend-c", srv, ""}, reach{"friend-a", srv, "server"}, reach{"client-a", srv, ""}); err != nil {
		return err
	}
	s.Say("     friend-a (np-friend, role=client, %s): allowed; friend-c (np-friend, no role, %s): denied;", np.n1.Name, np.n3.Name)
	s.Say("     client-a (role=client in np-other): denied")
	return nil
}

func (np *npRun) labelFlip(ctx context.Context) error {
	s := np.s
	s.Say("NP4. A label change flips reachability: friend-c on %s gets role=client, then loses it.", np.n3.Name)
	srv := np.addr("server", ProbePort)
	for _, step := range []struct {
		label string
		want  string
	}{{"role=client", "server"}, {"role-", ""}} {
		if err := np.label(ctx, npFriend, "friend-c", step.label); err != nil {
			return err
		}
		if err := np.expect(ctx, reach{"friend-c", srv, step.want}); err != nil {
			return err
		}
	}
	s.Say("     allowed with the label, denied again without it")
	return nil
}

func (np *npRun) egress(ctx context.Context) error {
	s := np.s
	at := func(a netip.Addr) netip.AddrPort { return netip.AddrPortFrom(a, OutsideProbePort) }
	name := func(a netip.Addr) string { return "outside-" + strconv.Itoa(int(a.As4()[3])) }
	s.Say("NP5. Egress in %s only to ipBlock %s/32 of the outside world (servers on %s, %s, %s).", npEgress, npOutsideAllowed, npOutsideAllowed, npOutsideExcept, npOutsideBlock)
	// Before: the outside servers answer pods.
	for _, a := range []netip.Addr{npOutsideAllowed, npOutsideExcept, npOutsideBlock} {
		if err := np.allowed(ctx, "egress-a", at(a), name(a)); err != nil {
			return err
		}
	}
	if _, err := np.apply(ctx, fmt.Sprintf(npEgressYAML, npOutsideAllowed.String()+"/32", "")); err != nil {
		return err
	}
	if err := np.expect(ctx, reach{"egress-a", at(npOutsideExcept), ""}, reach{"egress-a", at(npOutsideAllowed), name(npOutsideAllowed)},
		reach{"client-a", at(npOutsideExcept), name(npOutsideExcept)}, reach{"egress-a", np.addr("client-b", ProbePort), ""}); err != nil {
		return err
	}
	s.Say("     %s allowed, %s denied (client-a on the same node, not selected, still reaches it); a pod on %s denied", npOutsideAllowed, npOutsideExcept, np.n2.Name)
	s.Say("     then the block becomes 198.18.0.192/26 except %s/32.", npOutsideExcept)
	if _, err := np.apply(ctx, fmt.Sprintf(npEgressYAML, "198.18.0.192/26", ", except: ["+npOutsideExcept.String()+"/32]")); err != nil {
		return err
	}
	if err := np.expect(ctx, reach{"egress-a", at(npOutsideBlock), name(npOutsideBlock)}, reach{"egress-a", at(npOutsideAllowed), name(npOutsideAllowed)},
		reach{"egress-a", at(npOutsideExcept), ""}); err != nil {
		return err
	}
	s.Say("     %s and %s allowed, %s (the except) denied", npOutsideAllowed, npOutsideBlock, npOutsideExcept)
	return nil
}

func (np *npRun) namedPort(ctx context.Context) error {
	s := np.s
	s.Say("NP6. Named port: ingress in %s only to port \"web\": 7777 in web-a (%s), 7778 in web-c (%s); both serve both.", npNamed, np.n1.Name, np.n3.Name)
	for _, p := range []netip.AddrPort{np.addr("web-a", ProbePort), np.addr("web-a", npSecondPort), np.addr("web-c", ProbePort), np.addr("web-c", npSecondPort)} {
		if err := np.allowed(ctx, "client-b", p, np.nameAt(p.Addr())); err != nil {
			return err
		}
	}
	if _, err := np.apply(ctx, npNamedPortYAML); err != nil {
		return err
	}
	if err := np.expect(ctx, reach{"client-b", np.addr("web-a", npSecondPort), ""}, reach{"client-b", np.addr("web-c", ProbePort), ""},
		reach{"client-b", np.addr("web-a", ProbePort), "web-a"}, reach{"client-b", np.addr("web-c", npSecondPort), "web-c"}); err != nil {
		return err
	}
	s.Say("     from %s: web-a:7777 and web-c:7778 allowed, web-a:7778 and web-c:7777 denied", np.n2.Name)
	return nil
}

func (np *npRun) nameAt(a netip.Addr) string {
	for name, ip := range np.ips {
		if ip == a {
			return name
		}
	}
	return ""
}

// nextAddrs lists the addresses the next pod on n can get: weft gives the
// lowest free address of the node's own ranges, so every address from the
// start of its lowest range up to the 16th free one (at most 64, allocated
// ones included: a pod may be deleted meanwhile and free a lower one).
func (c *Cluster) nextAddrs(ctx context.Context, n *Node) ([]netip.Addr, error) {
	cl := api.NewClient(api.SocketPath(n.WeftRunDir()), 5*time.Second)
	st, err := cl.IPAM(ctx)
	if err != nil {
		return nil, err
	}
	cs, err := cl.Containers(ctx)
	if err != nil {
		return nil, err
	}
	used := map[netip.Addr]bool{}
	for _, ct := range cs {
		if a, err := ct.Addr(); err == nil {
			used[a] = true
		}
	}
	var prefixes []netip.Prefix
	for _, e := range st.Entries {
		if !e.Local {
			continue
		}
		for _, r := range e.Ranges {
			p, err := netip.ParsePrefix(r)
			if err != nil {
				return nil, fmt.Errorf("ipam range %q: %w", r, err)
			}
			prefixes = append(prefixes, p)
		}
	}
	slices.SortFunc(prefixes, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	var out []netip.Addr
	free := 0
	for _, p := range prefixes {
		for a := p.Addr(); p.Contains(a) && free < 16 && len(out) < 64; a = a.Next() {
			out = append(out, a)
			if !used[a] {
				free++
			}
		}
	}
	if free == 0 {
		return nil, fmt.Errorf("%s: no free address in its ranges %v", n.Name, prefixes)
	}
	return out, nil
}

// firstPacket creates a new pod under default-deny on n2 while a pod on n1
// pings every address it can get every 10 ms, from before the pod is
// created until 2 s after it is Ready; with restart, the weft agent of n2 is
// killed (its pod deleted) first, and the pod is created while the new agent
// starts. No echo reply may come from the new pod (nor, with restart, from
// the isolated server) at any time.
func (np *npRun) firstPacket(ctx context.Context, name string, restart bool) error {
	s, c := np.s, np.c
	if restart {
		s.Say("NP8. The weft agent on %s is killed (its pod deleted) and, while the new one starts, %s/%s is created there;", np.n2.Name, npDeny, name)
		s.Say("     a pod on %s pings every address it may get, and the isolated server, every 10 ms.", np.n1.Name)
	} else {
		s.Say("NP7. First packet: %s/%s is created on %s under default-deny while a pod on %s pings every address", npDeny, name, np.n2.Name, np.n1.Name)
		s.Say("     it may get every 10 ms, from before the create until 2 s after it is Ready.")
	}
	cands, err := c.nextAddrs(ctx, np.n2)
	if err != nil {
		return err
	}
	control := np.ips["client-b"] // same node, not isolated: proves the pinger works
	targets := append(slices.Clone(cands), control, np.ips["server"])
	p, err := StartPinger(np.ns["client-a"], targets, 10*time.Millisecond)
	if err != nil {
		return err
	}
	defer p.Stop()
	// Some rounds before anything happens.
	if err := c.wait(ctx, 10*time.Second, "pinger running", func() error {
		if _, replies, _ := p.Counts(control); replies < 5 {
			return fmt.Errorf("%d replies from the control pod %s", replies, control)
		}
		return nil
	}); err != nil {
		return err
	}
	if restart {
		if _, err := c.Kubectl(ctx, "-n", "weft-system", "delete", "pod", "-l", "app.kubernetes.io/name=weft",
			"--field-selector", "spec.nodeName="+np.n2.Name, "--wait=false"); err != nil {
			return err
		}
	}
	pod := npPod{name: name, ns: npDeny, node: np.n2, labels: map[string]string{"app": "server"}, ready: true}
	created := time.Now()
	if _, err := c.KubectlStdin(ctx, []byte(pod.yaml()), "apply", "-f", "-"); err != nil {
		return err
	}
	ps, err := c.WaitPods(ctx, 3*time.Minute, npDeny, "np-pod="+name, func(ps []PodStatus) error {
		if err := allRunning(ps, 1); err != nil {
			return err
		}
		if !ps[0].Ready {
			return errors.New("not Ready yet")
		}
		return nil
	})
	if err != nil {
		return err
	}
	ip := netip.MustParseAddr(ps[0].IP)
	np.ips[name] = ip
	if !slices.Contains(cands, ip) {
		return fmt.Errorf("%s got %s, not among the %d addresses probed (%s..%s): the first-packet check did not cover it",
			name, ip, len(cands), cands[0], cands[len(cands)-1])
	}
	if restart {
		if _, err := c.Kubectl(ctx, "-n", "weft-system", "rollout", "status", "ds/weft", "--timeout=2m"); err != nil {
			return err
		}
	}
	ready := time.Now()
	if err := npObserve(ctx, ready, 2*time.Second); err != nil {
		return fmt.Errorf("2 s of probing after Ready: %w", err)
	}
	p.Stop()
	sent, replies, firstReply := p.Counts(ip)
	np.r.FirstPacketProbes += sent
	np.r.FirstPacketReplies += replies
	_, ctlReplies, _ := p.Counts(control)
	if ctlReplies == 0 {
		return fmt.Errorf("the control pod %s never answered the pinger: the check proves nothing", control)
	}
	// A leak is recorded and the phase goes on (the other checks tell
	// more about it); NetworkPolicy fails at the end.
	tcp := "TCP from " + np.n1.Name + " denied afterwards"
	if _, err := np.denied(ctx, "client-a", netip.AddrPortFrom(ip, ProbePort)); err != nil {
		tcp = err.Error()
	}
	if replies > 0 {
		// One echo that gets through makes the ping flow "established" in
		// conntrack, so later ones pass too: the first reply is what counts.
		np.leak("FIRST PACKET: %s (%s) under default-deny answered %d of %d echo requests from %s; the first reply %s after the create "+
			"(Ready after %s); %s", name, ip, replies, sent, np.n1.Name, firstReply.Sub(created).Round(time.Millisecond),
			ready.Sub(created).Round(time.Millisecond), tcp)
	} else {
		s.Say("     %s got %s: %d echo requests to it, 0 replies (the control pod on %s answered %d); %s", name, ip, sent, np.n2.Name, ctlReplies, tcp)
	}
	if restart {
		srvSent, srvReplies, _ := p.Counts(np.ips["server"])
		if srvReplies > 0 {
			np.leak("AGENT RESTART: the isolated server answered %d of %d echo requests while the agent restarted", srvReplies, srvSent)
		} else {
			s.Say("     the isolated server: %d echo requests across the restart, 0 replies", srvSent)
		}
	}
	// From its own node: allowed (kubelet's probes got it Ready already).
	return np.allowed(ctx, np.n2.Name, netip.AddrPortFrom(ip, ProbePort), name)
}

// leak records a packet that reached an isolated pod.
func (np *npRun) leak(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	np.leaks = append(np.leaks, msg)
	np.s.Say("     LEAK: %s", msg)
}

// datapath says how n1 sends to n2: "fastdp" or the userspace path's name,
// with "(encrypted)" when it is.
func (np *npRun) datapath(ctx context.Context) (string, error) {
	var dp string
	err := np.c.wait(ctx, time.Minute, np.n1.Name+" -> "+np.n2.Name+" connection established", func() error {
		cs, err := api.NewClient(api.SocketPath(np.n1.WeftRunDir()), 5*time.Second).Connections(ctx)
		if err != nil {
			return err
		}
		for _, cn := range cs {
			if cn.Peer != np.n2.Name {
				continue
			}
			if cn.State != "established" {
				return fmt.Errorf("state %s (%s)", cn.State, cn.Reason)
			}
			dp = cn.Datapath
			if cn.Encrypted {
				dp += " (encrypted)"
			}
			return nil
		}
		return fmt.Errorf("no connection to %s", np.n2.Name)
	})
	return dp, err
}

// otherDatapath switches the cluster to the datapath it does not run (the
// kernel fast path needs plaintext; userspace is forced with
// WEFT_DATAPATH=userspace), repeats the core checks across nodes there, and
// switches back.
func (np *npRun) otherDatapath(ctx context.Context) error {
	s, c := np.s, np.c
	before := np.r.Datapaths[0]
	var switchTo, restore func(context.Context) error
	var wantFast bool
	switch {
	case before == "fastdp":
		switchTo = func(ctx context.Context) error {
			_, err := c.Kubectl(ctx, "-n", "weft-system", "set", "env", "ds/weft", "WEFT_DATAPATH=userspace")
			return err
		}
		restore = func(ctx context.Context) error {
			_, err := c.Kubectl(ctx, "-n", "weft-system", "set", "env", "ds/weft", "WEFT_DATAPATH-")
			return err
		}
		s.Say("NP9. The other datapath: WEFT_DATAPATH=userspace on the DaemonSet (agents restart one node at a time).")
	case strings.HasSuffix(before, "(encrypted)"):
		wantFast = true
		out, err := c.Kubectl(ctx, "-n", "weft-system", "get", "secret", "weft-passwd", "-o", "json")
		if err != nil {
			return err
		}
		var orig corev1.Secret
		if err := json.Unmarshal(out, &orig); err != nil {
			return err
		}
		put := func(ctx context.Context, data map[string][]byte) error {
			sec := corev1.Secret{TypeMeta: orig.TypeMeta, Data: data}
			sec.Name, sec.Namespace = orig.Name, orig.Namespace
			b, err := json.Marshal(sec)
			if err != nil {
				return err
			}
			if _, err := c.KubectlStdin(ctx, b, "replace", "-f", "-"); err != nil {
				return err
			}
			_, err = c.Kubectl(ctx, "-n", "weft-system", "rollout", "restart", "ds/weft")
			return err
		}
		switchTo = func(ctx context.Context) error {
			return put(ctx, map[string][]byte{"WEFT_PLAINTEXT": []byte("true")})
		}
		restore = func(ctx context.Context) error { return put(ctx, orig.Data) }
		s.Say("NP9. The other datapath: the Secret weft-passwd becomes WEFT_PLAINTEXT=true (kernel fast path) and the agents restart.")
	default:
		return fmt.Errorf("datapath %q is neither the fast path nor encrypted: cannot pick the other one", before)
	}
	rollout := func(ctx context.Context) error {
		_, err := c.Kubectl(ctx, "-n", "weft-system", "rollout", "status", "ds/weft", "--timeout=4m")
		return err
	}
	if err := switchTo(ctx); err != nil {
		return err
	}
	if err := rollout(ctx); err != nil {
		return err
	}
	var dp string
	if err := c.wait(ctx, time.Minute, "the other datapath", func() error {
		var err error
		if dp, err = np.datapath(ctx); err != nil {
			return err
		}
		if (dp == "fastdp") != wantFast {
			return fmt.Errorf("%s -> %s still on %s", np.n1.Name, np.n2.Name, dp)
		}
		return nil
	}); err != nil {
		return err
	}
	np.r.Datapaths = append(np.r.Datapaths, dp)
	s.Say("     %s -> %s now on %s", np.n1.Name, np.n2.Name, dp)
	srv := np.addr("server", ProbePort)
	if err := np.expect(ctx, reach{"client-a", srv, ""}, reach{"friend-a", srv, "server"}, reach{"friend-c", srv, ""}); err != nil {
		return err
	}
	s.Say("     across nodes on %s: client-a and friend-c denied, friend-a allowed", dp)
	if err := np.firstPacket(ctx, "fresh-3", false); err != nil {
		return err
	}
	if err := restore(ctx); err != nil {
		return err
	}
	if err := rollout(ctx); err != nil {
		return err
	}
	return c.wait(ctx, time.Minute, "back on "+before, func() error {
		dp, err := np.datapath(ctx)
		if err != nil {
			return err
		}
		if dp != before {
			return fmt.Errorf("on %s", dp)
		}
		s.Say("     back on %s", dp)
		return nil
	})
}
