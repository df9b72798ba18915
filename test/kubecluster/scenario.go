package kubecluster

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/internal/atomicfile"
)

// ProbePort is where every probe pod (and the host-network probe) serves.
const ProbePort = 7777

// probeDir is the probe pods' hostPath: under the node's own /run, so it is
// per node without another bind mount.
const probeDir = "/run/netprobe"

// secretYAML is what an operator creates before applying weft.yaml: the
// namespace and the required Secret, with a random password (encryption)
// or WEFT_PLAINTEXT=true (the kernel fast path, the cluster's default here).
func secretYAML(password bool) []byte {
	data := "WEFT_PLAINTEXT: \"true\""
	if password {
		pw := make([]byte, 24)
		_, _ = rand.Read(pw)
		data = fmt.Sprintf("WEFT_PASSWORD: %q", base64.StdEncoding.EncodeToString(pw))
	}
	return fmt.Appendf(nil, `apiVersion: v1
kind: Namespace
metadata:
  name: weft-system
---
apiVersion: v1
kind: Secret
metadata:
  name: weft-passwd
  namespace: weft-system
stringData:
  %s
`, data)
}

// probesYAML is the workload: six probe pods spread evenly over the nodes,
// and one probe in the host network of the last node.
const probesYAML = `apiVersion: apps/v1
kind: Deployment
metadata: {name: netprobe, namespace: default}
spec:
  replicas: %[1]d
  selector: {matchLabels: {app: netprobe}}
  template:
    metadata: {labels: {app: netprobe}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 2
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: netprobe}}}
      containers:
      - name: probe
        image: %[2]s
        imagePullPolicy: Never
        args: [probe, --listen, ":%[3]d", --peers-file, %[4]s/peers, --results-dir, %[4]s/results, --udp-interval, 10ms]
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        volumeMounts: [{name: probe, mountPath: %[4]s}]
      volumes: [{name: probe, hostPath: {path: %[4]s, type: DirectoryOrCreate}}]
---
apiVersion: v1
kind: Pod
metadata: {name: hostprobe, namespace: default, labels: {app: hostprobe}}
spec:
  hostNetwork: true
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 2
  nodeSelector: {kubernetes.io/hostname: %[5]s}
  containers:
  - name: probe
    image: %[2]s
    imagePullPolicy: Never
    args: [probe, --name, hostprobe, --listen, ":%[3]d", --results-dir, %[4]s/results]
    volumeMounts: [{name: probe, mountPath: %[4]s}]
  volumes: [{name: probe, hostPath: {path: %[4]s, type: DirectoryOrCreate}}]
`

// firstPacketYAML is one probe pod on the first node that probes the given
// peers every 20 ms from its start: the first answer is the first packet
// across nodes.
const firstPacketYAML = `apiVersion: v1
kind: Pod
metadata: {name: firstpacket, namespace: default, labels: {app: firstpacket}}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 2
  nodeSelector: {kubernetes.io/hostname: %[1]s}
  containers:
  - name: probe
    image: %[2]s
    imagePullPolicy: Never
    args: [probe, --name, firstpacket, --interval, 20ms, --timeout, 500ms, --peers, "%[3]s", --results-dir, %[4]s/results]
    volumeMounts: [{name: probe, mountPath: %[4]s}]
  volumes: [{name: probe, hostPath: {path: %[4]s, type: DirectoryOrCreate}}]
`

// ProbeReport is a probe pod's results file (see ./netprobe).
type ProbeReport struct {
	Name    string                  `json:"name"`
	Updated time.Time               `json:"updated"`
	Peers   map[string]*ProbeResult `json:"peers"`
	UDP     map[string]*UDPResult   `json:"udp"`
}

// UDPResult is a probe pod's UDP echoes from one peer, every 10 ms.
type UDPResult struct {
	Addr   string     `json:"addr"`
	Echoes int        `json:"echoes"`
	LastOK time.Time  `json:"last_ok"`
	MaxGap float64    `json:"max_gap_seconds"`
	Gaps   []ProbeGap `json:"gaps"`
}

// ProbeGap is a silence of a peer, as ./netprobe records it.
type ProbeGap struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
}

