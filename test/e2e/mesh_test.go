package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/test/testbed"
)

var sprintf = fmt.Sprintf

// controlPlaneOnly keeps these membership tests independent of the data plane.
var controlPlaneOnly = []string{"--ipalloc-init", "observer"}

// Five hosts, each given only the previous one, form one mesh quickly, and
// the status views show it.
func TestMeshFormsFromAChain(t *testing.T) {
	bed := testbed.Start(t, testbed.Options{Hosts: 5})
	start := time.Now()
	for i, h := range bed.Hosts {
		var peers []string
		if i > 0 {
			peers = []string{bed.Hosts[i-1].Target()}
		}
		launch(t, h, controlPlaneOnly, peers...)
	}
	if err := testbed.WaitAlive(context.Background(), 10*time.Second, 5, bed.Hosts...); err != nil {
		t.Fatal(err)
	}
	t.Logf("5 agents in one mesh after %s", time.Since(start).Round(time.Millisecond))

	h3 := bed.Hosts[2]
	overview := weftView(t, h3, "status")
	for _, want := range []string{"Name: host3", "Peers: 5 (5 alive)", "Encryption: disabled", "Targets: 1"} {
		if !strings.Contains(squeeze(overview), want) {
			t.Errorf("weft status lacks %q:\n%s", want, overview)
		}
	}
	peers := strings.Split(strings.TrimSpace(weftView(t, h3, "status", "peers")), "\n")
	if len(peers) != 6 {
		t.Fatalf("weft status peers: want header + 5 lines, got:\n%s", strings.Join(peers, "\n"))
	}
	if !strings.HasPrefix(peers[1], "host3 (self)") {
		t.Errorf("the local peer is not listed first: %q", peers[1])
	}
	col := strings.Index(peers[0], "ADDRESS")
	for i, line := range peers[1:] {
		if i > 0 && !strings.HasPrefix(line, "host") {
			t.Errorf("line %q does not start with a peer name", line)
		}
		if line[col-1] != ' ' || line[col] == ' ' {
			t.Errorf("column ADDRESS not aligned in %q", line)
		}
		if !strings.Contains(line, " alive ") {
			t.Errorf("peer not alive: %q", line)
		}
	}
	if want := []string{"host1", "host2", "host4", "host5"}; !sortedNames(peers[2:], want) {
		t.Errorf("peers not sorted by name: %v", peers[2:])
	}
	if got := strings.TrimSpace(weftView(t, h3, "status", "targets")); got != "198.18.0.2:6783" {
		t.Errorf("weft status targets = %q, want 198.18.0.2:6783", got)
	}
	var r api.Report
	if err := json.Unmarshal([]byte(weftView(t, h3, "report")), &r); err != nil {
		t.Fatalf("weft report is not JSON: %v", err)
	}
	if r.Status.Name != "host3" || len(r.Peers) != 5 {
		t.Errorf("weft report: name %q with %d peers, want host3 with 5", r.Status.Name, len(r.Peers))
	}
}

// squeeze collapses runs of spaces so aligned output compares simply.
func squeeze(s string) string { return strings.Join(strings.Fields(s), " ") }

func sortedNames(lines []string, want []string) bool {
	if len(lines) != len(want) {
		return false
	}
	for i, l := range lines {
		if strings.Fields(l)[0] != want[i] {
			return false
		}
	}
	return true
}

