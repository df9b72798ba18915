package kube

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

const manifestPath = "../prog/kube/weft.yaml"

// decodeManifest decodes every document strictly (unknown or duplicate
// fields are errors) into the k8s.io/api types.
func decodeManifest(t *testing.T) []runtime.Object {
	t.Helper()
	b, err := os.ReadFile(manifestPath)
	if err != nil {
		t.Fatal(err)
	}
	ser := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme.Scheme, scheme.Scheme,
		kjson.SerializerOptions{Yaml: true, Strict: true})
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var objs []runtime.Object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		obj, _, err := ser.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("decode %s: %v\n%s", manifestPath, err, doc)
		}
		objs = append(objs, obj)
	}
	return objs
}

func TestManifest(t *testing.T) {
	var (
		ds    *appsv1.DaemonSet
		roles []*rbacv1.Role
		kinds []string
	)
	for _, o := range decodeManifest(t) {
		kinds = append(kinds, o.GetObjectKind().GroupVersionKind().Kind)
		switch o := o.(type) {
		case *appsv1.DaemonSet:
			ds = o
		case *rbacv1.Role:
			roles = append(roles, o)
		case *rbacv1.ClusterRole:
			// Exactly what weft needs: Nodes, its own Node's status, and
			// read-only lists of what NetworkPolicy enforcement reads, and
			// creating the Node Events (never changing or deleting them).
			want := []string{
				"[] [nodes] [get list watch]",
				"[] [nodes/status] [patch]",
				"[] [pods namespaces] [list watch]",
				"[networking.k8s.io] [networkpolicies] [list watch]",
				"[events.k8s.io] [events] [create]",
			}
			var got []string
			for _, r := range o.Rules {
				if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
					t.Errorf("ClusterRole rule %+v: unexpected names or URLs", r)
				}
				got = append(got, fmt.Sprintf("%v %v %v", r.APIGroups, r.Resources, r.Verbs))
			}
			if !slices.Equal(got, want) {
				t.Errorf("ClusterRole rules %q, want exactly %q", got, want)
			}
		}
	}
	want := []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "DaemonSet"}
	if !slices.Equal(kinds, want) {
		t.Fatalf("kinds %v, want %v (in apply order)", kinds, want)
	}
	if ds.Namespace != DefaultNamespace {
		t.Errorf("DaemonSet namespace %q, want %q", ds.Namespace, DefaultNamespace)
	}

	// The Role names exactly the objects this package uses.
	var names []string
	for _, r := range roles {
		for _, rule := range r.Rules {
			names = append(names, rule.ResourceNames...)
		}
	}
	for _, n := range []string{BootstrapConfigMap, ReclaimLease} {
		if !slices.Contains(names, n) {
			t.Errorf("Role does not grant access to %q (names: %v)", n, names)
		}
	}

	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" || spec.ServiceAccountName != "weft" {
		t.Errorf("pod spec: hostNetwork=%v priority=%q sa=%q", spec.HostNetwork, spec.PriorityClassName, spec.ServiceAccountName)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" || spec.Tolerations[0].Effect != "" {
		t.Errorf("tolerations %+v, want one that tolerates every taint", spec.Tolerations)
	}
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType {
		t.Errorf("update strategy %q", ds.Spec.UpdateStrategy.Type)
	}
	if len(spec.InitContainers) != 1 || !slices.Equal(spec.InitContainers[0].Command, []string{"/bin/weft", "install-cni", "--bin-dir", "/host/opt/cni/bin"}) {
		t.Errorf("init containers %+v", spec.InitContainers)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	c := spec.Containers[0]
	if c.Image != "ghcr.io/weftnet/weft:latest" || c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("image %q pull %q", c.Image, c.ImagePullPolicy)
	}
	if !slices.Equal(c.Command, []string{"/bin/weft", "launch", "--kube", "--cni-conf-dir", "/host/etc/cni/net.d"}) {
		t.Errorf("command %q", c.Command)
	}
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.Capabilities == nil ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) ||
		!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("security context %+v: want unprivileged, drop ALL, add NET_ADMIN NET_RAW", sc)
	}
	// The probes ask this pod's own agent over a socket in its emptyDir, not
	// 127.0.0.1:6784: during a hand-off that port is still the old agent's,
	// and the new pod must be judged on its own agent (see agent/handoff.go).
	for name, pr := range map[string]struct {
		p    *corev1.Probe
		path string
	}{"startup": {c.StartupProbe, "healthz"}, "readiness": {c.ReadinessProbe, "readyz"}, "liveness": {c.LivenessProbe, "healthz"}} {
		// weft-cni: the same probe as `weft probe`, a quarter of the CPU.
		want := []string{"/bin/weft-cni", "probe", "--probe-socket", "/run/weft-pod/probe.sock", pr.path}
		if pr.p == nil || pr.p.Exec == nil || !slices.Equal(pr.p.Exec.Command, want) {
			t.Errorf("%s probe: %+v, want exec %q", name, pr.p, want)
		}
	}
	// Every probe is a process in the agent's cgroup, whose CPU the node's
	// BestEffort pods pay for (site/operations.md, "Restarts"): frequent
	// only until the agent serves.
	if p := c.StartupProbe; p != nil && (p.PeriodSeconds > 1 || int(p.PeriodSeconds*p.FailureThreshold) < 60) {
		t.Errorf("startup probe every %d s, %d times: want every second for at least a minute", p.PeriodSeconds, p.FailureThreshold)
	}
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p != nil && p.PeriodSeconds < 10 {
			t.Errorf("%s probe every %d s: want 10 s or more (each one costs the node's pods CPU)", name, p.PeriodSeconds)
		}
	}
	if ru := ds.Spec.UpdateStrategy.RollingUpdate; ru == nil || ru.MaxSurge == nil || ru.MaxSurge.IntValue() != 1 ||
		ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("rolling update %+v: want maxSurge 1, maxUnavailable 0 (the new agent stands by, then takes over)", ru)
	}
	for _, p := range c.Ports {
		if p.HostPort != 0 || p.ContainerPort != 0 {
			t.Errorf("declared port %+v: with host network it is a hostPort, and two pods of a surge could not share it", p)
		}
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	if f := env["WEFT_NAME"].ValueFrom; f == nil || f.FieldRef == nil || f.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("WEFT_NAME must come from spec.nodeName (ring owner == Node name): %+v", env["WEFT_NAME"])
	}
	if f := env["WEFT_HOST"].ValueFrom; f == nil || f.FieldRef == nil || f.FieldRef.FieldPath != "status.hostIP" {
		t.Errorf("WEFT_HOST: %+v", env["WEFT_HOST"])
	}
	// The password Secret is required: without it the pod does not start,
	// rather than running the cluster in plaintext by accident. It holds
	// WEFT_PASSWORD or, chosen explicitly, WEFT_PLAINTEXT=true.
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].SecretRef == nil || c.EnvFrom[0].SecretRef.Name != "weft-passwd" ||
		(c.EnvFrom[0].SecretRef.Optional != nil && *c.EnvFrom[0].SecretRef.Optional) || c.EnvFrom[0].Prefix != "" {
		t.Errorf("envFrom %+v: want the required Secret weft-passwd, no prefix", c.EnvFrom)
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Optional != nil && *e.ValueFrom.SecretKeyRef.Optional {
			t.Errorf("env %s comes from an optional Secret key", e.Name)
		}
	}
	if _, ok := env["WEFT_PLAINTEXT"]; ok {
		t.Error("the manifest chooses plaintext itself; that is the operator's choice, in the Secret")
	}
	if v := env["WEFT_NETWORK_POLICY"].Value; v != "true" {
		t.Errorf("WEFT_NETWORK_POLICY = %q, want \"true\" (the knob, shown)", v)
	}
	for _, k := range []string{"IPALLOC_RANGE", "WEFT_MTU"} {
		if _, ok := env[k]; !ok {
			t.Errorf("env %s missing", k)
		}
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Errorf("no resource requests: %+v", c.Resources)
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.HostPath.Path] = v.Name
		}
	}
	for _, p := range []string{"/var/lib/weft", "/run/weft", "/opt/cni/bin", "/etc/cni/net.d", "/dev/net/tun"} {
		if _, ok := hostPaths[p]; !ok {
			t.Errorf("hostPath %s missing", p)
		}
	}
}

// stripComments drops comment-only lines, to spot documents with no object.
func stripComments(doc []byte) []byte {
	var out []byte
	for _, l := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' && !bytes.Equal(t, []byte("---")) {
			out = append(out, l...)
		}
	}
	return out
}
