//go:build kubecluster

package e2e

import (
	"context"
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
	c, s := startScenario(ctx, t)
	err := s.Restarts(ctx)
	t.Logf("MEASURED restart silences (UDP every 10 ms):\n%s", kubecluster.FormatSilences(s.Measured))
	if err != nil {
		t.Fatalf("%v\n%s", err, c.Diagnose())
	}
}
