// Package e2e drives real weft agents in the multi-host test bed. Every test
// needs root (network namespaces); without it the tests skip loudly, and
// under CI=true they fail.
package e2e

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/test/testbed"
)

// weft runs the CLI against host h's agent and returns its output.
func weft(t *testing.T, h *testbed.Host, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	bin := testbed.Binaries(t) + "/weft"
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(cmd.Environ(), "WEFT_RUN_DIR="+h.RunDir)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// weftView runs a status view of weft on h and returns what it printed on
// standard output. A view prints whether or not the agent is ready; exit
// code 3 (answers, not ready) is therefore no error here, and the reason it
// prints on standard error is left out of what the test compares.
func weftView(t *testing.T, h *testbed.Host, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testbed.Binaries(t)+"/weft", args...)
	cmd.Env = append(cmd.Environ(), "WEFT_RUN_DIR="+h.RunDir)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 3) {
		t.Fatalf("weft %s on %s: %v\n%s%s", strings.Join(args, " "), h.Name, err, out, stderr.String())
	}
	return string(out)
}

// mustWeft is weft that fails the test on error.
func mustWeft(t *testing.T, h *testbed.Host, args ...string) string {
	t.Helper()
	out, err := weft(t, h, args...)
	if err != nil {
		t.Fatalf("weft %s on %s: %v\n%s", strings.Join(args, " "), h.Name, err, out)
	}
	return out
}

func launch(t *testing.T, h *testbed.Host, extra []string, peers ...string) {
	t.Helper()
	if err := h.Launch(extra, peers...); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitAPI(context.Background(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// waitLog waits until h's log contains s.
func waitLog(t *testing.T, h *testbed.Host, timeout time.Duration, s string) {
	t.Helper()
	err := testbed.Eventually(context.Background(), timeout, func() error {
		if strings.Contains(h.Log(), s) {
			return nil
		}
		return errorf("%s's log has no %q yet", h.Name, s)
	})
	if err != nil {
		t.Fatal(err)
	}
}

type stringError string

func (e stringError) Error() string { return string(e) }

func errorf(format string, args ...any) error {
	return stringError(strings.TrimSpace(sprintf(format, args...)))
}
