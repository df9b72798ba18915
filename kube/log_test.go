package kube

import (
	"log/slog"
	"strings"
	"testing"
)

// testLogger sends the package's logs to t.Log, tagged with the agent.
func testLogger(t *testing.T, agent string) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("agent", agent)
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
