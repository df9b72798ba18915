package kubecluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/weftnet/weft/internal/netnstest"
	"github.com/weftnet/weft/kube"
)

// Ports and addresses of the Service steps.
const (
	EchoNodePort = 30080
	HostPort     = 8080
	// freshServiceIP is set in the Service's spec, so a probe can aim at it
	// before the Service exists (time from create to first answer).
	freshServiceIP = "10.96.200.200"
	// chainSysctl is what the operator's chained tuning plugin sets in
	// every new pod; the test reads it back from a pod's namespace.
	chainSysctl      = "net.ipv4.tcp_keepalive_time"
	chainSysctlValue = "321"
)

// servicesYAML: echo (ClusterIP + NodePort, every probe pod) and sticky
// (ClientIP session affinity, every probe pod).
const servicesYAML = `apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  type: NodePort
  selector: {app: netprobe}
  ports: [{port: 80, targetPort: %[1]d, nodePort: %[2]d}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: default}
spec:
  selector: {app: netprobe}
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: %[1]d}]
`

// onePodYAML is a probe pod pinned to a node. Arguments: name, node, image,
// args (a YAML flow sequence), results dir, extra container fields.
const onePodYAML = `apiVersion: v1
kind: Pod
metadata: {name: %[1]s, namespace: default, labels: {app: %[1]s}}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 2
  restartPolicy: Never
  nodeSelector: {kubernetes.io/hostname: %[2]s}
  containers:
  - name: probe
    image: %[3]s
    imagePullPolicy: Never
    args: %[4]s
    volumeMounts: [{name: probe, mountPath: %[5]s}]
%[6]s
  volumes: [{name: probe, hostPath: {path: %[5]s, type: DirectoryOrCreate}}]
`

// oneServiceYAML selects the pods with label key=value. Arguments: name,
// key, value, extra spec fields.
const oneServiceYAML = `apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: default}
spec:
  selector: {%[2]s: "%[3]s"}
  ports: [{port: 80, targetPort: 7777}]
%[4]s
`

// chainConfigMapYAML is the operator's setting: one extra plugin, tuning.
const chainConfigMapYAML = `apiVersion: v1
kind: ConfigMap
metadata: {name: weft-cni-chain, namespace: weft-system}
data:
  plugins: '[{"type":"tuning","sysctl":{"%s":"%s"}}]'
`

// ServiceResults are the measurements of the Service steps.
type ServiceResults struct {
	Latency        *LatencyReport // pod -> pod and pod -> ClusterIP -> the same pod
	ServiceToFirst time.Duration  // Service created to a pod's first answer through it, endpoint on another node
	NodePortFrom   map[string]map[string]int
	DNSNodes       []string // nodes CoreDNS runs on
}

// LatencyReport is `netprobe latency`'s results file.
type LatencyReport struct {
	Name    string                    `json:"name"`
	Targets map[string]*LatencyResult `json:"targets"`
}

// LatencyResult is the request times to one target.
type LatencyResult struct {
	Addr     string  `json:"addr"`
	Requests int     `json:"requests"`
	Fails    int     `json:"fails"`
	P50us    float64 `json:"p50_us"`
	P99us    float64 `json:"p99_us"`
	MaxUs    float64 `json:"max_us"`
	LastErr  string  `json:"last_err"`
	Answered int     `json:"answered"`
}

func (c *Cluster) podArgs(args ...string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = strconv.Quote(a)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func (c *Cluster) clusterIP(ctx context.Context, svc string) (string, error) {
	out, err := c.Kubectl(ctx, "get", "service", svc, "-o", "jsonpath={.spec.clusterIP}")
	if err != nil {
		return "", err
	}
	if _, err := netip.ParseAddr(string(out)); err != nil {
		return "", fmt.Errorf("service %s: cluster IP %q", svc, out)
	}
	return string(out), nil
}

// runPod applies a one-off probe pod on node and waits until it runs.
func (c *Cluster) runPod(ctx context.Context, name string, node *Node, extra string, args ...string) (PodStatus, error) {
	y := fmt.Sprintf(onePodYAML, name, node.Name, ProbeImage, c.podArgs(args...), probeDir, extra)
	if _, err := c.KubectlStdin(ctx, []byte(y), "apply", "-f", "-"); err != nil {
		return PodStatus{}, err
	}
	pods, err := c.WaitPods(ctx, time.Minute, "default", "app="+name, func(pods []PodStatus) error { return allRunning(pods, 1) })
	if err != nil {
		return PodStatus{}, err
	}
	return pods[0], nil
}

// dialFrom makes n requests to addr from inside network namespace ns (a
// path) and counts the answering names; failures are counted under "".
func dialFrom(ctx context.Context, ns, addr string, n int) (map[string]int, error) {
	got := map[string]int{}
	err := netnstest.Do(ns, func() error {
		for range n {
			a, err := dialOnce(ctx, addr)
			if err != nil {
				got[""]++
				continue
			}
			got[a]++
		}
		return nil
	})
	return got, err
}

func dialOnce(ctx context.Context, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 128)
	k, err := conn.Read(buf)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(buf[:k])), nil
}

