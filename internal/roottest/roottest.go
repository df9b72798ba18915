// Package roottest gates tests that need root (network namespaces, TUN,
// netlink): they skip loudly without it, and fail under CI=true, where a
// skipped end-to-end test would hide a broken build.
package roottest

import (
	"os"
	"testing"
)

// Require skips or fails t unless the process runs as root.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	msg := "TEST NOT RUN: it needs root to create network namespaces and links (run `make test` as root)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " — failing because CI=true")
	}
	t.Skip(msg)
}
