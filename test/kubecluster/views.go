package kubecluster

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/weftnet/weft/api"
)

// The operator's views of a running cluster, read the way
// site/operations.md says: `kubectl exec` into the DaemonSet's pods and the
// weft CLI of the image.

// weftExec runs the image's weft CLI in a weft pod (pod "" = any, as
// `kubectl exec ds/weft` picks one) and returns its standard output.
func (c *Cluster) weftExec(ctx context.Context, pod string, args ...string) ([]byte, error) {
	target := "ds/weft"
	if pod != "" {
		target = pod
	}
	return c.Kubectl(ctx, append([]string{"-n", "weft-system", "exec", target, "--", "/bin/weft"}, args...)...)
}

// meshOK checks `weft status mesh -o json` of a healthy cluster: every node
// there once, ready, on version (when given), and established with every
// other node.
func meshOK(m api.MeshHealth, nodes []string, version string) error {
	if len(m.Peers) != len(nodes) {
		names := make([]string, 0, len(m.Peers))
		for _, p := range m.Peers {
			names = append(names, p.Name)
		}
		return fmt.Errorf("the mesh view has %v, want the nodes %v", names, nodes)
	}
	for _, p := range m.Peers {
		if !slices.Contains(nodes, p.Name) {
			return fmt.Errorf("the mesh view has %q, which is no node", p.Name)
		}
		if !p.Ready || (version != "" && p.Version != version) {
			return fmt.Errorf("%s: ready %v version %q, want ready on %q", p.Name, p.Ready, p.Version, version)
		}
		est := map[string]bool{}
		for _, l := range p.Connections {
			if l.State == "established" {
				est[l.Peer] = true
			}
		}
		for _, n := range nodes {
			if n != p.Name && !est[n] {
				return fmt.Errorf("%s -> %s not established in %s's summary: %+v", p.Name, n, p.Name, p.Connections)
			}
		}
	}
	return nil
}

// podsNamed checks `weft ps -o json` of one node: every pod of pods on that
// node is listed with its namespace, name and address (the runtime passed
// K8S_POD_NAMESPACE and K8S_POD_NAME through the shim to the agent).
func podsNamed(cs []api.Container, node, namespace string, pods []PodStatus) error {
	for _, p := range pods {
		if p.Node != node {
			continue
		}
		found := false
		for _, ct := range cs {
			if ct.Address == p.IP {
				if ct.PodNamespace != namespace || ct.PodName != p.Name {
					return fmt.Errorf("%s: weft ps lists %s as pod %q/%q, want %s/%s", node, p.IP, ct.PodNamespace, ct.PodName, namespace, p.Name)
				}
				found = true
			}
		}
		if !found {
			return fmt.Errorf("%s: weft ps does not list pod %s at %s", node, p.Name, p.IP)
		}
	}
	return nil
}

// CheckMeshView runs `kubectl exec ds/weft -- /bin/weft status mesh -o
// json` and waits until it shows every running node ready and established
// with every other one (the summaries travel by gossip).
func (s *Scenario) CheckMeshView(ctx context.Context) error {
	c := s.C
	version := ""
	if s.Release != nil {
		version = s.Release.Version
	}
	var out []byte
	err := c.wait(ctx, time.Minute, "weft status mesh showing every node", func() error {
		var err error
		if out, err = c.weftExec(ctx, "", "status", "mesh", "-o", "json"); err != nil {
			return err
		}
		var m api.MeshHealth
		if err := json.Unmarshal(out, &m); err != nil {
			return fmt.Errorf("weft status mesh -o json: %w", err)
		}
		return meshOK(m, c.runningNodes(), version)
	})
	if err != nil {
		return err
	}
	table, err := c.weftExec(ctx, "", "status", "mesh")
	if err != nil {
		return err
	}
	s.Show("$ kubectl -n weft-system exec ds/weft -- /bin/weft status mesh", string(table))
	return nil
}

// CheckPodNames runs `weft ps -o json` in the weft pod of every node that
// runs one of pods (all in namespace) and checks that each is listed by its
// namespace and name.
func (s *Scenario) CheckPodNames(ctx context.Context, namespace string, pods []PodStatus) error {
	c := s.C
	weftPods, err := c.GetPods(ctx, "weft-system", "app.kubernetes.io/name=weft")
	if err != nil {
		return err
	}
	byNode := map[string]string{}
	for _, p := range weftPods {
		if p.Phase == "Running" {
			byNode[p.Node] = p.Name
		}
	}
	nodes := map[string]bool{}
	for _, p := range pods {
		nodes[p.Node] = true
	}
	var names []string
	for n := range nodes {
		names = append(names, n)
	}
	sort.Strings(names)
	var shown strings.Builder
	for _, n := range names {
		wp, ok := byNode[n]
		if !ok {
			return fmt.Errorf("no running weft pod on %s", n)
		}
		out, err := c.weftExec(ctx, wp, "ps", "-o", "json")
		if err != nil {
			return err
		}
		var cs []api.Container
		if err := json.Unmarshal(out, &cs); err != nil {
			return fmt.Errorf("%s: weft ps -o json: %w", n, err)
		}
		if err := podsNamed(cs, n, namespace, pods); err != nil {
			return err
		}
		table, err := c.weftExec(ctx, wp, "ps")
		if err != nil {
			return err
		}
		fmt.Fprintf(&shown, "# on %s\n%s", n, table)
	}
	s.Show("$ kubectl -n weft-system exec WEFT-POD -- /bin/weft ps", shown.String())
	return nil
}