// ProbeResult is one pod's view of one peer.
type ProbeResult struct {
	Addr    string         `json:"addr"`
	Answer  string         `json:"answer"`
	Answers map[string]int `json:"answers"` // every name answered, with counts
	FirstOK time.Time      `json:"first_ok"`
	LastOK  time.Time      `json:"last_ok"`
	MaxGap  float64        `json:"max_gap_seconds"`
	Fails   int            `json:"fails"`
	LastErr string         `json:"last_err"`
}

// Results are the scenario's measurements.
type Results struct {
	ApplyToReady     time.Duration // kubectl apply of weft.yaml to every Node Ready
	DeployToReach    time.Duration // Deployment created to every pod answering every other
	FirstCrossNode   time.Duration // pod created to its first answer from a pod on another node
	RolloutRestart   time.Duration // rollout restart of the DaemonSet until rolled out (plaintext)
	MaxGapInRestart  time.Duration // longest silence of any pod pair in that rollout restart (UDP every 10 ms)
	Upgrade          time.Duration // apply of the next release until rolled out
	GapUpgrade       time.Duration // longest pair silence in the upgrade
	Rollback         time.Duration // apply of the first release again until rolled out
	GapRollback      time.Duration // longest pair silence in the rollback
	GapToEncrypted   time.Duration // longest pair silence while switching plaintext -> password (mixed mesh: no goal)
	RestartEncrypted time.Duration // rollout restart with a password until rolled out
	GapEncrypted     time.Duration // longest pair silence in it
	ReclaimAfterDrop time.Duration // Node deleted to its ranges owned by the others
	Pods             []PodStatus
	Services         *ServiceResults
	NetworkPolicy    *NetpolResults // the NetworkPolicy phase (netpol.go)
}

// Scenario narrates and runs the operator's path through weft on Kubernetes.
type Scenario struct {
	C *Cluster
	// Release is installed (nil: prog/kube/weft.yaml as shipped, with the
	// image from prog/image/build.sh); Upgrade, when set too, is upgraded to
	// and rolled back from.
	Release, Upgrade *Release
	Say              func(format string, args ...any) // one line of narration
	Show             func(title, text string)         // command output worth showing
	// Measured collects the silences of every restart step (roll).
	Measured []Silence
}

func (s *Scenario) show(ctx context.Context, args ...string) {
	out, err := s.C.Kubectl(ctx, args...)
	if err != nil {
		out = []byte(err.Error())
	}
	s.Show("$ kubectl "+strings.Join(args, " "), string(out))
}

