package kubecluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// NodeStatus is the part of a Node object the scenario looks at.
type NodeStatus struct {
	Name         string
	Ready        bool
	ReadyMessage string // the kubelet's reason when not Ready
	NetworkSet   bool   // condition NetworkUnavailable=False (weft sets it)
}

// GetNodes lists the Node objects.
func (c *Cluster) GetNodes(ctx context.Context) ([]NodeStatus, error) {
	out, err := c.Kubectl(ctx, "get", "nodes", "-o", "json")
	if err != nil {
		return nil, err
	}
	var list corev1.NodeList
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, fmt.Errorf("decode nodes: %w", err)
	}
	var res []NodeStatus
	for _, n := range list.Items {
		s := NodeStatus{Name: n.Name}
		for _, cond := range n.Status.Conditions {
			switch cond.Type {
			case corev1.NodeReady:
				s.Ready = cond.Status == corev1.ConditionTrue
				s.ReadyMessage = cond.Message
			case corev1.NodeNetworkUnavailable:
				s.NetworkSet = cond.Status == corev1.ConditionFalse
			}
		}
		res = append(res, s)
	}
	return res, nil
}

// WaitNodes polls the Node list until cond accepts it.
func (c *Cluster) WaitNodes(ctx context.Context, timeout time.Duration, cond func([]NodeStatus) error) error {
	return c.wait(ctx, timeout, "nodes", func() error {
		nodes, err := c.GetNodes(ctx)
		if err != nil {
			return err
		}
		return cond(nodes)
	})
}

// PodStatus is the part of a Pod the scenario looks at.
type PodStatus struct {
	Name, UID, Node, IP, Phase string
	Ready                      bool
	Restarts                   int32
	Created                    time.Time
}

// GetPods lists pods in namespace matching selector ("" = all).
func (c *Cluster) GetPods(ctx context.Context, namespace, selector string) ([]PodStatus, error) {
	args := []string{"get", "pods", "-n", namespace, "-o", "json"}
	if selector != "" {
		args = append(args, "-l", selector)
	}
	out, err := c.Kubectl(ctx, args...)
	if err != nil {
		return nil, err
	}
	var list corev1.PodList
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, fmt.Errorf("decode pods: %w", err)
	}
	var res []PodStatus
	for _, p := range list.Items {
		s := PodStatus{Name: p.Name, UID: string(p.UID), Node: p.Spec.NodeName, IP: p.Status.PodIP,
			Phase: string(p.Status.Phase), Created: p.CreationTimestamp.Time}
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady {
				s.Ready = cond.Status == corev1.ConditionTrue
			}
		}
		for _, cs := range p.Status.ContainerStatuses {
			s.Restarts += cs.RestartCount
		}
		res = append(res, s)
	}
	return res, nil
}

// WaitPods polls until cond accepts the pods.
func (c *Cluster) WaitPods(ctx context.Context, timeout time.Duration, namespace, selector string, cond func([]PodStatus) error) ([]PodStatus, error) {
	var pods []PodStatus
	err := c.wait(ctx, timeout, "pods "+selector, func() error {
		var err error
		if pods, err = c.GetPods(ctx, namespace, selector); err != nil {
			return err
		}
		return cond(pods)
	})
	return pods, err
}

// Node returns the node called name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Diagnose collects what explains a failure: nodes, pods, and the tails of
// every node's logs and of the weft pods' logs.
func (c *Cluster) Diagnose() string {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var b strings.Builder
	if out, err := c.Kubectl(ctx, "get", "nodes,pods", "-A", "-o", "wide"); err == nil {
		fmt.Fprintf(&b, "---- kubectl get nodes,pods -A ----\n%s", out)
	} else {
		fmt.Fprintf(&b, "---- kubectl: %v\n", err)
	}
	if out, err := c.Kubectl(ctx, "get", "events", "-A", "--sort-by=.lastTimestamp"); err == nil {
		fmt.Fprintf(&b, "---- events ----\n%s", tailString(string(out), 30))
	}
	for _, pr := range c.control {
		if pr.running() {
			continue
		}
		fmt.Fprintf(&b, "---- %s EXITED (%v) ----\n%s\n", pr.name, pr.err, tailFile(pr.logPath, 20))
	}
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "---- %s init ----\n%s\n", n.Name, n.Log("init", 10))
		fmt.Fprintf(&b, "---- %s processes ----\n%s\n", n.Name, nodeProcesses(n))
		fmt.Fprintf(&b, "---- %s kubelet (errors) ----\n%s\n", n.Name, grepTail(filepath.Join(n.Dir, "logs", "kubelet.log"), klogError, 15))
		fmt.Fprintf(&b, "---- %s kube-proxy (errors) ----\n%s\n", n.Name, grepTail(filepath.Join(n.Dir, "logs", "kube-proxy.log"), klogError, 10))
		fmt.Fprintf(&b, "---- %s containerd (errors) ----\n%s\n", n.Name, grepTail(filepath.Join(n.Dir, "logs", "containerd.log"), func(l string) bool { return strings.Contains(l, "level=error") }, 10))
		logs, _ := filepath.Glob(filepath.Join(n.Dir, "pod-logs", "weft-system_*", "weft", "*.log"))
		for _, l := range logs {
			fmt.Fprintf(&b, "---- %s %s ----\n%s\n", n.Name, strings.TrimPrefix(l, n.Dir), tailFile(l, 15))
		}
	}
	return b.String()
}

// klogError matches klog's error lines ("E1123 10:00:00.000 ...").
func klogError(l string) bool { return len(l) > 1 && l[0] == 'E' && l[1] >= '0' && l[1] <= '9' }

func grepTail(path string, match func(string) bool, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	var keep []string
	for l := range strings.SplitSeq(string(data), "\n") {
		if match(l) {
			keep = append(keep, l)
		}
	}
	if len(keep) > lines {
		keep = keep[len(keep)-lines:]
	}
	return strings.Join(keep, "\n")
}

func tailString(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n") + "\n"
}

// nodeProcesses lists the commands alive in the node's pid namespace with
// their scheduler state, so a diagnosis tells a node whose processes died
// (empty) from one that hangs (D states) or merely reports late.
func nodeProcesses(n *Node) string {
	if n.pidNS == "" {
		return "(pid namespace unknown)"
	}
	pids := pidsInNamespace(n.pidNS)
	if len(pids) == 0 {
		return "NONE: every process of this node is gone"
	}
	var out []string
	for _, pid := range pids {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// "pid (comm) state ...": comm may hold spaces, so cut at the last ')'.
		s := string(stat)
		lp, rp := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if lp < 0 || rp < lp || rp+2 >= len(s) {
			continue
		}
		out = append(out, fmt.Sprintf("%s:%c", s[lp+1:rp], s[rp+2]))
	}
	return fmt.Sprintf("%d alive: %s", len(out), strings.Join(out, " "))
}
