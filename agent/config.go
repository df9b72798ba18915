package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/weftnet/weft/fastdp"
	"github.com/weftnet/weft/mesh"
	"github.com/weftnet/weft/router/crypto"
)

// Defaults of the user-facing contract (DESIGN.md).
const (
	DefaultPort        = 6783
	DefaultRange       = "10.32.0.0/12"
	DefaultStateDir    = "/var/lib/weft"
	DefaultRunDir      = "/run/weft"
	DefaultMetricsAddr = ":6782"
	DefaultHTTPAddr    = "127.0.0.1:6784"
	DefaultBridge      = "weft"
	DefaultTUN         = "weft-tun"
	DefaultDatapath    = DatapathAuto
	DefaultVXLANPort   = fastdp.DefaultPort
	DefaultVNI         = fastdp.DefaultVNI
)

// Config is everything the agent needs, decoded once from flags and
// environment and validated by Validate before anything starts.
type Config struct {
	Name        string
	Host        netip.Addr // underlay address to bind and advertise
	Port        int        // gossip; data is Port+1
	Peers       []string   // host or host:port to keep joining
	Range       netip.Prefix
	IPAMInit    string // raw --ipalloc-init, parsed by ipam
	Password    []byte // nil: no encryption
	MTU         int    // 0: underlay MTU minus overhead
	StateDir    string
	RunDir      string
	MetricsAddr string // "" disables metrics
	HTTPAddr    string // "" disables health
	Bridge      string
	TUN         string
	// Datapath is --datapath: auto, kernel, userspace or water; "" is auto.
	Datapath string
	// VXLANPort and VNI of the kernel fast path's device; 0 is the default.
	VXLANPort  int
	VNI        int
	Kube       bool   // take peers and bootstrap from the Kubernetes API
	Kubeconfig string // "" = in-cluster
	CNIConfDir string // where to write 10-weft.conflist once ready ("" = do not)
	// CNIChain are the operator's extra CNI plugins (--cni-chain), written
	// after weft's own into every conflist (kube.ParseCNIChain).
	CNIChain []json.RawMessage
	// NetworkPolicy enforces Kubernetes NetworkPolicy on this node
	// (--network-policy; the CLI defaults it to Kube). Kubernetes only;
	// false in Kubernetes removes the policy table a previous agent left.
	NetworkPolicy bool
	// NoDataplane runs gossip, IPAM and the local API only: no TUN, no UDP
	// data socket, no bridge or routes, so nothing needs root. The agent is
	// ready once IPAM can allocate. It still announces its data port, so
	// packets for ranges it owns are sent and dropped: it is meant for
	// simulations of many agents in one process and for control-plane
	// tests, not for a host with pods.
	NoDataplane bool
	// Devices opens the TUN, the sockets and the host network; the zero
	// value means the real ones.
	Devices Devices

	// Timing of gossip; the zero value means mesh.DefaultTiming.
	Timing mesh.Timing
	// RekeyAfter overrides the session rekey interval (tests).
	RekeyAfter time.Duration

	// PasswordInsecure accepts a password shorter than
	// crypto.MinPasswordLength.
	PasswordInsecure bool
	// ClusterName goes into the password's salt beside Range, so that one
	// password gives other keys in another cluster; the same on every peer.
	ClusterName string

	// NoPerPeerMetrics sums the per-peer series into one
	// (--metrics-per-peer=false): they grow as N² across a cluster.
	NoPerPeerMetrics bool
}