// Services runs the Service, DNS and hostPort steps on the probe pods of
// step 3 (pods, spread over the nodes) and measures latency. peers is the
// pod-to-pod peer set already in the peers file; Service targets are added.
func (s *Scenario) Services(ctx context.Context, pods []PodStatus, peers map[string]string) (*ServiceResults, error) {
	c, r := s.C, &ServiceResults{}
	nodeOf := map[string]string{}
	for _, p := range pods {
		nodeOf[p.Name] = p.Node
	}

	s.Say("6. kube-proxy (nftables) on every node and CoreDNS: Services echo (ClusterIP+NodePort %d) and sticky", EchoNodePort)
	s.Say("   (sessionAffinity ClientIP) over the 6 probe pods; every pod probes echo by ClusterIP and by DNS name, and sticky.")
	dns, err := c.WaitPods(ctx, 2*time.Minute, "kube-system", "k8s-app=kube-dns", func(p []PodStatus) error {
		if len(p) == 0 {
			return errors.New("no CoreDNS pod")
		}
		for _, x := range p {
			if !x.Ready {
				return fmt.Errorf("CoreDNS %s not ready (%s)", x.Name, x.Phase)
			}
		}
		return nil
	})
	if err != nil {
		return r, err
	}
	for _, p := range dns {
		r.DNSNodes = append(r.DNSNodes, p.Node)
	}
	if _, err := c.KubectlStdin(ctx, fmt.Appendf(nil, servicesYAML, ProbePort, EchoNodePort), "apply", "-f", "-"); err != nil {
		return r, err
	}
	echoIP, err := c.clusterIP(ctx, "echo")
	if err != nil {
		return r, err
	}
	stickyIP, err := c.clusterIP(ctx, "sticky")
	if err != nil {
		return r, err
	}
	all := map[string]string{
		"svc-echo":   echoIP + ":80",
		"dns-echo":   "echo.default.svc." + ClusterDomain + ":80",
		"short-echo": "echo:80", // the pod's search path
		"svc-sticky": stickyIP + ":80",
	}
	for k, v := range peers {
		all[k] = v
	}
	if err := c.writePeers(all); err != nil {
		return r, err
	}
	if err := c.wait(ctx, 2*time.Minute, "Services answering every pod", func() error {
		var missing []string
		for _, p := range pods {
			rep, err := c.report(p)
			if err != nil {
				return err
			}
			for _, svc := range []string{"svc-echo", "dns-echo", "short-echo"} {
				pr := rep.Peers[svc]
				if pr == nil || !answeredFromOtherNode(pr.Answers, nodeOf, p.Node) {
					missing = append(missing, fmt.Sprintf("%s->%s (no answer from another node yet; %v)", p.Name, svc, lastErr(pr)))
				}
			}
			pr := rep.Peers["svc-sticky"]
			switch {
			case pr == nil || total(pr.Answers) < 10:
				missing = append(missing, p.Name+"->svc-sticky (under 10 answers)")
			case len(pr.Answers) != 1:
				return fmt.Errorf("%w: session affinity broken: %s got answers from %v through sticky", errStop, p.Name, pr.Answers)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d missing: %s", len(missing), strings.Join(missing, "; "))
		}
		return nil
	}); err != nil {
		return r, err
	}
	s.Say("   every pod got answers through echo's ClusterIP, echo.default.svc.%s and \"echo\" from pods on other nodes", ClusterDomain)
	s.Say("   (CoreDNS on %s); through sticky, 10+ answers each, all from one pod", strings.Join(r.DNSNodes, ", "))

	s.Say("7. NodePort from the outside world (a namespace that is no node) to every node, %d requests each.", 30)
	r.NodePortFrom = map[string]map[string]int{}
	for _, n := range c.Nodes {
		got, err := dialFrom(ctx, netnsPath(c.Bed.Outside), fmt.Sprintf("%s:%d", n.IP, EchoNodePort), 30)
		if err != nil {
			return r, err
		}
		if got[""] > 0 {
			return r, fmt.Errorf("NodePort %s:%d from outside: %d of 30 requests failed (%v)", n.IP, EchoNodePort, got[""], got)
		}
		if !answeredFromOtherNode(got, nodeOf, n.Name) {
			return r, fmt.Errorf("NodePort %s:%d: no answer from a pod on another node: %v", n.IP, EchoNodePort, got)
		}
		r.NodePortFrom[n.Name] = got
		s.Say("   %s:%d answered by %s", n.IP, EchoNodePort, formatAnswers(got, nodeOf))
	}

	s.Say("8. Hairpin: a pod on %s reaches itself through its own Service.", c.Nodes[1].Name)
	if _, err := c.KubectlStdin(ctx, fmt.Appendf(nil, oneServiceYAML, "hairpin", "app", "hairpin", ""), "apply", "-f", "-"); err != nil {
		return r, err
	}
	hairpinIP, err := c.clusterIP(ctx, "hairpin")
	if err != nil {
		return r, err
	}
	if _, err := c.runPod(ctx, "hairpin", c.Nodes[1], "", "probe", "--name", "hairpin", "--listen", fmt.Sprintf(":%d", ProbePort),
		"--peers", "self="+hairpinIP+":80,selfdns=hairpin.default.svc."+ClusterDomain+":80", "--results-dir", probeDir+"/results"); err != nil {
		return r, err
	}
	if err := c.wait(ctx, time.Minute, "hairpin answer", func() error {
		rep, err := readReport(filepath.Join(c.Nodes[1].RunDir(), "netprobe", "results", "hairpin.json"))
		if err != nil {
			return err
		}
		for _, peer := range []string{"self", "selfdns"} {
			pr := rep.Peers[peer]
			if pr == nil || pr.Answers["hairpin"] == 0 {
				return fmt.Errorf("no answer through %s yet (%s)", peer, lastErr(pr))
			}
		}
		return nil
	}); err != nil {
		return r, err
	}
	s.Say("   hairpin answered itself through %s:80 and through hairpin.default.svc.%s (its own name in /etc/hosts is its pod address)", hairpinIP, ClusterDomain)

	host := c.Nodes[1]
	s.Say("9. hostPort: a pod on %s with hostPort %d, from the outside world, from the other nodes and from their pods.", host.Name, HostPort)
	if _, err := c.runPod(ctx, "hostport", host, fmt.Sprintf("    ports: [{containerPort: %d, hostPort: %d, protocol: TCP}]", ProbePort, HostPort),
		"probe", "--name", "hostport", "--listen", fmt.Sprintf(":%d", ProbePort)); err != nil {
		return r, err
	}
	hp := fmt.Sprintf("%s:%d", host.IP, HostPort)
	from := map[string]string{"outside": netnsPath(c.Bed.Outside)}
	for _, n := range c.Nodes {
		if n != host {
			from[n.Name] = netnsPath(n.Host.Netns)
		}
	}
	for name, ns := range from {
		var got map[string]int
		if err := c.wait(ctx, 30*time.Second, "hostPort from "+name, func() error {
			got, err = dialFrom(ctx, ns, hp, 5)
			if err != nil {
				return err
			}
			if got["hostport"] != 5 {
				return fmt.Errorf("%s from %s: %v", hp, name, got)
			}
			return nil
		}); err != nil {
			return r, err
		}
	}
	all["hostport"] = hp
	if err := c.writePeers(all); err != nil {
		return r, err
	}
	if err := c.wait(ctx, time.Minute, "hostPort from pods", func() error {
		for _, p := range pods {
			if p.Node == host.Name {
				continue
			}
			rep, err := c.report(p)
			if err != nil {
				return err
			}
			if pr := rep.Peers["hostport"]; pr == nil || pr.Answers["hostport"] == 0 {
				return fmt.Errorf("%s -> %s: no answer yet (%s)", p.Name, hp, lastErr(pr))
			}
		}
		return nil
	}); err != nil {
		return r, err
	}
	s.Say("   %s answered from the outside world, from %d other nodes and from their pods", hp, len(from)-1)

	// One probe pod on the second node is the target of both measurements.
	var target PodStatus
	for _, p := range pods {
		if p.Node == c.Nodes[1].Name {
			target = p
			break
		}
	}
	if _, err := c.Kubectl(ctx, "label", "pod", target.Name, "target=yes", "--overwrite"); err != nil {
		return r, err
	}
	s.Say("10. Service created -> first answer: a pod on %s probes %s:80 every 20 ms; then the Service appears there,", c.Nodes[0].Name, freshServiceIP)
	s.Say("    its one endpoint %s on %s.", target.Name, target.Node)
	if _, err := c.runPod(ctx, "svcfirst", c.Nodes[0], "", "probe", "--name", "svcfirst", "--listen", fmt.Sprintf(":%d", ProbePort),
		"--interval", "20ms", "--timeout", "500ms", "--peers", "fresh="+freshServiceIP+":80", "--results-dir", probeDir+"/results"); err != nil {
		return r, err
	}
	firstReport := filepath.Join(c.Nodes[0].RunDir(), "netprobe", "results", "svcfirst.json")
	if err := c.wait(ctx, 30*time.Second, "svcfirst probing", func() error {
		rep, err := readReport(firstReport)
		if err != nil {
			return err
		}
		if pr := rep.Peers["fresh"]; pr == nil || pr.Fails == 0 || !pr.FirstOK.IsZero() {
			return fmt.Errorf("want failing probes of %s before the Service exists: %+v", freshServiceIP, pr)
		}
		return nil
	}); err != nil {
		return r, err
	}
	created := time.Now()
	if _, err := c.KubectlStdin(ctx, fmt.Appendf(nil, oneServiceYAML, "fresh", "target", "yes", "  clusterIP: "+freshServiceIP), "apply", "-f", "-"); err != nil {
		return r, err
	}
	if err := c.wait(ctx, time.Minute, "first answer through the new Service", func() error {
		rep, err := readReport(firstReport)
		if err != nil {
			return err
		}
		pr := rep.Peers["fresh"]
		if pr == nil || pr.FirstOK.IsZero() {
			return errors.New("no answer yet")
		}
		if pr.Answer != target.Name {
			return fmt.Errorf("%w: answered by %q, want %s", errStop, pr.Answer, target.Name)
		}
		r.ServiceToFirst = pr.FirstOK.Sub(created)
		return nil
	}); err != nil {
		return r, err
	}
	s.Say("    first answer %s after the Service was created", r.ServiceToFirst.Round(time.Millisecond))

	s.Say("11. Latency: 1000 requests (connect, one-line answer, close) from a pod on %s to %s directly and", c.Nodes[0].Name, target.Name)
	s.Say("    through the ClusterIP of Service fresh (whose one endpoint is that pod).")
	if _, err := c.runPod(ctx, "latency", c.Nodes[0], "", "latency", "--name", "latency", "--count", "1000",
		"--targets", fmt.Sprintf("pod=%s:%d,clusterip=%s:80", target.IP, ProbePort, freshServiceIP), "--results-dir", probeDir+"/results"); err != nil {
		return r, err
	}
	if err := c.wait(ctx, 3*time.Minute, "latency results", func() error {
		b, err := os.ReadFile(filepath.Join(c.Nodes[0].RunDir(), "netprobe", "results", "latency.json"))
		if err != nil {
			return err
		}
		var lr LatencyReport
		if err := json.Unmarshal(b, &lr); err != nil {
			return err
		}
		for _, t := range []string{"pod", "clusterip"} {
			x := lr.Targets[t]
			if x == nil || x.Fails > 0 || x.Requests != 1000 {
				return fmt.Errorf("%w: latency to %s: %+v", errStop, t, x)
			}
		}
		r.Latency = &lr
		return nil
	}); err != nil {
		return r, err
	}
	for _, t := range []string{"pod", "clusterip"} {
		x := r.Latency.Targets[t]
		s.Say("    %-9s %-20s p50 %6.0f us  p99 %6.0f us", t, x.Addr, x.P50us, x.P99us)
	}
	for _, name := range []string{"svcfirst", "latency", "hairpin", "hostport"} {
		if _, err := c.Kubectl(ctx, "delete", "pod", name, "--wait=false"); err != nil {
			return r, err
		}
	}
	return r, nil
}

// SetOperatorChain is the operator adding a plugin to weft's CNI chain: the
// ConfigMap weft-cni-chain (read by the agents when they start).
func (s *Scenario) SetOperatorChain(ctx context.Context) error {
	s.Say("12. The operator adds a CNI plugin to weft's chain (ConfigMap weft-cni-chain: tuning, %s=%s).", chainSysctl, chainSysctlValue)
	_, err := s.C.KubectlStdin(ctx, fmt.Appendf(nil, chainConfigMapYAML, chainSysctl, chainSysctlValue), "apply", "-f", "-")
	return err
}

func confListTypes(n *Node) ([]string, time.Time, error) {
	path := filepath.Join(n.Dir, "cni-conf", kube.CNIConfigName)
	st, err := os.Stat(path)
	if err != nil {
		return nil, time.Time{}, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, time.Time{}, err
	}
	var list struct {
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, time.Time{}, fmt.Errorf("%s: %w", path, err)
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p.Type)
	}
	return types, st.ModTime(), nil
}

