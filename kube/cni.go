package kube

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

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

// cniConfList is the on-disk shape of 10-weft.conflist.
type cniConfList struct {
	CNIVersion string      `json:"cniVersion"`
	Name       string      `json:"name"`
	Plugins    []cniPlugin `json:"plugins"`
}

type cniPlugin struct {
	Type   string `json:"type"`
	Socket string `json:"socket,omitempty"`
	MTU    int    `json:"mtu,omitempty"`
}

// WriteCNIConfig writes dir/10-weft.conflist atomically. The agent calls it
// only once it is ready: while the file is missing the runtime reports the
// network as not ready and creates no pods on this node, which is better than
// pods that get a network that cannot work yet.
func WriteCNIConfig(dir string, socket string, mtu int) error {
	if socket == "" {
		return errors.New("kube: CNI config: empty socket path")
	}
	if mtu < 0 || mtu > 65535 {
		return fmt.Errorf("kube: CNI config: MTU %d out of range", mtu)
	}
	b, err := json.MarshalIndent(cniConfList{
		CNIVersion: CNIVersion,
		Name:       "weft",
		Plugins:    []cniPlugin{{Type: "weft-cni", Socket: socket, MTU: mtu}},
	}, "", "  ")
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
