//go:build kubecluster

package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/weftnet/weft/test/kubecluster"
)

// TestKubeClusterEvents is the Node Events checks of TestKubeCluster alone:
// install (a WeftReady Event on every Node), a password switch (the agents
// that met a peer with the other password write WeftPasswordMismatch, at
// most twice per peer address) and a deleted Node (a WeftRangeReclaimed
// Event on a surviving Node naming it):
//
//	go test -count=1 -tags kubecluster -run '^TestKubeClusterEvents$' -timeout 20m -v ./test/e2e/
func TestKubeClusterEvents(t *testing.T) {
	requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	c, s := startScenario(ctx, t)
	r := &kubecluster.Results{}
	if err := s.Install(ctx, r); err != nil {
		t.Fatalf("%v\n%s", err, c.Diagnose())
	}
	if err := s.Events(ctx, r); err != nil {
		t.Fatalf("%v\n%s", err, c.Diagnose())
	}
	t.Logf("MEASURED: Node deleted -> ranges reclaimed %s", r.ReclaimAfterDrop.Round(100*time.Millisecond))
}
