package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/test/testbed"
)

// A data plane that fails (its TUN deleted under it) ends the agent with a
// non-zero status, so that systemd's Restart=on-failure and the kubelet
// restart it (issue 16 item 3); before, it exited 0. `weft reset` still
// ends it with 0, and removes the persistent TUN.
func TestE2EFatalFailureExitsNonZero(t *testing.T) {
	bed := testbed.Start(t, testbed.Options{Hosts: 2})
	h1, h2 := bed.Hosts[0], bed.Hosts[1]
	seed := []string{"--ipalloc-init", "seed=host1,host2"}
	launch(t, h1, seed)
	launch(t, h2, seed, h1.Target())
	if err := testbed.WaitReady(context.Background(), 30*time.Second, h1, h2); err != nil {
		t.Fatal(err)
	}

	if out, err := h1.Exec(context.Background(), "ip", "link", "del", "weft-tun"); err != nil {
		t.Fatalf("delete the TUN: %v %s", err, out)
	}
	code, err := h1.WaitExit(20 * time.Second)
	if err != nil {
		t.Fatalf("agent did not stop after its TUN was deleted: %v\n%s", err, h1.Log())
	}
	if code == 0 {
		t.Fatalf("agent exited 0 after a data-plane failure; want non-zero\n%s", h1.Log())
	}
	if !strings.Contains(h1.Log(), "data plane failed") {
		t.Errorf("no log of the failure:\n%s", h1.Log())
	}
	t.Logf("exit status after the TUN was deleted: %d", code)

	mustWeft(t, h2, "reset")
	code, err = h2.WaitExit(30 * time.Second)
	if err != nil {
		t.Fatalf("agent did not stop after weft reset: %v\n%s", err, h2.Log())
	}
	if code != 0 {
		t.Fatalf("weft reset: exit status %d, want 0\n%s", code, h2.Log())
	}
	// Any other stop leaves the persistent TUN for the next agent; a reset
	// removes it.
	if out, err := h2.Exec(context.Background(), "ip", "link", "show", "weft-tun"); err == nil {
		t.Fatalf("the TUN is still there after weft reset: %s", out)
	}
}