// Run does the whole scenario, stopping at the first step that fails.
func (s *Scenario) Run(ctx context.Context) (*Results, error) {
	c, r := s.C, &Results{}

	if err := s.Install(ctx, r); err != nil {
		return r, err
	}

	pods, peers, err := s.deployProbes(ctx, r)
	if err != nil {
		return r, err
	}
	s.Say("   weft status mesh from any node, and weft ps naming the pods on each node:")
	if err := s.CheckMeshView(ctx); err != nil {
		return r, err
	}
	if err := s.CheckPodNames(ctx, "default", pods); err != nil {
		return r, err
	}

	s.Say("5. A new pod on %s probes the pods on the other nodes every 20 ms from its start.", c.Nodes[0].Name)
	var targets []string
	for _, p := range pods {
		if p.Node != c.Nodes[0].Name {
			targets = append(targets, fmt.Sprintf("%s=%s:%d", p.Name, p.IP, ProbePort))
		}
	}
	created := time.Now()
	if _, err := c.KubectlStdin(ctx, fmt.Appendf(nil, firstPacketYAML, c.Nodes[0].Name, ProbeImage, strings.Join(targets, ","), probeDir), "apply", "-f", "-"); err != nil {
		return r, err
	}
	if err := c.wait(ctx, time.Minute, "first cross-node answer", func() error {
		rep, err := readReport(filepath.Join(c.Nodes[0].RunDir(), "netprobe", "results", "firstpacket.json"))
		if err != nil {
			return err
		}
		var first time.Time
		for _, pr := range rep.Peers {
			if !pr.FirstOK.IsZero() && (first.IsZero() || pr.FirstOK.Before(first)) {
				first = pr.FirstOK
			}
		}
		if first.IsZero() {
			return errors.New("no answer yet")
		}
		r.FirstCrossNode = first.Sub(created)
		return nil
	}); err != nil {
		return r, err
	}
	s.Say("   first answer from another node %s after the pod was created", r.FirstCrossNode.Round(time.Millisecond))
	if _, err := c.Kubectl(ctx, "delete", "pod", "firstpacket", "--wait=false"); err != nil {
		return r, err
	}

	// The operator's chain is set before the restarts, which pick it up;
	// the Services steps come after the restarts, so that a failure there
	// does not hide the restart, upgrade and rollback figures.
	if err := s.SetOperatorChain(ctx); err != nil {
		return r, err
	}

	var over []string
	// The Node Events checks (events.go) do not stop the scenario: what
	// they find is reported at its end with the restart figures.
	var late []error
	goal := func(what string, gap, limit time.Duration) {
		if gap > limit {
			over = append(over, fmt.Sprintf("%s: longest pair silence %s, goal %s", what, gap.Round(10*time.Millisecond), limit))
		}
	}
	s.Say("13. kubectl rollout restart ds/weft (plaintext, kernel fast path): each node's new agent starts beside the")
	s.Say("    old one, stands by, takes over when the old pod is stopped; the running pods keep their addresses.")
	restarted := time.Now()
	r.RolloutRestart, r.MaxGapInRestart, err = s.roll(ctx, "rollout restart, plaintext", pods, peers, func() error {
		_, err := c.Kubectl(ctx, "-n", "weft-system", "rollout", "restart", "ds/weft")
		return err
	})
	if err != nil {
		return r, err
	}
	// Each new agent's first readiness is an Event on its Node.
	if err := s.CheckReadyEvents(ctx, restarted, false); err != nil {
		late = append(late, err)
	}
	s.Say("   rolled out in %s; every pair answers again; longest silence of any pair: %s (goal %s)",
		r.RolloutRestart.Round(100*time.Millisecond), r.MaxGapInRestart.Round(10*time.Millisecond), GoalPlaintext)
	goal("rollout restart, plaintext", r.MaxGapInRestart, GoalPlaintext)
	if err := s.checkDatapath(ctx, false); err != nil {
		return r, err
	}
	if err := s.CheckOperatorChain(ctx); err != nil {
		return r, err
	}

	if r1, r2 := s.Release, s.Upgrade; r1 != nil && r2 != nil {
		if err := s.checkVersion(ctx, r1.Version); err != nil {
			return r, err
		}
		s.Say("14b. Upgrade %s -> %s: the new release's image imported, its weft.yaml applied.", r1.Version, r2.Version)
		r.Upgrade, r.GapUpgrade, err = s.roll(ctx, "upgrade", pods, peers, func() error { return s.applyRelease(ctx, r2) })
		if err != nil {
			return r, err
		}
		if err := s.checkVersion(ctx, r2.Version); err != nil {
			return r, err
		}
		s.Say("   every node runs %s after %s; pods kept their addresses; longest pair silence %s (goal %s)",
			r2.Version, r.Upgrade.Round(100*time.Millisecond), r.GapUpgrade.Round(10*time.Millisecond), GoalPlaintext)
		goal("upgrade", r.GapUpgrade, GoalPlaintext)

		s.Say("14c. Roll back to %s the same way: its weft.yaml applied again.", r1.Version)
		r.Rollback, r.GapRollback, err = s.roll(ctx, "rollback", pods, peers, func() error { return s.applyRelease(ctx, r1) })
		if err != nil {
			return r, err
		}
		if err := s.checkVersion(ctx, r1.Version); err != nil {
			return r, err
		}
		s.Say("   every node runs %s after %s; longest pair silence %s (goal %s)",
			r1.Version, r.Rollback.Round(100*time.Millisecond), r.GapRollback.Round(10*time.Millisecond), GoalPlaintext)
		goal("rollback", r.GapRollback, GoalPlaintext)
		if err := s.checkDatapath(ctx, false); err != nil {
			return r, err
		}
	}

	s.Say("14d. Encryption: the Secret gets a password and the agents restart with it (while the mesh is")
	s.Say("     mixed, encrypted and plaintext nodes do not talk: no goal for this one).")
	switched := time.Now()
	_, r.GapToEncrypted, err = s.roll(ctx, "plaintext -> encrypted", pods, peers, func() error {
		if err := s.setSecret(ctx, true); err != nil {
			return err
		}
		_, err := c.Kubectl(ctx, "-n", "weft-system", "rollout", "restart", "ds/weft")
		return err
	})
	if err != nil {
		return r, err
	}
	s.Say("   longest pair silence while switching: %s", r.GapToEncrypted.Round(10*time.Millisecond))
	s.Say("   the agents that met a peer with the other password said so on their Node:")
	if err := s.CheckPasswordEvents(ctx, switched); err != nil {
		late = append(late, err)
	}
	if err := s.checkDatapath(ctx, true); err != nil {
		return r, err
	}
	s.Say("14e. kubectl rollout restart ds/weft, encrypted.")
	r.RestartEncrypted, r.GapEncrypted, err = s.roll(ctx, "rollout restart, encrypted", pods, peers, func() error {
		_, err := c.Kubectl(ctx, "-n", "weft-system", "rollout", "restart", "ds/weft")
		return err
	})
	if err != nil {
		return r, err
	}
	s.Say("   rolled out in %s; longest pair silence %s (goal %s)",
		r.RestartEncrypted.Round(100*time.Millisecond), r.GapEncrypted.Round(10*time.Millisecond), GoalEncrypted)
	goal("rollout restart, encrypted", r.GapEncrypted, GoalEncrypted)
	if err := s.checkDatapath(ctx, true); err != nil {
		return r, err
	}

	if r.Services, err = s.Services(ctx, pods, peers); err != nil {
		return r, err
	}

	// NetworkPolicy (netpol.go) after the restart measurements: it restarts agents itself.
	if r.NetworkPolicy, err = s.NetworkPolicy(ctx); err != nil {
		return r, err
	}

	if err := s.DropNode(ctx, r); err != nil {
		late = append(late, err)
	}
	if len(over) > 0 {
		late = append(late, fmt.Errorf("%w: %s", errGoal, strings.Join(over, "; ")))
	}
	return r, errors.Join(late...)
}