// Validate checks every field and returns one error naming each bad one.
// It fills in the defaults of the fast path's fields.
func (c *Config) Validate() error {
	var errs []error
	if c.Datapath == "" {
		c.Datapath = DefaultDatapath
	}
	if c.VXLANPort == 0 {
		c.VXLANPort = DefaultVXLANPort
	}
	if c.VNI == 0 {
		c.VNI = DefaultVNI
	}
	bad := func(flag, format string, args ...any) {
		errs = append(errs, fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, args...)))
	}
	if c.Name == "" {
		bad("name", "empty (and the host name could not be read)")
	} else if len(c.Name) > 128 || strings.ContainsAny(c.Name, " \t\n/,=") {
		bad("name", "%q: at most 128 characters, without spaces, '/', ',' or '='", c.Name)
	}
	if !c.Host.IsValid() {
		bad("host", "no underlay address (none given and no default route found)")
	} else if !c.Host.Is4() {
		bad("host", "%s: weft needs an IPv4 underlay address", c.Host)
	}
	if c.Port < 1 || c.Port > 65534 {
		bad("port", "%d: must be 1..65534 (data uses port+1)", c.Port)
	}
	for _, p := range c.Peers {
		if _, err := mesh.NormalizeTarget(p, c.Port); err != nil {
			errs = append(errs, fmt.Errorf("peer argument: %w", err))
		}
	}
	if !c.Range.IsValid() || !c.Range.Addr().Is4() {
		bad("ipalloc-range", "must be an IPv4 CIDR such as 10.32.0.0/12")
	} else if c.Range.Masked() != c.Range {
		bad("ipalloc-range", "%s has host bits set; did you mean %s?", c.Range, c.Range.Masked())
	} else if c.Range.Bits() > 30 {
		bad("ipalloc-range", "%s is too small; use /30 or larger", c.Range)
	}
	if c.Password != nil && len(c.Password) == 0 {
		bad("password", "empty password; omit the flag to run without encryption")
	} else if err := crypto.CheckPassword(c.Password); c.Password != nil && !c.PasswordInsecure && err != nil {
		bad("password", "%v; use a longer one (a random one: openssl rand -base64 24), or give --password-insecure to accept it", err)
	}
	if len(c.ClusterName) > 253 || strings.IndexFunc(c.ClusterName, func(r rune) bool { return r < ' ' || r == 0x7f }) >= 0 {
		bad("cluster-name", "%q: at most 253 characters, no control characters", c.ClusterName)
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65000) {
		bad("mtu", "%d: must be 576..65000, or 0 for automatic", c.MTU)
	}
	for flag, dir := range map[string]string{"state-dir": c.StateDir, "run-dir": c.RunDir} {
		if dir == "" || !filepath.IsAbs(dir) {
			bad(flag, "%q: must be an absolute path", dir)
		}
	}
	switch c.Datapath {
	case DatapathAuto, DatapathKernel, DatapathUserspace, DatapathWater:
	default:
		bad("datapath", "%q: want auto, kernel, userspace or water", c.Datapath)
	}
	if c.Datapath == DatapathKernel && c.Password != nil {
		bad("datapath", "kernel: the kernel fast path carries no encryption; with a password use auto or userspace")
	}
	if c.VXLANPort < 1 || c.VXLANPort > 65535 {
		bad("vxlan-port", "%d: must be 1..65535", c.VXLANPort)
	} else if c.VXLANPort == c.Port || c.VXLANPort == c.Port+1 {
		bad("vxlan-port", "%d is taken by gossip or data (--port %d and %d)", c.VXLANPort, c.Port, c.Port+1)
	}
	if c.VNI < 1 || c.VNI >= 1<<24 {
		bad("vxlan-vni", "%d: must be 1..%d", c.VNI, 1<<24-1)
	}
	if c.NetworkPolicy && !c.Kube {
		bad("network-policy", "NetworkPolicy is a Kubernetes API: enforcement needs --kube")
	}
	if len(c.Bridge) == 0 || len(c.Bridge) > 15 {
		bad("bridge", "%q: link names are 1..15 characters", c.Bridge)
	}
	if len(c.TUN) == 0 || len(c.TUN) > 15 {
		bad("tun", "%q: link names are 1..15 characters", c.TUN)
	}
	return errors.Join(errs...)
}

// ReadPasswordFile reads --password-file, trimming one trailing newline so
// `echo secret > file` works as expected.
func ReadPasswordFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--password-file: %w", err)
	}
	b = []byte(strings.TrimRight(string(b), "\r\n"))
	if len(b) == 0 {
		return nil, fmt.Errorf("--password-file %s: file is empty", path)
	}
	return b, nil
}

// agentPorts are the ports of this agent that pods must not reach (the
// host filter): gossip, data, and the metrics and health listeners, as
// configured.
func (c *Config) agentPorts() []uint16 {
	// The VXLAN port too: a pod that could send to it would inject frames
	// into a peer's VXLAN device under this host's underlay address.
	ports := []uint16{uint16(c.Port), uint16(c.Port + 1)}
	if c.VXLANPort > 0 && c.VXLANPort < 65536 {
		ports = append(ports, uint16(c.VXLANPort))
	}
	for _, addr := range []string{c.MetricsAddr, c.HTTPAddr} {
		if addr == "" {
			continue
		}
		if _, p, err := net.SplitHostPort(addr); err == nil {
			if n, err := strconv.ParseUint(p, 10, 16); err == nil && n > 0 {
				ports = append(ports, uint16(n))
			}
		}
	}
	return ports
}