var wantChain = []string{"weft-cni", "portmap", "bandwidth", "tuning"}

// CheckOperatorChain checks that every node's conflist holds the operator's
// plugin after weft's own, then restarts the agent of the first node and
// checks that the new agent rewrote the conflist with the plugin still in it,
// and that a pod created afterwards got the plugin's sysctl.
func (s *Scenario) CheckOperatorChain(ctx context.Context) error {
	c := s.C
	for _, n := range c.Nodes {
		types, _, err := confListTypes(n)
		if err != nil {
			return err
		}
		if !slices.Equal(types, wantChain) {
			return fmt.Errorf("%s: conflist chain %v, want %v", n.Name, types, wantChain)
		}
	}
	n := c.Nodes[0]
	_, before, err := confListTypes(n)
	if err != nil {
		return err
	}
	s.Say("14. Every conflist chains %v; now the agent on %s restarts (its pod is deleted).", wantChain, n.Name)
	if _, err := c.Kubectl(ctx, "-n", "weft-system", "delete", "pod", "-l", "app.kubernetes.io/name=weft",
		"--field-selector", "spec.nodeName="+n.Name); err != nil {
		return err
	}
	if err := c.wait(ctx, 2*time.Minute, "conflist rewritten by the new agent", func() error {
		types, mtime, err := confListTypes(n)
		if err != nil {
			return err
		}
		if !mtime.After(before) {
			return errors.New("not rewritten yet")
		}
		if !slices.Equal(types, wantChain) {
			return fmt.Errorf("%w: conflist chain after the restart %v, want %v", errStop, types, wantChain)
		}
		return nil
	}); err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, "-n", "weft-system", "rollout", "status", "ds/weft", "--timeout=2m"); err != nil {
		return err
	}
	p, err := c.runPod(ctx, "tuned", n, "", "probe", "--name", "tuned", "--listen", fmt.Sprintf(":%d", ProbePort))
	if err != nil {
		return err
	}
	got, err := podSysctl(n, p.IP, chainSysctl)
	if err != nil {
		return err
	}
	if got != chainSysctlValue {
		return fmt.Errorf("pod tuned: %s = %s, want %s from the operator's chained tuning plugin", chainSysctl, got, chainSysctlValue)
	}
	s.Say("    the new agent rewrote the conflist with tuning still chained; a new pod has %s = %s", chainSysctl, got)
	_, err = c.Kubectl(ctx, "delete", "pod", "tuned", "--wait=false")
	return err
}