// DropNode is step 15: the last node dies (power off) and its Node is
// deleted; the others take over its ranges and say so in a
// WeftRangeReclaimed Event.
func (s *Scenario) DropNode(ctx context.Context, r *Results) error {
	c, last := s.C, s.C.Nodes[len(s.C.Nodes)-1]
	s.Say("15. %s dies and its Node is deleted: the other agents take over its address ranges.", last.Name)
	before, err := c.ipam(ctx, c.Nodes[0])
	if err != nil {
		return err
	}
	s.Show("$ weft status ipam (on "+c.Nodes[0].Name+")", formatIPAM(before))
	var owned uint64
	for _, e := range before.Entries {
		if e.Name == last.Name {
			owned = e.Owned
		}
	}
	if owned == 0 {
		return fmt.Errorf("%s %w before it was dropped: nothing to reclaim", last.Name, errNoOwner)
	}
	if err := c.StopNode(last); err != nil {
		return err
	}
	start := time.Now()
	if _, err := c.Kubectl(ctx, "delete", "node", last.Name); err != nil {
		return err
	}
	var final api.IPAMStatus
	err = c.wait(ctx, 3*time.Minute, "ranges of "+last.Name+" reclaimed", func() error {
		for _, n := range c.Nodes[:len(c.Nodes)-1] {
			st, err := c.ipam(ctx, n)
			if err != nil {
				return err
			}
			for _, e := range st.Entries {
				if e.Name == last.Name && e.Owned > 0 {
					return fmt.Errorf("%s still sees %s owning %d addresses", n.Name, last.Name, e.Owned)
				}
			}
			final = st
		}
		return nil
	})
	if err != nil {
		return err
	}
	r.ReclaimAfterDrop = time.Since(start)
	s.Show("$ weft status ipam (on "+c.Nodes[0].Name+")", formatIPAM(final))
	s.Say("   reclaimed %s after the Node was deleted; the Event that says so:", r.ReclaimAfterDrop.Round(100*time.Millisecond))
	return s.CheckReclaimEvents(ctx, start, last.Name, owned)
}

