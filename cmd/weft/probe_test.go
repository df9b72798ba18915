package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftnet/weft/agent"
	"github.com/weftnet/weft/agent/agenttest"
)

// `weft probe` against real agents' probe sockets: 0 ready, 3 not ready,
// 1 nobody there, 2 a wrong argument.
func TestProbeExitCodes(t *testing.T) {
	dir := t.TempDir()
	readySock, waitSock := filepath.Join(dir, "ready.sock"), filepath.Join(dir, "wait.sock")

	ready := agenttest.New(t, agenttest.Options{N: 1, IPAMInit: "consensus=1",
		Configure: func(_ int, cfg *agent.Config) { cfg.ProbeSocket = readySock }})
	ready.StartAll()
	ready.WaitFormed()
	// consensus=2 with no second peer: alive but never ready.
	waiting := agenttest.New(t, agenttest.Options{N: 2,
		Configure: func(_ int, cfg *agent.Config) { cfg.ProbeSocket = waitSock }})
	waiting.Nodes[0].Start()
	waiting.Wait("the probe socket", func() error {
		_, _, err := probeGet(t.Context(), waitSock, "/healthz")
		return err
	})

	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"probe", "--probe-socket", readySock, "readyz"}, exitOK, "ready"},
		{[]string{"probe", "--probe-socket", readySock, "healthz"}, exitOK, "ok"},
		{[]string{"probe", "--probe-socket", waitSock, "healthz"}, exitOK, "ok"},
		{[]string{"probe", "--probe-socket", waitSock, "readyz"}, exitNotReady, "not ready"},
		{[]string{"probe", "--probe-socket", filepath.Join(dir, "none.sock"), "readyz"}, exitError, ""},
		{[]string{"probe", "--probe-socket", readySock, "livez"}, exitUsage, ""},
	} {
		r := runCLI(t, tc.args...)
		if r.code != tc.code || !strings.HasPrefix(r.stdout, tc.out) {
			t.Errorf("weft %s: exit %d stdout %q stderr %q, want exit %d stdout %q...",
				strings.Join(tc.args, " "), r.code, r.stdout, r.stderr, tc.code, tc.out)
		}
	}
}
