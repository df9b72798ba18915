//go:build kubecluster

package e2e

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/test/kubecluster"
	"github.com/weftnet/weft/test/testbed"
)

// TestKubeCluster is the operator's path on a real three-node cluster (see
// test/kubecluster) with kube-proxy (nftables) on every node and CoreDNS:
// nodes NotReady without a pod network; a release built by `make release`
// installed as site/install-kubernetes.md says (plaintext: the kernel fast
// path, checked on every pair); nodes Ready; six pods spread over the nodes reach
// each other and a host-network pod; a new pod's first cross-node answer;
// Services across nodes: ClusterIP and DNS names from a pod on each node,
// NodePort from the outside world to every node, hairpin, session affinity,
// hostPort from outside and from other nodes; Service latency beside direct
// pod latency and Service create -> first answer; an operator's chained CNI
// plugin kept across `kubectl rollout restart ds/weft` and an agent restart;
// the longest pod-pair silence in a rollout restart, an upgrade to a second
// release and a rollback, within the restart goals; a password set and the
// agents restarted (every pair encrypted), and a rollout restart encrypted
// within its goal; NetworkPolicy enforced across nodes on both datapaths, new
// pods under default-deny never answering even one packet (see
// kubecluster.Scenario.NetworkPolicy); a deleted Node's ranges are reclaimed. About 5 minutes with the binaries
// cached; run by `make test-kube` (build tag kubecluster), not by `make test`.
func TestKubeCluster(t *testing.T) {
	requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 35*time.Minute)
	defer cancel()
	// Short: unix socket paths of containerd and kubelet live below it.
	dir, err := os.MkdirTemp("", "wkc-")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	began := time.Now()
	root, err := testbed.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	// Two releases from this tree, as `make release VERSION=... IMAGE=...`
	// makes them: the cluster installs the first, upgrades to the second and
	// rolls back. The second build reuses the Go build cache.
	var rel [2]*kubecluster.Release
	for i, v := range []string{"0.0.0-test.1", "0.0.0-test.2"} {
		bt := time.Now()
		if rel[i], err = kubecluster.BuildRelease(ctx, root, filepath.Join(dir, "dist", v), v, kubecluster.ReleaseImage); err != nil {
			os.RemoveAll(dir)
			t.Fatal(err)
		}
		t.Logf("make release VERSION=%s IMAGE=%s: %s", v, kubecluster.ReleaseImage, time.Since(bt).Round(100*time.Millisecond))
	}
	c, err := kubecluster.Start(ctx, kubecluster.Options{Dir: dir, Logger: log, NoWeftImage: true})
	if err != nil {
		os.RemoveAll(dir)
		if errors.Is(err, kubecluster.ErrUnavailable) && os.Getenv("CI") != "true" {
			t.Skipf("KUBERNETES CLUSTER TEST NOT RUN: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	t.Logf("cluster up in %s", time.Since(began).Round(100*time.Millisecond))

	s := &kubecluster.Scenario{C: c, Release: rel[0], Upgrade: rel[1],
		Say:  t.Logf,
		Show: func(title, text string) { t.Logf("%s\n%s", title, text) },
	}
	r, err := s.Run(ctx)
	ms := func(d time.Duration) time.Duration { return d.Round(10 * time.Millisecond) }
	t.Logf("MEASURED: kubectl apply -> all nodes Ready %s; pod created -> first cross-node answer %s; "+
		"6 pods all-pairs %s; Node deleted -> ranges reclaimed %s",
		r.ApplyToReady.Round(100*time.Millisecond), r.FirstCrossNode.Round(time.Millisecond),
		r.DeployToReach.Round(100*time.Millisecond), r.ReclaimAfterDrop.Round(100*time.Millisecond))
	t.Logf("MEASURED: longest pod-pair silence (UDP every 10 ms): rollout restart plaintext %s (took %s, goal %s); "+
		"upgrade %s (took %s); rollback %s (took %s); plaintext -> encrypted switch %s (no goal); "+
		"rollout restart encrypted %s (took %s, goal %s)",
		ms(r.MaxGapInRestart), r.RolloutRestart.Round(100*time.Millisecond), kubecluster.GoalPlaintext,
		ms(r.GapUpgrade), r.Upgrade.Round(100*time.Millisecond), ms(r.GapRollback), r.Rollback.Round(100*time.Millisecond),
		ms(r.GapToEncrypted), ms(r.GapEncrypted), r.RestartEncrypted.Round(100*time.Millisecond), kubecluster.GoalEncrypted)
	t.Logf("MEASURED restart silences per step:\n%s", kubecluster.FormatSilences(s.Measured))
	if err != nil {
		t.Fatalf("%v\n%s", err, c.Diagnose())
	}
	if sv := r.Services; sv != nil && sv.Latency != nil {
		pod, svc := sv.Latency.Targets["pod"], sv.Latency.Targets["clusterip"]
		t.Logf("MEASURED: request latency over 1000 requests, pod -> pod on another node p50 %.0f us p99 %.0f us; "+
			"pod -> ClusterIP -> the same pod p50 %.0f us p99 %.0f us; Service created -> first answer across nodes %s",
			pod.P50us, pod.P99us, svc.P50us, svc.P99us, sv.ServiceToFirst.Round(time.Millisecond))
	}
	logNetpol(t, r.NetworkPolicy)
}

func logNetpol(t *testing.T, np *kubecluster.NetpolResults) {
	if np == nil {
		return
	}
	t.Logf("MEASURED: NetworkPolicy on %s: default-deny apply -> enforced across nodes %s; first packet: %d echo requests to new pods under default-deny, %d replies",
		strings.Join(np.Datapaths, " and "), np.DenyEnforced.Round(time.Millisecond), np.FirstPacketProbes, np.FirstPacketReplies)
}

// TestKubeClusterNetworkPolicy is the NetworkPolicy phase of TestKubeCluster
// alone (install, then kubecluster.Scenario.NetworkPolicy), for working on
// policy without the rest of the scenario:
//
//	go test -count=1 -tags kubecluster -run '^TestKubeClusterNetworkPolicy$' -timeout 30m -v ./test/e2e/
func TestKubeClusterNetworkPolicy(t *testing.T) {
	requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	c, s := startScenario(ctx, t)
	if err := s.Install(ctx, &kubecluster.Results{}); err != nil {
		t.Fatalf("%v\n%s", err, c.Diagnose())
	}
	np, err := s.NetworkPolicy(ctx)
	logNetpol(t, np)
	if err != nil {
		t.Fatalf("%v\n%s", err, c.Diagnose())
	}
}

// testWriter sends slog lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b))
	return len(b), nil
}

// TestConformance runs Kubernetes' own network tests (e2e.test built from
// k8s.io/kubernetes v1.36.3, see site/conformance.md) against the three-node
// cluster once weft is installed. Run by `make conformance`, which builds
// e2e.test and agnhost and sets WEFT_CONFORMANCE_DIR (JUnit and log there).
func TestConformance(t *testing.T) {
	testbed.RequireRoot(t)
	reportDir := os.Getenv("WEFT_CONFORMANCE_DIR")
	if reportDir == "" {
		t.Skip("CONFORMANCE NOT RUN: WEFT_CONFORMANCE_DIR unset (make conformance sets it)")
	}
	if err := kubecluster.Check(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 115*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "wkc-")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	c, err := kubecluster.Start(ctx, kubecluster.Options{Dir: dir, Logger: log, Conformance: true})
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	s := &kubecluster.Scenario{C: c, Say: t.Logf, Show: func(title, text string) { t.Logf("%s\n%s", title, text) }}
	if err := s.Install(ctx, &kubecluster.Results{}); err != nil {
		t.Fatalf("%v\n%s", err, c.Diagnose())
	}
	// Old reports would be counted with the new ones.
	old, _ := filepath.Glob(filepath.Join(reportDir, "junit*.xml"))
	for _, f := range old {
		os.Remove(f)
	}
	run := kubecluster.ConformanceRun{Focus: os.Getenv("WEFT_CONFORMANCE_FOCUS")}
	if p := os.Getenv("WEFT_CONFORMANCE_PROCS"); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 {
			t.Fatalf("WEFT_CONFORMANCE_PROCS=%q: want a number >= 1", p)
		}
		run.Procs = n
	}
	began := time.Now()
	all, err := c.RunConformance(ctx, reportDir, run, t.Logf)
	if err != nil {
		t.Fatalf("%v\n%s", err, c.Diagnose())
	}
	for _, counts := range all {
		for _, name := range counts.SkippedNames {
			t.Logf("skipped (%s): %s", counts.Name, name)
		}
		for _, name := range counts.Failures {
			t.Errorf("FAILED (%s): %s", counts.Name, name)
		}
	}
	t.Logf("suite ran in %s; JUnit in %s", time.Since(began).Round(time.Second), reportDir)
	for _, counts := range all {
		t.Logf("CONFORMANCE %s (%s): %d selected, %d passed, %d failed, %d skipped",
			counts.Name, counts.Focus, counts.Selected, counts.Passed, counts.Failed, counts.Skipped)
	}
}

// requireCluster skips, loudly, where no cluster can run (not root, missing
// binaries or packages), and fails instead under CI=true.
func requireCluster(t *testing.T) {
	t.Helper()
	testbed.RequireRoot(t)
	if err := kubecluster.Check(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skipf("KUBERNETES CLUSTER TEST NOT RUN: %v", err)
	}
}

// startScenario starts a three-node cluster (default options) for a focused
// cluster test, torn down when the test ends, and the Scenario that drives it
// with the test's log.
func startScenario(ctx context.Context, t *testing.T) (*kubecluster.Cluster, *kubecluster.Scenario) {
	t.Helper()
	dir, err := os.MkdirTemp("", "wkc-")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	c, err := kubecluster.Start(ctx, kubecluster.Options{Dir: dir, Logger: log})
	if err != nil {
		os.RemoveAll(dir)
		if errors.Is(err, kubecluster.ErrUnavailable) && os.Getenv("CI") != "true" {
			t.Skipf("KUBERNETES CLUSTER TEST NOT RUN: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	return c, &kubecluster.Scenario{C: c, Say: t.Logf, Show: func(title, text string) { t.Logf("%s\n%s", title, text) }}
}