// deployProbes is steps 3 and 4: the probe pods spread over the nodes and the
// host-network probe, every pair answering. It returns the pods and the
// peers file's entries (name -> address).
func (s *Scenario) deployProbes(ctx context.Context, r *Results) ([]PodStatus, map[string]string, error) {
	c := s.C
	last := c.Nodes[len(c.Nodes)-1]
	s.Say("3. A Deployment of 6 probe pods spread over the nodes, and a host-network probe on %s.", last.Name)
	start := time.Now()
	if _, err := c.KubectlStdin(ctx, fmt.Appendf(nil, probesYAML, 6, ProbeImage, ProbePort, probeDir, last.Name), "apply", "-f", "-"); err != nil {
		return nil, nil, err
	}
	pods, err := c.WaitPods(ctx, 2*time.Minute, "default", "app=netprobe", func(pods []PodStatus) error {
		return allRunning(pods, 6)
	})
	if err != nil {
		return nil, nil, err
	}
	if err := spreadEvenly(pods, c.Nodes); err != nil {
		return nil, nil, err
	}
	if _, err := c.WaitPods(ctx, time.Minute, "default", "app=hostprobe", func(pods []PodStatus) error {
		return allRunning(pods, 1)
	}); err != nil {
		return nil, nil, err
	}
	r.Pods = pods
	s.show(ctx, "get", "pods", "-o", "wide")

	s.Say("4. Every probe pod connects to every other by pod address, and to the host-network probe on %s.", last.Name)
	peers := map[string]string{"hostprobe": fmt.Sprintf("%s:%d", last.IP, ProbePort)}
	for _, p := range pods {
		peers[p.Name] = fmt.Sprintf("%s:%d", p.IP, ProbePort)
	}
	if err := c.writePeers(peers); err != nil {
		return nil, nil, err
	}
	if err := c.waitAllReach(ctx, 2*time.Minute, pods, peers, time.Time{}); err != nil {
		return nil, nil, err
	}
	r.DeployToReach = time.Since(start)
	s.Say("   all %d pairs answer (%s after the Deployment was created)", len(pods)*(len(pods)-1)+len(pods), r.DeployToReach.Round(100*time.Millisecond))

	return pods, peers, nil
}

