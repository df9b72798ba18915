package testbed

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/weftnet/weft/internal/roottest"
)

// RequireRoot skips t loudly without root, and fails it under CI=true, where
// a skipped end-to-end test would hide a broken build.
func RequireRoot(t testing.TB) {
	t.Helper()
	roottest.Require(t)
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries builds weft and weft-cni from this checkout once per test process
// and returns their directory. WEFT_BIN_DIR overrides (e.g. `make` output).
func Binaries(t testing.TB) string {
	t.Helper()
	dir, err := BuildBinaries()
	if err != nil {
		t.Fatalf("build binaries: %v", err)
	}
	return dir
}

// BuildBinaries is Binaries for programs (demo, bench).
func BuildBinaries() (string, error) {
	if d := os.Getenv("WEFT_BIN_DIR"); d != "" {
		return d, nil
	}
	buildOnce.Do(func() {
		root, err := ModuleRoot()
		if err != nil {
			buildErr = err
			return
		}
		binDir, buildErr = os.MkdirTemp("", "weft-bin-")
		if buildErr != nil {
			return
		}
		for _, cmd := range []string{"weft", "weft-cni"} {
			build := exec.Command("go", "build", "-o", filepath.Join(binDir, cmd), "./cmd/"+cmd)
			build.Dir = root
			out, err := build.CombinedOutput()
			if err != nil {
				buildErr = &buildError{cmd, string(out), err}
				return
			}
		}
	})
	return binDir, buildErr
}

type buildError struct {
	cmd, out string
	err      error
}

func (e *buildError) Error() string { return "go build " + e.cmd + ": " + e.err.Error() + ": " + e.out }

// ModuleRoot finds the directory of go.mod above the working directory.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// Start creates a test bed for t, closed (and its logs shown if t failed)
// when t ends.
func Start(t testing.TB, opts Options) *Bed {
	t.Helper()
	RequireRoot(t)
	if opts.BinDir == "" {
		opts.BinDir = Binaries(t)
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	b, err := New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b.Close()
		if t.Failed() {
			for _, h := range b.Hosts {
				t.Logf("---- log of %s ----\n%s", h.Name, tail(h.Log(), 60))
			}
		}
	})
	return b
}

func tail(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}
