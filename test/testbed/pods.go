package testbed

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/test/cnitest"
)

// NetworkName is the CNI network the test bed's pods join.
const NetworkName = "weft"

// Pod is a network namespace attached to a host's weft bridge through the
// real weft-cni plugin, driven by the real cnitool.
type Pod struct {
	Host  *Host
	Name  string
	Netns string     // namespace name
	Addr  netip.Addr // the address weft gave it
}

var (
	cnitoolOnce sync.Once
	cnitoolPath string
	cnitoolErr  error
)

func cnitool(ctx context.Context) (string, error) {
	cnitoolOnce.Do(func() { cnitoolPath, cnitoolErr = cnitest.EnsureCnitool(ctx) })
	return cnitoolPath, cnitoolErr
}

// tool is this host's cnitool runner: plugins run inside the host's
// namespace and find the agent through the host's run dir.
func (h *Host) tool(ctx context.Context) (cnitest.Tool, error) {
	path, err := cnitool(ctx)
	if err != nil {
		return cnitest.Tool{}, err
	}
	netconf := filepath.Join(h.Dir, "net.d")
	err = cnitest.WriteConflist(netconf, NetworkName, "1.1.0", map[string]any{
		"type":   "weft-cni",
		"socket": api.SocketPath(h.RunDir),
	})
	if err != nil {
		return cnitest.Tool{}, err
	}
	return cnitest.Tool{Cnitool: path, NetconfDir: netconf, CNIPath: h.bed.opts.BinDir,
		HostNetns: "/var/run/netns/" + h.Netns}, nil
}

// AddPod creates a pod namespace and attaches it with `cnitool add`.
func (h *Host) AddPod(ctx context.Context, name string) (*Pod, error) {
	p := &Pod{Host: h, Name: name, Netns: h.Netns + "-" + name}
	if err := h.bed.addNetns(ctx, p.Netns); err != nil {
		return nil, err
	}
	if err := h.bed.run(ctx, "ip", "-n", p.Netns, "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	t, err := h.tool(ctx)
	if err != nil {
		return nil, err
	}
	out, err := t.Add(ctx, p.NetnsPath(), NetworkName)
	if err != nil {
		return nil, fmt.Errorf("%s: add pod %s: %w", h.Name, name, err)
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) == 0 {
		return nil, fmt.Errorf("%s: pod %s: unexpected CNI result %q", h.Name, name, out)
	}
	pfx, err := netip.ParsePrefix(res.IPs[0].Address)
	if err != nil {
		return nil, fmt.Errorf("pod %s: address %q: %w", name, res.IPs[0].Address, err)
	}
	p.Addr = pfx.Addr()
	h.bed.opts.Logf("%s: pod %s has %s", h.Name, name, p.Addr)
	return p, nil
}

// NetnsPath is the pod namespace's path, what CNI calls the netns.
func (p *Pod) NetnsPath() string { return "/var/run/netns/" + p.Netns }

// Delete runs `cnitool del` and removes the namespace.
func (p *Pod) Delete(ctx context.Context) error {
	t, err := p.Host.tool(ctx)
	if err != nil {
		return err
	}
	if err := t.Del(ctx, p.NetnsPath(), NetworkName); err != nil {
		return err
	}
	if err := p.Host.bed.run(ctx, "ip", "netns", "del", p.Netns); err != nil {
		return err
	}
	p.Host.bed.forget(p.Netns)
	return nil
}

// Exec runs a command inside the pod.
func (p *Pod) Exec(ctx context.Context, args ...string) (string, error) {
	return Exec(ctx, p.Netns, args...)
}

// Ping sends count pings to dst from the pod and fails unless all arrive.
func Ping(ctx context.Context, ns string, dst netip.Addr, count int) error {
	out, err := Exec(ctx, ns, "ping", "-c", fmt.Sprint(count), "-i", "0.2", "-W", "2", "-q", dst.String())
	if err != nil {
		return err
	}
	if !strings.Contains(out, fmt.Sprintf("%d received", count)) {
		return fmt.Errorf("ping %s from %s: %s", dst, ns, strings.TrimSpace(out))
	}
	return nil
}

func (b *Bed) forget(ns string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, n := range b.namespaces {
		if n == ns {
			b.namespaces = append(b.namespaces[:i], b.namespaces[i+1:]...)
			return
		}
	}
}
