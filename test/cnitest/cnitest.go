// Package cnitest drives CNI plugins the way runtimes do, for weft's
// end-to-end tests and benchmarks: through the real cnitool binary, or
// by exec'ing the plugin as a runtime does where cnitool cannot express a
// call (GC with valid attachments, reading error codes).
//
// Every call can run in a given network namespace (the simulated host), so
// the plugin creates its host-side links there and never in the machine's
// own namespace.
package cnitest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/internal/netnstest"
)

// CnitoolModule is what EnsureCnitool installs when no cnitool is found.
const CnitoolModule = "github.com/containernetworking/cni/cnitool@v1.3.0"

// EnsureCnitool returns the path of a cnitool binary, installing one with
// `go install` into a cache directory when none is on PATH or there.
func EnsureCnitool(ctx context.Context) (string, error) {
	path, _, err := EnsureCnitoolInstalled(ctx)
	return path, err
}

// EnsureCnitoolInstalled is EnsureCnitool that also says whether it had to
// install cnitool, so the caller can log it.
func EnsureCnitoolInstalled(ctx context.Context) (path string, installed bool, err error) {
	if p, err := exec.LookPath("cnitool"); err == nil {
		return p, false, nil
	}
	gobin := filepath.Join(os.TempDir(), "weft-cnitool-v1.3.0")
	path = filepath.Join(gobin, "cnitool")
	if _, err := os.Stat(path); err == nil {
		return path, false, nil
	}
	cmd := exec.CommandContext(ctx, "go", "install", CnitoolModule)
	// Outside any module, with no module flags of the caller's build.
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOBIN="+gobin, "GOFLAGS=", "GO111MODULE=on")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", false, fmt.Errorf("go install %s: %w: %s", CnitoolModule, err, bytes.TrimSpace(out))
	}
	return path, true, nil
}

// Tool runs cnitool. HostNetns is the namespace the plugin runs in (the
// simulated host), "" for the caller's own.
type Tool struct {
	Cnitool    string // path of the cnitool binary
	NetconfDir string // NETCONFPATH: where <name>.conflist lives
	CNIPath    string // CNI_PATH: where the plugin binaries live
	HostNetns  string // path of the namespace to run in; "" = current
	IfName     string // CNI_IFNAME; "" = eth0
}

