package kube

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func readConfList(t *testing.T, dir string) (string, []map[string]any) {
	t.Helper()
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
	if list.CNIVersion != CNIVersion || list.Name != "weft" {
		t.Fatalf("conflist = %s", b)
	}
	return string(b), list.Plugins
}

func TestWriteCNIConfig(t *testing.T) {
	dir := t.TempDir()
	if err := WriteCNIConfig(dir, CNIConfig{Socket: "/run/weft/weft.sock", MTU: 1376}); err != nil {
		t.Fatal(err)
	}
	b, plugins := readConfList(t, dir)
	if len(plugins) != 3 {
		t.Fatalf("want weft-cni, portmap, bandwidth: %s", b)
	}
	p := plugins[0]
	if p["type"] != "weft-cni" || p["socket"] != "/run/weft/weft.sock" || p["mtu"] != 1376.0 || len(p) != 3 {
		t.Errorf("plugin = %v, want type weft-cni, socket, mtu 1376", p)
	}
	// hostPort: the runtime hands portmap the pod's ports only when the
	// conflist declares the capability.
	if pm := plugins[1]; pm["type"] != "portmap" || pm["capabilities"].(map[string]any)["portMappings"] != true || pm["snat"] != true {
		t.Errorf("second plugin = %v, want portmap with portMappings", pm)
	}
	if bw := plugins[2]; bw["type"] != "bandwidth" || bw["capabilities"].(map[string]any)["bandwidth"] != true {
		t.Errorf("third plugin = %v, want bandwidth with the bandwidth capability", bw)
	}

	// Rewrite with mtu 0: key left out (the shim's default), no temp files left.
	if err := WriteCNIConfig(dir, CNIConfig{Socket: "/x.sock"}); err != nil {
		t.Fatal(err)
	}
	if b, _ := readConfList(t, dir); strings.Contains(b, "mtu") {
		t.Errorf("mtu 0 written: %s", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("dir has %d entries, want only the conflist", len(ents))
	}
	for _, tc := range []struct {
		sock string
		mtu  int
	}{{"", 1400}, {"/s", -1}, {"/s", 70000}} {
		if WriteCNIConfig(dir, CNIConfig{Socket: tc.sock, MTU: tc.mtu}) == nil {
			t.Errorf("WriteCNIConfig(%q, %d) accepted", tc.sock, tc.mtu)
		}
	}
	// The directory is created: a node without CNI config yet still gets one.
	if err := WriteCNIConfig(filepath.Join(dir, "missing"), CNIConfig{Socket: "/s"}); err != nil {
		t.Errorf("write into a missing dir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "missing", CNIConfigName)); err != nil {
		t.Error(err)
	}
}

// The operator's plugins come after weft's, in their order, with every key
// they set, at every write (the agent writes at each start).
func TestWriteCNIConfigKeepsOperatorChain(t *testing.T) {
	chain, err := ParseCNIChain(`[
	  {"type": "tuning", "sysctl": {"net.ipv4.tcp_keepalive_time": "300"}},
	  {"type": "sbr"}
	]`)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for range 2 { // first start, restart
		if err := WriteCNIConfig(dir, CNIConfig{Socket: "/run/weft/weft.sock", Chain: chain}); err != nil {
			t.Fatal(err)
		}
		b, plugins := readConfList(t, dir)
		var types []string
		for _, p := range plugins {
			types = append(types, p["type"].(string))
		}
		if !slices.Equal(types, []string{"weft-cni", "portmap", "bandwidth", "tuning", "sbr"}) {
			t.Fatalf("chain %v: %s", types, b)
		}
		if v := plugins[3]["sysctl"].(map[string]any)["net.ipv4.tcp_keepalive_time"]; v != "300" {
			t.Errorf("tuning sysctl = %v: %s", v, b)
		}
	}
}

func TestParseCNIChain(t *testing.T) {
	for _, empty := range []string{"", "  \n", "[]"} {
		if c, err := ParseCNIChain(empty); err != nil || len(c) != 0 {
			t.Errorf("ParseCNIChain(%q) = %v, %v; want none", empty, c, err)
		}
	}
	c, err := ParseCNIChain(` [ { "type" : "tuning", "mac": "c2:11:22:33:44:55" } ] `)
	if err != nil || len(c) != 1 || string(c[0]) != `{"type":"tuning","mac":"c2:11:22:33:44:55"}` {
		t.Errorf("ParseCNIChain = %s, %v", c, err)
	}
	for _, bad := range []string{
		`{"type":"tuning"}`,     // not an array
		`["tuning"]`,            // not an object
		`[null]`,                // not an object
		`[{"sysctl":{}}]`,       // no type
		`[{"type":7}]`,          // type not a string
		`[{"type":""}]`,         // empty type
		`[{"type":"portmap"}]`,  // weft's own: would run twice
		`[{"type":"weft-cni"}]`, // weft's own
		`[{"type":"tuning","cniVersion":"1.0.0"}]`, // the conflist's key
		`[{"type":"tuning"}`,                       // truncated
	} {
		if _, err := ParseCNIChain(bad); !errors.Is(err, ErrBadCNIChain) {
			t.Errorf("ParseCNIChain(%s) = %v, want ErrBadCNIChain", bad, err)
		}
	}
}

// FuzzParseCNIChain: any input is either rejected with ErrBadCNIChain or
// gives entries that make a conflist that is valid JSON and holds them.
func FuzzParseCNIChain(f *testing.F) {
	for _, s := range []string{"", "[]", `[{"type":"tuning","sysctl":{"a":"1"}}]`, `[{"type":"sbr"},{"type":"firewall","backend":"iptables"}]`,
		`[{"type":"portmap"}]`, `[1]`, `{`, `[{"type":"x","name":"n"}]`} {
		f.Add(s)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, s string) {
		chain, err := ParseCNIChain(s)
		if err != nil {
			if !errors.Is(err, ErrBadCNIChain) {
				t.Fatalf("error %v does not wrap ErrBadCNIChain", err)
			}
			return
		}
		if err := WriteCNIConfig(dir, CNIConfig{Socket: "/s", Chain: chain}); err != nil {
			t.Fatal(err)
		}
		_, plugins := readConfList(t, dir)
		if len(plugins) != 3+len(chain) {
			t.Fatalf("%d plugins for a chain of %d", len(plugins), len(chain))
		}
	})
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
