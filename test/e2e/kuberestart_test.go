//go:build kubecluster

package e2e

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/weftnet/weft/test/kubecluster"
)

// TestKubeClusterRestart is the restart phases of TestKubeCluster alone, for
// working on the restart silence (issue 16): install (plaintext), the probe
// pods, 30 s of probing with no restart (the machine's own stalls), a
// rollout restart plaintext, the switch to a password and a rollout restart
// encrypted. For each step it prints the raw longest silence of any pair,
// that of a pair on one node, the longest time a pod was silent to itself,
// the asserted figure and the load; and for each node the CPU time every
// pod used while that node's pods stalled, beside the agents' log lines:
//
//	go test -count=1 -tags kubecluster -run '^TestKubeClusterRestart$' -timeout 30m -v ./test/e2e/
func TestKubeClusterRestart(t *testing.T) {
	requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
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
	s := &kubecluster.Scenario{C: c, Say: t.Logf, Show: func(title, text string) { t.Logf("%s\n%s", title, text) }}
	err = s.Restarts(ctx)
	t.Logf("MEASURED restart silences (UDP every 10 ms):\n%s", kubecluster.FormatSilences(s.Measured))
	if err != nil {
		t.Fatalf("%v\n%s", err, c.Diagnose())
	}
}
