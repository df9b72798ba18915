package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// `weft-cni probe` answers as `weft probe` does: 0 when the agent says 200,
// 3 when it answers otherwise, 1 when nobody answers, 2 for a wrong
// argument. The fake agent serves what the agent's probe socket serves.
func TestProbeExitCodes(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "probe.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready: waiting for the address ring")
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })

	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"--probe-socket", sock, "healthz"}, probeOK, "ok"},
		{[]string{"--probe-socket", sock, "readyz"}, probeNotReady, "not ready"},
		{[]string{"--probe-socket", filepath.Join(dir, "none.sock"), "readyz"}, probeNoAgent, ""},
		{[]string{"--probe-socket", sock, "livez"}, probeUsage, ""},
		{[]string{"--probe-socket", sock}, probeUsage, ""},
		{[]string{"--no-such-flag", "readyz"}, probeUsage, ""},
	} {
		var stdout, stderr bytes.Buffer
		code := probeMain(tc.args, &stdout, &stderr)
		if code != tc.code || !strings.HasPrefix(stdout.String(), tc.out) {
			t.Errorf("weft-cni probe %s: exit %d stdout %q stderr %q, want exit %d stdout %q...",
				strings.Join(tc.args, " "), code, stdout.String(), stderr.String(), tc.code, tc.out)
		}
	}
}

// The binary dispatches "probe" before anything of the CNI plugin: with no
// CNI environment at all it probes and exits with the probe's code.
func TestProbeFromTheBinary(t *testing.T) {
	if os.Getenv("WEFT_CNI_PROBE_CHILD") == "1" {
		os.Args = append([]string{"weft-cni"}, strings.Fields(os.Getenv("WEFT_CNI_PROBE_ARGS"))...)
		main()
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestProbeFromTheBinary$")
	cmd.Env = append(os.Environ(), "WEFT_CNI_PROBE_CHILD=1",
		"WEFT_CNI_PROBE_ARGS=probe --probe-socket "+filepath.Join(dir, "none.sock")+" readyz")
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != probeNoAgent || !strings.Contains(string(out), "no agent answers") {
		t.Fatalf("weft-cni probe with no agent: %v, output %q; want exit %d", err, out, probeNoAgent)
	}
}
