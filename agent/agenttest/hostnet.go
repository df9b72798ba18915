package agenttest

import (
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

	mu    sync.Mutex
	state HostState
}

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
	s.Config.Logger = nil
	return s
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
