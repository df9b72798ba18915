package agenttest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	"github.com/weftnet/weft/agent"
	"github.com/weftnet/weft/hostnet"
)

// ErrNoHostNetwork is what HostNet answers after Teardown, as the kernel
// answers for a bridge that is gone.
var ErrNoHostNetwork = errors.New("agenttest: host network torn down")

// HostNet is an agent.HostNetwork that changes nothing and records what it
// was asked, as a host keeps its bridge and routes across agent restarts. It
// checks its arguments as hostnet does, so a bad call fails here as it would
// on a real host.
type HostNet struct {
	// MTU is the answer to UnderlayMTU (0: 1500).
	MTU int

	mu       sync.Mutex
	state    HostState
	broken   []hostnet.Fault // repaired by the next Repair
	jammed   error           // Repair fails with it while set
	underlay []netip.Addr    // addresses of the underlay link "eth0"; set by the first UnderlayLink
	watchers []chan struct{}
}

// UnderlayLinkName is the fake underlay link's name.
const UnderlayLinkName = "eth0"

// HostState is what the host network looks like after the calls so far.
type HostState struct {
	Setups        int            // Setup calls that succeeded
	Config        hostnet.Config // of the last Setup
	OverlayRouted bool           // the overlay range is routed to the TUN
	LocalSyncs    int            // SyncLocalRanges calls that succeeded
	Local         []netip.Prefix // routed to the bridge: the ranges this host owns
	FilterPeers   []netip.Addr   // the host filter's peer addresses (SetPeers)
	FilterPorts   []uint16       // and the peers' ports
	TornDown      bool
	Repairs       []hostnet.Fault // every fault Repair repaired, in order
}

var _ agent.HostNetwork = (*HostNet)(nil)

// State returns a copy of the current state.
func (h *HostNet) State() HostState {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.state
	s.Local = slices.Clone(s.Local)
	s.FilterPeers = slices.Clone(s.FilterPeers)
	s.FilterPorts = slices.Clone(s.FilterPorts)
	s.Repairs = slices.Clone(s.Repairs)
	s.Config.Logger = nil
	return s
}

// Break damages the host network as an operator could (f.Part says what);
// the next Repair repairs it, as hostnet's does. Watchers are told, as
// netlink would tell them.
func (h *HostNet) Break(f hostnet.Fault) {
	h.mu.Lock()
	h.broken = append(h.broken, f)
	h.mu.Unlock()
	h.signal()
}

// BreakSilently is Break without telling the watchers, as a sysctl
// changes without a netlink event: only the reconcile timer finds it.
func (h *HostNet) BreakSilently(f hostnet.Fault) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.broken = append(h.broken, f)
}

// Jam makes Repair fail with err until Jam(nil): damage that cannot be
// repaired (a link of the bridge's name that is not a bridge, say).
func (h *HostNet) Jam(err error) {
	h.mu.Lock()
	h.jammed = err
	h.mu.Unlock()
	h.signal()
}

// SetUnderlayAddrs replaces the addresses of the underlay link, as
// `ip addr del/add` would, and tells the watchers.
func (h *HostNet) SetUnderlayAddrs(addrs ...netip.Addr) {
	h.mu.Lock()
	h.underlay = slices.Clone(addrs)
	h.mu.Unlock()
	h.signal()
}

func (h *HostNet) signal() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range h.watchers {
		select {
		case w <- struct{}{}:
		default:
		}
	}
}

// Watch implements agent.HostNetwork: a signal after every Break, Jam and
// SetUnderlayAddrs.
func (h *HostNet) Watch(ctx context.Context, _ *slog.Logger) (<-chan struct{}, error) {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	h.watchers = append(h.watchers, ch)
	h.mu.Unlock()
	context.AfterFunc(ctx, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.watchers = slices.DeleteFunc(h.watchers, func(w chan struct{}) bool { return w == ch })
	})
	return ch, nil
}

// UnderlayLink implements agent.HostNetwork: the first address asked for
// becomes the underlay link's.
func (h *HostNet) UnderlayLink(host netip.Addr) (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.underlay == nil {
		h.underlay = []netip.Addr{host}
	}
	if !slices.Contains(h.underlay, host) {
		return "", fmt.Errorf("agenttest: no link holds %s", host)
	}
	return UnderlayLinkName, nil
}

// LinkAddrs implements agent.HostNetwork.
func (h *HostNet) LinkAddrs(link string) ([]netip.Addr, error) {
	if link != UnderlayLinkName {
		return nil, fmt.Errorf("agenttest: no link %s", link)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.underlay), nil
}