// Install is the operator's install: nodes NotReady without a network, the
// password Secret and prog/kube/weft.yaml applied, every node Ready.
func (s *Scenario) Install(ctx context.Context, r *Results) error {
	c := s.C
	s.Say("1. The nodes have registered but have no pod network: kubelet reports them NotReady.")
	nodes, err := c.GetNodes(ctx)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		if n.Ready || !strings.Contains(n.ReadyMessage, "network") {
			return fmt.Errorf("before weft, %s: want NotReady for lack of a network, got ready=%v %q", n.Name, n.Ready, n.ReadyMessage)
		}
	}
	s.show(ctx, "get", "nodes", "-o", "wide")

	s.Say("2. The Secret (required: a password for encryption, or WEFT_PLAINTEXT=true on purpose; here")
	s.Say("   plaintext, so pairs use the kernel fast path), then weft itself:")
	start := time.Now()
	if err := s.setSecret(ctx, false); err != nil {
		return err
	}
	if r1 := s.Release; r1 != nil {
		s.Say("   release %s (make release), its image imported into every node and its weft.yaml applied,", r1.Version)
		s.Say("   as site/install-kubernetes.md says.")
		if err := s.applyRelease(ctx, r1); err != nil {
			return err
		}
	} else {
		s.Say("   kubectl apply -f prog/kube/weft.yaml (the file as shipped, unmodified).")
		out, err := c.Kubectl(ctx, "apply", "-f", filepath.Join(c.Root, "prog", "kube", "weft.yaml"))
		if err != nil {
			return err
		}
		s.Show("$ kubectl apply -f prog/kube/weft.yaml", string(out))
	}
	err = c.WaitNodes(ctx, 3*time.Minute, func(nodes []NodeStatus) error {
		for _, n := range nodes {
			if !n.Ready {
				return fmt.Errorf("%s not Ready: %s", n.Name, n.ReadyMessage)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	r.ApplyToReady = time.Since(start)
	s.Say("   every node Ready %s after the apply", r.ApplyToReady.Round(100*time.Millisecond))
	s.Say("   and every agent said so on its Node:")
	if err := s.CheckReadyEvents(ctx, start, true); err != nil {
		return err
	}
	if err := c.WaitNodes(ctx, 30*time.Second, func(nodes []NodeStatus) error {
		for _, n := range nodes {
			if !n.NetworkSet {
				return fmt.Errorf("%s: NetworkUnavailable not False", n.Name)
			}
		}
		return nil
	}); err != nil {
		return err
	}
	s.show(ctx, "get", "nodes,pods", "-n", "weft-system", "-o", "wide")

	return nil
}

func allRunning(pods []PodStatus, want int) error {
	if len(pods) != want {
		return fmt.Errorf("%d pods, want %d", len(pods), want)
	}
	for _, p := range pods {
		if p.Phase != "Running" || p.IP == "" {
			return fmt.Errorf("pod %s: %s ip=%q", p.Name, p.Phase, p.IP)
		}
	}
	return nil
}

func spreadEvenly(pods []PodStatus, nodes []*Node) error {
	per := map[string]int{}
	for _, p := range pods {
		per[p.Node]++
	}
	for _, n := range nodes {
		if per[n.Name] != len(pods)/len(nodes) {
			return fmt.Errorf("pods per node %v: want %d on each", per, len(pods)/len(nodes))
		}
	}
	return nil
}

func samePods(before, after []PodStatus) error {
	key := func(ps []PodStatus) []string {
		var k []string
		for _, p := range ps {
			k = append(k, p.UID+" "+p.IP+" "+p.Node)
			if p.Restarts > 0 {
				k = append(k, p.Name+" restarted")
			}
		}
		sort.Strings(k)
		return k
	}
	if !slices.Equal(key(before), key(after)) {
		return fmt.Errorf("probe pods changed across the weft restart: before %v, after %v", key(before), key(after))
	}
	return nil
}

// writePeers gives every node's probe pods the same peers file.
func (c *Cluster) writePeers(peers map[string]string) error {
	var b strings.Builder
	for name, addr := range peers {
		fmt.Fprintf(&b, "%s %s\n", name, addr)
	}
	for _, n := range c.Nodes {
		dir := filepath.Join(n.RunDir(), "netprobe")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := atomicfile.Write(filepath.Join(dir, "peers"), []byte(b.String()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func readReport(path string) (*ProbeReport, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r ProbeReport
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

func (c *Cluster) report(p PodStatus) (*ProbeReport, error) {
	n := c.Node(p.Node)
	if n == nil {
		return nil, fmt.Errorf("pod %s on unknown node %q", p.Name, p.Node)
	}
	return readReport(filepath.Join(n.RunDir(), "netprobe", "results", p.Name+".json"))
}

// waitAllReach waits until every pod has had an answer after since from
// every peer (pods and the host-network probe).
func (c *Cluster) waitAllReach(ctx context.Context, timeout time.Duration, pods []PodStatus, peers map[string]string, since time.Time) error {
	return c.wait(ctx, timeout, "every pod reaching every peer", func() error {
		var missing []string
		for _, p := range pods {
			rep, err := c.report(p)
			if err != nil {
				return err
			}
			for name := range peers {
				if name == p.Name {
					continue
				}
				pr := rep.Peers[name]
				switch {
				case pr == nil:
					missing = append(missing, p.Name+"->"+name+" (not probed yet)")
				case pr.LastOK.IsZero() || pr.LastOK.Before(since):
					missing = append(missing, fmt.Sprintf("%s->%s (%s)", p.Name, name, pr.LastErr))
				}
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d pairs without an answer: %s", len(missing), strings.Join(missing, "; "))
		}
		return nil
	})
}

// ipam asks node n's weft agent (through its weft.sock) for its ring view.
func (c *Cluster) ipam(ctx context.Context, n *Node) (api.IPAMStatus, error) {
	return api.NewClient(api.SocketPath(n.WeftRunDir()), 5*time.Second).IPAM(ctx)
}

func formatIPAM(st api.IPAMStatus) string {
	var b strings.Builder
	for _, e := range st.Entries {
		fmt.Fprintf(&b, "%-8s owns %8d addresses (%5.1f%%)\n", e.Name, e.Owned, e.Share*100)
	}
	return b.String()
}