// Run runs `cnitool verb name netns` and returns its standard output; a
// failure carries cnitool's standard error.
func (t Tool) Run(ctx context.Context, verb, name, netnsPath string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, t.Cnitool, verb, name, netnsPath)
	cmd.Env = append(os.Environ(), "CNI_PATH="+t.CNIPath, "NETCONFPATH="+t.NetconfDir)
	if t.IfName != "" {
		cmd.Env = append(cmd.Env, "CNI_IFNAME="+t.IfName)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := netnstest.Do(t.HostNetns, cmd.Run)
	if err != nil {
		return stdout.Bytes(), fmt.Errorf("cnitool %s %s %s: %w: %s", verb, name, netnsPath, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// Add attaches the pod namespace at netnsPath to network name; the result is
// the plugin's JSON result.
func (t Tool) Add(ctx context.Context, netnsPath, name string) ([]byte, error) {
	return t.Run(ctx, "add", name, netnsPath)
}

// Check runs CHECK against the result cnitool cached at ADD.
func (t Tool) Check(ctx context.Context, netnsPath, name string) error {
	_, err := t.Run(ctx, "check", name, netnsPath)
	return err
}

// Del detaches the pod namespace at netnsPath.
func (t Tool) Del(ctx context.Context, netnsPath, name string) error {
	_, err := t.Run(ctx, "del", name, netnsPath)
	return err
}

// Status runs STATUS (the netns argument cnitool demands is not used).
func (t Tool) Status(ctx context.Context, name string) error {
	_, err := t.Run(ctx, "status", name, "/proc/self/ns/net")
	return err
}

// GC runs cnitool's GC, which passes no valid attachments: everything of the
// network is garbage. Use Runtime.GC to keep some.
func (t Tool) GC(ctx context.Context, name string) error {
	_, err := t.Run(ctx, "gc", name, "/proc/self/ns/net")
	return err
}

// ContainerID is the container ID cnitool derives from a netns path, for
// matching what the agent holds or building valid-attachment lists.
func ContainerID(netnsPath string) string {
	return cnitoolContainerID(netnsPath)
}

// Add runs `cnitool add name netnsPath` in the caller's network namespace.
func Add(ctx context.Context, cnitoolPath, netconfDir, cniPath, netnsPath, name string) ([]byte, error) {
	return Tool{Cnitool: cnitoolPath, NetconfDir: netconfDir, CNIPath: cniPath}.Add(ctx, netnsPath, name)
}

// Check runs `cnitool check name netnsPath` in the caller's network namespace.
func Check(ctx context.Context, cnitoolPath, netconfDir, cniPath, netnsPath, name string) error {
	return Tool{Cnitool: cnitoolPath, NetconfDir: netconfDir, CNIPath: cniPath}.Check(ctx, netnsPath, name)
}

// Del runs `cnitool del name netnsPath` in the caller's network namespace.
func Del(ctx context.Context, cnitoolPath, netconfDir, cniPath, netnsPath, name string) error {
	return Tool{Cnitool: cnitoolPath, NetconfDir: netconfDir, CNIPath: cniPath}.Del(ctx, netnsPath, name)
}

// Status runs `cnitool status name` in the caller's network namespace.
func Status(ctx context.Context, cnitoolPath, netconfDir, cniPath, name string) error {
	return Tool{Cnitool: cnitoolPath, NetconfDir: netconfDir, CNIPath: cniPath}.Status(ctx, name)
}

// Runtime execs the first plugin of a network's conflist directly, the way a
// runtime does (environment + config on stdin), so a test can pass what
// cnitool cannot (GC's valid attachments) and read CNI error codes. It keeps
// no result cache. (libcni would do the same but pulls in OpenTelemetry,
// which weft's go.mod does not carry.)
type Runtime struct {
	CNIPath    string // directory of plugin binaries
	NetconfDir string // where <name>.conflist lives
	HostNetns  string // namespace the plugin runs in; "" = current
}

// Invoke runs one CNI verb. extra keys (prevResult, cni.dev/valid-attachments)
// are added to the plugin's config. On failure the error is the plugin's
// *types.Error when it printed one.
func (r Runtime) Invoke(ctx context.Context, verb, name, containerID, netnsPath, ifName string, extra map[string]any) ([]byte, error) {
	conf, typ, err := r.pluginConfig(name, extra)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(r.CNIPath, typ))
	cmd.Env = []string{
		"CNI_COMMAND=" + verb,
		"CNI_CONTAINERID=" + containerID,
		"CNI_NETNS=" + netnsPath,
		"CNI_IFNAME=" + ifName,
		"CNI_PATH=" + r.CNIPath,
		"PATH=" + os.Getenv("PATH"),
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdin = bytes.NewReader(conf)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = netnstest.Do(r.HostNetns, cmd.Run)
	if err != nil {
		var ce types.Error
		if json.Unmarshal(stdout.Bytes(), &ce) == nil && ce.Code != 0 {
			return nil, fmt.Errorf("%s %s of %s: %w", typ, verb, containerID, &ce)
		}
		return nil, fmt.Errorf("%s %s of %s: %w: %s", typ, verb, containerID, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// pluginConfig is the first plugin of <name>.conflist with the list's name
// and cniVersion and the extra keys, and the plugin's type.
func (r Runtime) pluginConfig(name string, extra map[string]any) ([]byte, string, error) {
	path := filepath.Join(r.NetconfDir, name+".conflist")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("read network %s: %w", name, err)
	}
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &list); err != nil || len(list.Plugins) == 0 {
		return nil, "", fmt.Errorf("network %s: not a conflist with a plugin (%v)", path, err)
	}
	conf := list.Plugins[0]
	conf["name"], conf["cniVersion"] = list.Name, list.CNIVersion
	for k, v := range extra {
		conf[k] = v
	}
	typ, _ := conf["type"].(string)
	if typ == "" || filepath.Base(typ) != typ {
		return nil, "", fmt.Errorf("network %s: bad plugin type %q", path, typ)
	}
	out, err := json.Marshal(conf)
	return out, typ, err
}

// Add runs ADD for one container interface and returns the result JSON.
func (r Runtime) Add(ctx context.Context, name, containerID, netnsPath, ifName string) ([]byte, error) {
	return r.Invoke(ctx, "ADD", name, containerID, netnsPath, ifName, nil)
}

// Check runs CHECK against the result an ADD returned.
func (r Runtime) Check(ctx context.Context, name, containerID, netnsPath, ifName string, prevResult []byte) error {
	_, err := r.Invoke(ctx, "CHECK", name, containerID, netnsPath, ifName, map[string]any{"prevResult": json.RawMessage(prevResult)})
	return err
}

// Del runs DEL for one container interface.
func (r Runtime) Del(ctx context.Context, name, containerID, netnsPath, ifName string) error {
	_, err := r.Invoke(ctx, "DEL", name, containerID, netnsPath, ifName, nil)
	return err
}

// Status runs STATUS.
func (r Runtime) Status(ctx context.Context, name string) error {
	_, err := r.Invoke(ctx, "STATUS", name, "", "", "", nil)
	return err
}

// GC runs GC keeping the valid attachments.
func (r Runtime) GC(ctx context.Context, name string, valid []types.GCAttachment) error {
	if valid == nil {
		valid = []types.GCAttachment{}
	}
	_, err := r.Invoke(ctx, "GC", name, "", "", "", map[string]any{"cni.dev/valid-attachments": valid})
	return err
}

// Code is the CNI error code in err (e.g. 11, try again later), 0 if err
// carries none.
func Code(err error) uint {
	var ce *types.Error
	if errors.As(err, &ce) {
		return ce.Code
	}
	return 0
}

// WriteConflist writes <dir>/<name>.conflist holding one plugin config
// (without name and cniVersion, which it adds).
func WriteConflist(dir, name, cniVersion string, plugin map[string]any) error {
	list := map[string]any{
		"cniVersion": cniVersion,
		"name":       name,
		"plugins":    []any{plugin},
	}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name+".conflist"), b, 0o644)
}
