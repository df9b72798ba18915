package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/weftnet/weft/hostnet"
	"github.com/weftnet/weft/kube"
	"github.com/weftnet/weft/policy"
	"github.com/weftnet/weft/router/tun"
	"github.com/weftnet/weft/router/udp"
)

// Devices are what the agent opens on the host: the TUN device, the data
// plane's UDP socket, the gossip transport and the host network. The zero
// value means the real ones (root needed for the TUN and the host network);
// tests give fakes (router/tun/tuntest, router/udp/udptest, mesh/meshtest,
// agent/agenttest) to run whole agents in one unprivileged process.
type Devices struct {
	// OpenTUN opens the TUN device; nil means tun.Open.
	OpenTUN func(name string, mtu int, log *slog.Logger) (dev tun.Device, desc string, err error)
	// RemoveTUN deletes the persistent TUN (weft reset). nil means
	// tun.Remove when OpenTUN is the real one too, and nothing otherwise:
	// a test's fake TUN leaves no device behind.
	RemoveTUN func(name string) (bool, error)
	// ListenUDP opens the data plane's socket; nil means udp.Listen.
	ListenUDP func(addr netip.AddrPort, log *slog.Logger) (udp.Conn, error)
	// GossipTransport carries gossip for a member bound to addr; nil means
	// memberlist's own UDP and TCP sockets. The mesh owns what it returns.
	GossipTransport func(addr netip.AddrPort) (memberlist.NodeAwareTransport, error)
	// HostNet sets up the bridge, routes and masquerade; nil means the
	// kernel's, through hostnet.
	HostNet HostNetwork
	// NewTicker paces the reconcile loop (see ReconcileInterval); nil means
	// time.NewTicker. Tests give a channel they tick by hand.
	NewTicker func(d time.Duration) (c <-chan time.Time, stop func())
	// PolicyEngine builds the NetworkPolicy engine (package policy); nil
	// means policy.New on a real host, and none on a simulated one (where
	// --network-policy then fails: tests give a fake or an engine in a
	// network namespace of their own).
	PolicyEngine func(cfg policy.Config) (PolicyEngine, error)
	// KubeClient is the Kubernetes client with --kube; nil means one from
	// --kubeconfig (or in-cluster). Tests give a fake clientset through
	// kube/client/clientset.
	KubeClient kube.Client

	// realHost: HostNet is the kernel's, so the kernel fast path (package
	// fastdp) may be used too. Set by withDefaults.
	realHost bool
}

// HostNetwork is the host side of the data plane (package hostnet on a real
// host). Every method is idempotent, as hostnet's are.
type HostNetwork interface {
	// UnderlayMTU is the MTU of the link that carries host, for --mtu 0.
	UnderlayMTU(host netip.Addr) (int, error)
	// Setup makes the bridge with the host's overlay address, forwarding and
	// masquerade; see hostnet.Setup.
	Setup(cfg hostnet.Config) (HostRoutes, error)
	// Teardown removes what Setup made (weft reset).
	Teardown(bridge string, log *slog.Logger) error
	// Watch signals (coalesced) every link, address and route change of
	// the host until ctx ends; see hostnet.Watch.
	Watch(ctx context.Context, log *slog.Logger) (<-chan struct{}, error)
	// UnderlayLink names the link holding host as a local address.
	UnderlayLink(host netip.Addr) (string, error)
	// LinkAddrs lists the global IPv4 addresses of a link.
	LinkAddrs(link string) ([]netip.Addr, error)
}

// HostRoutes keeps the kernel's routes of a set-up host network in step.
type HostRoutes interface {
	// RouteOverlay routes the whole overlay range to the TUN.
	RouteOverlay() error
	// SyncLocalRanges routes exactly these ranges, the ones this host owns,
	// to the bridge.
	SyncLocalRanges(prefixes []netip.Prefix) error
	// SetPeers keeps the host filter's peer addresses and ports current.
	SetPeers(addrs []netip.Addr, ports []uint16) error
	// Repair checks the host network against what the calls so far made
	// and puts back what differs; see hostnet.Host.Repair.
	Repair() ([]hostnet.Fault, error)
}

// kernelHost is HostNetwork over package hostnet: the real thing.
type kernelHost struct{}

func (kernelHost) UnderlayMTU(host netip.Addr) (int, error) { return hostnet.UnderlayMTU(host) }

func (kernelHost) Setup(cfg hostnet.Config) (HostRoutes, error) {
	h, err := hostnet.Setup(cfg)
	if err != nil {
		return nil, err
	}
	return h, nil
}

func (kernelHost) Teardown(bridge string, log *slog.Logger) error {
	return hostnet.Teardown(bridge, log)
}

func (kernelHost) Watch(ctx context.Context, log *slog.Logger) (<-chan struct{}, error) {
	return hostnet.Watch(ctx, log)
}

func (kernelHost) UnderlayLink(host netip.Addr) (string, error) { return hostnet.UnderlayLink(host) }

func (kernelHost) LinkAddrs(link string) ([]netip.Addr, error) { return hostnet.LinkAddrs(link) }

// withDefaults fills the nil fields with the real devices.
func (d Devices) withDefaults() Devices {
	if d.OpenTUN == nil {
		d.OpenTUN = tun.Open
		if d.RemoveTUN == nil {
			d.RemoveTUN = tun.Remove
		}
	}
	if d.RemoveTUN == nil {
		d.RemoveTUN = func(string) (bool, error) { return false, nil }
	}
	if d.ListenUDP == nil {
		d.ListenUDP = udp.Listen
	}
	if d.HostNet == nil {
		d.HostNet = kernelHost{}
		d.realHost = true
		if d.PolicyEngine == nil {
			d.PolicyEngine = realPolicyEngine
		}
	}
	if d.NewTicker == nil {
		d.NewTicker = func(d time.Duration) (<-chan time.Time, func()) {
			t := time.NewTicker(d)
			return t.C, t.Stop
		}
	}
	return d
}