// podProcesses lists the processes in the node's pod cgroups (containers
// have pid namespaces of their own, so the node's pid namespace does not
// hold them).
func podProcesses(n *Node) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); err == nil && strings.Contains(string(b), n.Cgroup+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// podSysctl reads a net sysctl inside the network namespace of the pod with
// address ip on node n, found through the node's pod processes.
func podSysctl(n *Node, ip, key string) (string, error) {
	want, err := netip.ParseAddr(ip)
	if err != nil {
		return "", err
	}
	seen := map[string]bool{}
	for _, pid := range podProcesses(n) {
		ns := fmt.Sprintf("/proc/%d/ns/net", pid)
		id, err := os.Readlink(ns)
		if err != nil || seen[id] {
			continue
		}
		seen[id] = true
		var val string
		err = netnstest.Do(ns, func() error {
			addrs, err := net.InterfaceAddrs()
			if err != nil {
				return err
			}
			for _, a := range addrs {
				if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr() == want {
					b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
					if err != nil {
						return err
					}
					val = strings.TrimSpace(string(b))
				}
			}
			return nil
		})
		if err != nil {
			continue // the process went away
		}
		if val != "" {
			return val, nil
		}
	}
	return "", fmt.Errorf("no network namespace on %s holds %s", n.Name, ip)
}

func answeredFromOtherNode(answers map[string]int, nodeOf map[string]string, node string) bool {
	for name, k := range answers {
		if k > 0 && nodeOf[name] != "" && nodeOf[name] != node {
			return true
		}
	}
	return false
}

func total(m map[string]int) int {
	t := 0
	for _, v := range m {
		t += v
	}
	return t
}

func lastErr(pr *ProbeResult) string {
	if pr == nil {
		return "not probed yet"
	}
	return pr.LastErr
}

func formatAnswers(got map[string]int, nodeOf map[string]string) string {
	var parts []string
	for name, k := range got {
		parts = append(parts, fmt.Sprintf("%s@%s×%d", name, nodeOf[name], k))
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}