// An agent started before its peer keeps retrying and joins once the peer
// is up; connect and forget change what it joins.
func TestLateJoinerAndConnect(t *testing.T) {
	bed := testbed.Start(t, testbed.Options{Hosts: 3})
	h1, h2, h3 := bed.Hosts[0], bed.Hosts[1], bed.Hosts[2]
	launch(t, h1, controlPlaneOnly, h2.Target())
	// Wait for two failed attempts: the peer really was not there yet.
	err := testbed.Eventually(context.Background(), 20*time.Second, func() error {
		if n := strings.Count(h1.Log(), "could not join peer"); n < 1 {
			return errorf("host1 logged %d failed joins", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	launch(t, h2, controlPlaneOnly)
	if err := testbed.WaitAlive(context.Background(), 15*time.Second, 2, h1, h2); err != nil {
		t.Fatal(err)
	}
	waitLog(t, h1, 5*time.Second, "joined 1 peer")

	launch(t, h3, controlPlaneOnly)
	mustWeft(t, h3, "connect", h1.Target())
	if err := testbed.WaitAlive(context.Background(), 15*time.Second, 3, h1, h2, h3); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(weftView(t, h3, "status", "targets")); got != "198.18.0.1:6783" {
		t.Errorf("targets after connect = %q", got)
	}
	mustWeft(t, h3, "forget", h1.Target())
	if got := strings.TrimSpace(weftView(t, h3, "status", "targets")); got != "" {
		t.Errorf("targets after forget = %q, want none", got)
	}
	if out, err := weft(t, h3, "connect", "198.18.0.1:notaport"); err == nil {
		t.Errorf("connect with a bad port succeeded: %s", out)
	}
}

// A host cut off from the others is declared dead, and the mesh is whole
// again soon after the cable is back, without anyone's help.
func TestPartitionHeals(t *testing.T) {
	bed := testbed.Start(t, testbed.Options{Hosts: 3})
	h1, h2, h3 := bed.Hosts[0], bed.Hosts[1], bed.Hosts[2]
	launch(t, h1, controlPlaneOnly)
	launch(t, h2, controlPlaneOnly, h1.Target())
	launch(t, h3, controlPlaneOnly, h2.Target())
	ctx := context.Background()
	if err := testbed.WaitAlive(ctx, 10*time.Second, 3, bed.Hosts...); err != nil {
		t.Fatal(err)
	}
	if err := h3.SetLink(ctx, false); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	// Both sides notice: the majority loses host3, host3 loses everyone.
	if err := testbed.WaitAlive(ctx, 30*time.Second, 2, h1, h2); err != nil {
		t.Fatal(err)
	}
	if err := testbed.WaitAlive(ctx, 30*time.Second, 1, h3); err != nil {
		t.Fatal(err)
	}
	t.Logf("both sides saw the partition %s after the cut", time.Since(cut).Round(time.Millisecond))
	// The scenario keeps the link down for 30 s, long enough for memberlist
	// to stop gossiping to the dead peer: only weft's rejoin can heal it.
	<-time.After(time.Until(cut.Add(30 * time.Second)))
	if err := h3.SetLink(ctx, true); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	if err := testbed.WaitAlive(ctx, 15*time.Second, 3, bed.Hosts...); err != nil {
		t.Fatal(err)
	}
	t.Logf("mesh whole again %s after the link came back", time.Since(healed).Round(time.Millisecond))
}

// An agent killed without warning is seen dead; relaunched under the same
// name it is a member again.
func TestKilledAgentRejoins(t *testing.T) {
	bed := testbed.Start(t, testbed.Options{Hosts: 3})
	h1, h2, h3 := bed.Hosts[0], bed.Hosts[1], bed.Hosts[2]
	launch(t, h1, controlPlaneOnly)
	launch(t, h2, controlPlaneOnly, h1.Target())
	launch(t, h3, controlPlaneOnly, h1.Target())
	ctx := context.Background()
	if err := testbed.WaitAlive(ctx, 10*time.Second, 3, bed.Hosts...); err != nil {
		t.Fatal(err)
	}
	if err := h2.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := testbed.WaitAlive(ctx, 30*time.Second, 2, h1, h3); err != nil {
		t.Fatal(err)
	}
	launch(t, h2, controlPlaneOnly, h3.Target())
	if err := testbed.WaitAlive(ctx, 15*time.Second, 3, bed.Hosts...); err != nil {
		t.Fatal(err)
	}
	// A clean stop is a leave, not a failure.
	if err := h3.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := testbed.Eventually(ctx, 10*time.Second, func() error {
		ps, err := h1.Client().Peers(ctx)
		if err != nil {
			return err
		}
		for _, p := range ps {
			if p.Name == "host3" && p.State == api.StateLeft {
				return nil
			}
		}
		return errorf("host1 does not see host3 as left: %+v", ps)
	}); err != nil {
		t.Fatal(err)
	}
}

// A host with another password can neither join nor be joined, and says why.
func TestWrongPasswordRefused(t *testing.T) {
	bed := testbed.Start(t, testbed.Options{Hosts: 3})
	h1, h2, h3 := bed.Hosts[0], bed.Hosts[1], bed.Hosts[2]
	good := append([]string{"--password", "correct horse"}, controlPlaneOnly...)
	launch(t, h1, good)
	launch(t, h2, good, h1.Target())
	launch(t, h3, append([]string{"--password", "battery staple"}, controlPlaneOnly...), h1.Target())
	ctx := context.Background()
	if err := testbed.WaitAlive(ctx, 10*time.Second, 2, h1, h2); err != nil {
		t.Fatal(err)
	}
	waitLog(t, h3, 20*time.Second, "different password")
	if err := testbed.WaitAlive(ctx, time.Second, 1, h3); err != nil {
		t.Fatal(err)
	}
	if err := testbed.WaitAlive(ctx, time.Second, 2, h1, h2); err != nil {
		t.Fatal(err)
	}
	if st := weftView(t, h1, "status"); !strings.Contains(squeeze(st), "Encryption: enabled") {
		t.Errorf("status does not show encryption:\n%s", st)
	}
}