// UnderlayMTU implements agent.HostNetwork.
func (h *HostNet) UnderlayMTU(host netip.Addr) (int, error) {
	if !host.Is4() {
		return 0, fmt.Errorf("agenttest: no interface has address %s", host)
	}
	if h.MTU == 0 {
		return 1500, nil
	}
	return h.MTU, nil
}

// Setup implements agent.HostNetwork.
func (h *HostNet) Setup(cfg hostnet.Config) (agent.HostRoutes, error) {
	for field, name := range map[string]string{"Bridge": cfg.Bridge, "TUN": cfg.TUN} {
		if name == "" || len(name) > 15 {
			return nil, fmt.Errorf("agenttest: %s name %q must have 1..15 characters", field, name)
		}
	}
	if !cfg.Range.IsValid() || !cfg.Range.Addr().Is4() {
		return nil, fmt.Errorf("agenttest: Range %v is not an IPv4 prefix", cfg.Range)
	}
	if !cfg.HostAddr.Is4() || !cfg.Range.Contains(cfg.HostAddr) {
		return nil, fmt.Errorf("agenttest: HostAddr %v is not inside Range %v", cfg.HostAddr, cfg.Range)
	}
	if len(cfg.Ports) == 0 || slices.Contains(cfg.Ports, 0) {
		return nil, fmt.Errorf("agenttest: Ports %v: the host filter needs the agent's ports, none 0", cfg.Ports)
	}
	if cfg.MTU != 0 && (cfg.MTU < 68 || cfg.MTU > 65535) {
		return nil, fmt.Errorf("agenttest: MTU %d is outside 68..65535", cfg.MTU)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.state.Setups++
	h.state.Config = cfg
	h.state.TornDown = false
	return &hostRoutes{h: h, rng: cfg.Range.Masked()}, nil
}

// Teardown implements agent.HostNetwork.
func (h *HostNet) Teardown(bridge string, _ *slog.Logger) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.state = HostState{Setups: h.state.Setups, LocalSyncs: h.state.LocalSyncs, TornDown: true}
	return nil
}

type hostRoutes struct {
	h   *HostNet
	rng netip.Prefix
}

func (r *hostRoutes) RouteOverlay() error {
	r.h.mu.Lock()
	defer r.h.mu.Unlock()
	if r.h.state.TornDown {
		return ErrNoHostNetwork
	}
	r.h.state.OverlayRouted = true
	return nil
}

func (r *hostRoutes) SyncLocalRanges(prefixes []netip.Prefix) error {
	for _, p := range prefixes {
		if !p.Addr().Is4() || p.Bits() < r.rng.Bits() || !r.rng.Contains(p.Addr()) {
			return fmt.Errorf("agenttest: local range %v is not inside the overlay range %v", p, r.rng)
		}
	}
	r.h.mu.Lock()
	defer r.h.mu.Unlock()
	if r.h.state.TornDown {
		return ErrNoHostNetwork
	}
	r.h.state.LocalSyncs++
	r.h.state.Local = slices.Clone(prefixes)
	slices.SortFunc(r.h.state.Local, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return nil
}

// Repair implements agent.HostRoutes: what Break damaged is repaired and
// returned, each fault once; while jammed it fails.
func (r *hostRoutes) Repair() ([]hostnet.Fault, error) {
	r.h.mu.Lock()
	defer r.h.mu.Unlock()
	if r.h.state.TornDown {
		return nil, nil
	}
	if r.h.jammed != nil {
		return nil, fmt.Errorf("agenttest: repair: %w", r.h.jammed)
	}
	fixed := r.h.broken
	r.h.broken = nil
	r.h.state.Repairs = append(r.h.state.Repairs, fixed...)
	return fixed, nil
}

func (r *hostRoutes) SetPeers(addrs []netip.Addr, ports []uint16) error {
	for _, a := range addrs {
		if !a.Unmap().Is4() {
			return fmt.Errorf("agenttest: peer address %v is not IPv4", a)
		}
	}
	if slices.Contains(ports, 0) {
		return errors.New("agenttest: port 0 in the host filter")
	}
	r.h.mu.Lock()
	defer r.h.mu.Unlock()
	if r.h.state.TornDown {
		return ErrNoHostNetwork
	}
	r.h.state.FilterPeers = slices.Clone(addrs)
	r.h.state.FilterPorts = slices.Clone(ports)
	return nil
}
