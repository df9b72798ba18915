package main

import (
	"io"
	"os"
	"path/filepath"
	"testing"
)

// install-cni copies weft-cni and the plugins weft chains (portmap,
// bandwidth) from beside the given weft-cni; a missing one fails the init
// step rather than leaving a conflist that names an absent plugin.
func TestInstallCNIInstallsChainedPlugins(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	for _, name := range []string{"weft-cni", "portmap", "bandwidth"} {
		if err := os.WriteFile(filepath.Join(src, name), []byte("#!/bin/true\n"+name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) error {
		app := newApp()
		app.Writer, app.ErrWriter = io.Discard, io.Discard
		return app.Run(append([]string{"weft", "install-cni", "--bin-dir", dst, "--src", filepath.Join(src, "weft-cni")}, args...))
	}
	if err := run(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"weft-cni", "portmap", "bandwidth"} {
		b, err := os.ReadFile(filepath.Join(dst, name))
		if err != nil || string(b) != "#!/bin/true\n"+name {
			t.Errorf("%s in bin dir: %q, %v", name, b, err)
		}
	}

	if err := os.Remove(filepath.Join(src, "bandwidth")); err != nil {
		t.Fatal(err)
	}
	if err := run(); err == nil {
		t.Error("install-cni succeeded with bandwidth missing beside weft-cni")
	}
	if err := run("--chained", ""); err != nil {
		t.Errorf("--chained \"\" (weft-cni only): %v", err)
	}
}
