package main

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/kube/client/clientset"

	"github.com/urfave/cli/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/agent"
	"github.com/weftnet/weft/agent/agenttest"
	"github.com/weftnet/weft/api"
)

// launchCfg decodes a `weft launch` command line as launch would.
func launchCfg(t *testing.T, args ...string) (agent.Config, error) {
	t.Helper()
	cmd := launchCommand()
	var cfg agent.Config
	var cfgErr error
	cmd.Action = func(c *cli.Context) error { cfg, cfgErr = launchConfig(c); return nil }
	app := &cli.App{Commands: []*cli.Command{cmd}}
	base := []string{"weft", "launch", "--name", "h1", "--host", "198.18.0.1", "--state-dir", t.TempDir(), "--run-dir", t.TempDir()}
	if err := app.Run(append(base, args...)); err != nil {
		t.Fatal(err)
	}
	return cfg, cfgErr
}

func TestNetworkPolicyFlag(t *testing.T) {
	t.Setenv("WEFT_NETWORK_POLICY", "") // restored after the test
	os.Unsetenv("WEFT_NETWORK_POLICY")
	for _, c := range []struct {
		args []string
		want bool
		err  string
	}{
		{nil, false, ""},               // bare host: not applicable
		{[]string{"--kube"}, true, ""}, // on by default in Kubernetes
		{[]string{"--kube", "--network-policy=false"}, false, ""},
		{[]string{"--network-policy"}, false, "--network-policy: NetworkPolicy is a Kubernetes API"},
		{[]string{"--kube", "--network-policy=false", "--network-policy-deny-log"}, false, "--network-policy-deny-log: "},
	} {
		cfg, err := launchCfg(t, c.args...)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%v: err %v, want %q", c.args, err, c.err)
			}
			continue
		}
		if err != nil || cfg.NetworkPolicy != c.want {
			t.Errorf("%v: NetworkPolicy %v (err %v), want %v", c.args, cfg.NetworkPolicy, err, c.want)
		}
	}
	t.Setenv("WEFT_NETWORK_POLICY", "false")
	if cfg, err := launchCfg(t, "--kube"); err != nil || cfg.NetworkPolicy {
		t.Errorf("WEFT_NETWORK_POLICY=false with --kube: NetworkPolicy %v (err %v), want false", cfg.NetworkPolicy, err)
	}
}

// `weft status policy` against real agents: one in Kubernetes mode (fake
// API objects, in-memory engine) and one on a bare host.
func TestStatusPolicy(t *testing.T) {
	client := fake.NewClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "host1"}},
		&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "np", Name: "deny"}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "np", Name: "web"}, Spec: corev1.PodSpec{NodeName: "host1"}},
	)
	eng := agenttest.NewPolicyEngine()
	c := agenttest.New(t, agenttest.Options{N: 1, IPAMInit: "consensus=1", Configure: func(_ int, cfg *agent.Config) {
		cfg.Kube, cfg.NetworkPolicy = true, true
		cfg.Devices.KubeClient, cfg.Devices.PolicyEngine = clientset.Wrap(client), eng.Factory
	}})
	c.StartAll()
	c.WaitFormed()
	n := c.Nodes[0]
	dir := n.Config.RunDir
	c.Wait("policies synced", func() error {
		st := decodeJSON[api.PolicyStatus](t, "status", "policy", "--run-dir", dir)
		if !st.Synced || st.Policies != 1 {
			return errors.New("not yet")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := n.Client.Allocate(ctx, api.AllocateRequest{ContainerID: "c1", IfName: "eth0", PodNamespace: "np", PodName: "web"}); err != nil {
		t.Fatal(err)
	}
	st := decodeJSON[api.PolicyStatus](t, "status", "policy", "--run-dir", dir)
	if !st.Enabled || st.LocalPods != 1 || st.SelectedPods != 1 || st.Applies == 0 {
		t.Errorf("status policy -o json: %+v", st)
	}
	r := runCLI(t, "status", "policy", "--run-dir", dir)
	for _, want := range []string{"NetworkPolicy: enabled\n", "Policies: 1\n", "Local pods: 1 (1 selected by a policy)\n", "Last update: ", "Dropped: 0 ingress, 0 egress"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status policy: no %q in\n%s", want, r.stdout)
		}
	}
	if r.code != exitOK {
		t.Errorf("status policy: exit %d", r.code)
	}
	if rep := decodeJSON[api.Report](t, "report", "--run-dir", dir); rep.Policy == nil || rep.Policy.Policies != 1 {
		t.Errorf("report has no policy status: %+v", rep.Policy)
	}
	if r := runCLI(t, "report", "-o", "table", "--run-dir", dir); !strings.Contains(r.stdout, "Policies: 1") {
		t.Errorf("report -o table has no policy view:\n%s", r.stdout)
	}

	bare := readyAgent(t)
	r = runCLI(t, "status", "policy", "--run-dir", bare.Config.RunDir)
	if r.code != exitOK || !strings.Contains(r.stdout, "NetworkPolicy: disabled (not in Kubernetes") {
		t.Errorf("status policy on a bare host (exit %d):\n%s%s", r.code, r.stdout, r.stderr)
	}
	if st := decodeJSON[api.PolicyStatus](t, "status", "policy", "--run-dir", bare.Config.RunDir); st.Enabled || st.Reason == "" {
		t.Errorf("bare host: %+v", st)
	}
	// No agent: exit 1 naming the socket, as every view.
	if r := runCLI(t, "status", "policy", "--run-dir", t.TempDir()); r.code != exitError || !strings.Contains(r.stderr, "no weft agent answers") {
		t.Errorf("no agent: exit %d, %q", r.code, r.stderr)
	}
}
