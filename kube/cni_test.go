package kube

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteCNIConfig(t *testing.T) {
	dir := t.TempDir()
	if err := WriteCNIConfig(dir, "/run/weft/weft.sock", 1376); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, CNIConfigName))
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatalf("conflist is not JSON: %v\n%s", err, b)
	}
	if list.CNIVersion != CNIVersion || list.Name != "weft" || len(list.Plugins) != 1 {
		t.Fatalf("conflist = %s", b)
	}
	p := list.Plugins[0]
	if p["type"] != "weft-cni" || p["socket"] != "/run/weft/weft.sock" || p["mtu"] != 1376.0 || len(p) != 3 {
		t.Errorf("plugin = %v, want type weft-cni, socket, mtu 1376", p)
	}

	// Rewrite with mtu 0: key left out (the shim's default), no temp files left.
	if err := WriteCNIConfig(dir, "/x.sock", 0); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(filepath.Join(dir, CNIConfigName))
	if bytes.Contains(b, []byte("mtu")) {
		t.Errorf("mtu 0 written: %s", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("dir has %d entries, want only the conflist", len(ents))
	}
	for _, tc := range []struct {
		sock string
		mtu  int
	}{{"", 1400}, {"/s", -1}, {"/s", 70000}} {
		if WriteCNIConfig(dir, tc.sock, tc.mtu) == nil {
			t.Errorf("WriteCNIConfig(%q, %d) accepted", tc.sock, tc.mtu)
		}
	}
	// The directory is created: a node without CNI config yet still gets one.
	if err := WriteCNIConfig(filepath.Join(dir, "missing"), "/s", 0); err != nil {
		t.Errorf("write into a missing dir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "missing", CNIConfigName)); err != nil {
		t.Error(err)
	}
}

func TestInstallCNIBinary(t *testing.T) {
	src := filepath.Join(t.TempDir(), "weft-cni")
	if err := os.WriteFile(src, []byte("#!/bin/true\nnew"), 0o600); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	// An older version is there already (maybe running): replaced by rename.
	if err := os.WriteFile(filepath.Join(dst, "weft-cni"), []byte("old"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := InstallCNIBinary(src, dst); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dst, "weft-cni"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o755 {
		t.Errorf("mode %v, want 0755", st.Mode().Perm())
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "weft-cni")); string(b) != "#!/bin/true\nnew" {
		t.Errorf("content %q", b)
	}
	if ents, _ := os.ReadDir(dst); len(ents) != 1 {
		t.Errorf("%d entries in dst, want 1 (no temp files)", len(ents))
	}
	if InstallCNIBinary(filepath.Join(t.TempDir(), "nope"), dst) == nil {
		t.Error("missing source accepted")
	}
	if InstallCNIBinary(t.TempDir(), dst) == nil {
		t.Error("directory as source accepted")
	}
}
