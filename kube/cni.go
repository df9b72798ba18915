package kube

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/weftnet/weft/internal/atomicfile"
)

// CNIConfigName is the file the agent writes into the CNI config dir. The
// "10-" prefix puts it before the usual distribution defaults, since runtimes
// use the first file in lexical order.
const CNIConfigName = "10-weft.conflist"

// CNIVersion is the spec version written into the conflist. 1.0.0, not
// 1.1.0: the CNI library of containerd 1.6 and 1.7 cannot read 1.1.0 results
// ("unsupported CNI result version"), and weft-cni speaks both.
const CNIVersion = "1.0.0"

// Plugins weft chains after weft-cni in every conflist it writes. They come
// from github.com/containernetworking/plugins, ship in the weft image and are
// installed beside weft-cni by `weft install-cni`.
const (
	// PortmapPlugin implements hostPort: the runtime passes the pod's
	// ports through the portMappings capability.
	PortmapPlugin = "portmap"
	// BandwidthPlugin implements the kubernetes.io/ingress-bandwidth and
	// egress-bandwidth pod annotations through the bandwidth capability.
	BandwidthPlugin = "bandwidth"
)

// ChainedPlugins are the plugins `weft install-cni` installs beside weft-cni.
var ChainedPlugins = []string{PortmapPlugin, BandwidthPlugin}

// ErrBadCNIChain is returned for an operator's chain setting (--cni-chain,
// WEFT_CNI_CHAIN) that weft cannot write into the conflist.
var ErrBadCNIChain = errors.New("kube: bad CNI chain")

// CNIConfig is what the agent writes into 10-weft.conflist.
type CNIConfig struct {
	Socket string // the agent's weft.sock, the weft-cni "socket" key
	MTU    int    // 0 leaves the "mtu" key out (the shim asks the agent)
	// Chain holds the operator's plugins, each one JSON object, appended in
	// order after weft's own (weft-cni, portmap, bandwidth). They are part of
	// every write, so they survive agent restarts and upgrades. ParseCNIChain
	// makes it from the setting.
	Chain []json.RawMessage
}

type weftPlugin struct {
	Type   string `json:"type"`
	Socket string `json:"socket,omitempty"`
	MTU    int    `json:"mtu,omitempty"`
}

type capabilityPlugin struct {
	Type         string          `json:"type"`
	Capabilities map[string]bool `json:"capabilities"`
	// SNAT of portmap: also map connections to the hostPort from the node
	// itself (localhost and the node's own addresses).
	SNAT *bool `json:"snat,omitempty"`
}

// ParseCNIChain decodes the operator's chain setting: a JSON array of plugin
// configurations (objects with a string "type"), or an empty string for none.
// weft's own plugins may not appear in it (they would run twice), nor may
// an entry set cniVersion or name (the conflist's own).
func ParseCNIChain(s string) ([]json.RawMessage, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var raw []json.RawMessage
	if err := json.Unmarshal([]byte(s), &raw); err != nil {
		return nil, fmt.Errorf("%w: want a JSON array of plugin objects: %v", ErrBadCNIChain, err)
	}
	out := make([]json.RawMessage, 0, len(raw))
	for i, r := range raw {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(r, &obj); err != nil || obj == nil {
			return nil, fmt.Errorf("%w: entry %d is not a JSON object", ErrBadCNIChain, i)
		}
		var typ string
		if err := json.Unmarshal(obj["type"], &typ); err != nil || typ == "" {
			return nil, fmt.Errorf("%w: entry %d has no string \"type\"", ErrBadCNIChain, i)
		}
		if typ == "weft-cni" || slices.Contains(ChainedPlugins, typ) {
			return nil, fmt.Errorf("%w: entry %d: %q is already in weft's chain", ErrBadCNIChain, i, typ)
		}
		for _, k := range []string{"cniVersion", "name"} {
			if _, ok := obj[k]; ok {
				return nil, fmt.Errorf("%w: entry %d (%s) sets %q, which belongs to the conflist", ErrBadCNIChain, i, typ, k)
			}
		}
		// Compact: one canonical spelling, whatever the operator's layout.
		var b bytes.Buffer
		if err := json.Compact(&b, r); err != nil {
			return nil, fmt.Errorf("%w: entry %d: %v", ErrBadCNIChain, i, err)
		}
		out = append(out, b.Bytes())
	}
	return out, nil
}

// WriteCNIConfig writes dir/10-weft.conflist atomically: weft-cni, then
// portmap (hostPort) and bandwidth, then the operator's chain. The agent
// calls it only once it is ready: while the file is missing the runtime
// reports the network as not ready and creates no pods on this node, which is
// better than pods that get a network that cannot work yet.
func WriteCNIConfig(dir string, cfg CNIConfig) error {
	if cfg.Socket == "" {
		return errors.New("kube: CNI config: empty socket path")
	}
	if cfg.MTU < 0 || cfg.MTU > 65535 {
		return fmt.Errorf("kube: CNI config: MTU %d out of range", cfg.MTU)
	}
	snat := true
	plugins := make([]any, 0, 3+len(cfg.Chain))
	plugins = append(plugins,
		weftPlugin{Type: "weft-cni", Socket: cfg.Socket, MTU: cfg.MTU},
		capabilityPlugin{Type: PortmapPlugin, Capabilities: map[string]bool{"portMappings": true}, SNAT: &snat},
		capabilityPlugin{Type: BandwidthPlugin, Capabilities: map[string]bool{"bandwidth": true}},
	)
	for _, p := range cfg.Chain {
		plugins = append(plugins, p)
	}
	list := struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		Plugins    []any  `json:"plugins"`
	}{CNIVersion, "weft", plugins}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return fmt.Errorf("kube: encode CNI config: %w", err)
	}
	b = append(b, '\n')
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("kube: CNI config dir: %w", err)
	}
	if err := atomicfile.WriteFunc(filepath.Join(dir, CNIConfigName), 0o644, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	}); err != nil {
		return fmt.Errorf("kube: write CNI config: %w", err)
	}
	return nil
}

// InstallCNIBinary copies src into dstDir under the same base name. The copy
// goes to a temporary file in dstDir that is renamed over the target, so the
// runtime never executes a half-written plugin, and an upgrade replaces a
// binary that may be running (the old inode lives on until it exits).
func InstallCNIBinary(src, dstDir string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("kube: install CNI plugin: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("kube: install CNI plugin: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("kube: install CNI plugin: %s is not a regular file", src)
	}
	dst := filepath.Join(dstDir, filepath.Base(src))
	if err := atomicfile.WriteFunc(dst, 0o755, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	}); err != nil {
		return fmt.Errorf("kube: install CNI plugin %s: %w", dst, err)
	}
	return nil
}
