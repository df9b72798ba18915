package agent

import (
	"context"
	"fmt"
	"net/netip"
	"sync"

	"github.com/weftnet/weft/fastdp"
	"github.com/weftnet/weft/hostnet"
	"github.com/weftnet/weft/mesh"
	"github.com/weftnet/weft/router"
	"github.com/weftnet/weft/router/crypto"
	"github.com/weftnet/weft/router/tun"
)

// dataplane is the TUN, the UDP socket, the forwarder, the optional crypto
// and the host network (bridge, routes, masquerade) of one host.
type dataplane struct {
	a      *Agent
	mtu    int
	tun    tun.Device
	conn   *swapConn // the data socket; replaced when the underlay address changes
	router *router.Router
	crypto *crypto.Manager // nil without a password

	mu        sync.Mutex   // guards host and the peers for the host filter
	host      HostRoutes   // nil until the host has its overlay address
	peerAddrs []netip.Addr // peers' underlay addresses, for the host filter
	peerPorts []uint16     // their gossip and data ports
}

// startDataplane opens the devices and starts forwarding. Routes to the TUN
// come later, once this host has an overlay address (setupHost).
func (a *Agent) startDataplane(ctx context.Context, goRun func(func())) (*dataplane, error) {
	encrypted := a.keys != nil
	mtu := a.cfg.MTU
	if mtu == 0 {
		underlay, err := a.dev.HostNet.UnderlayMTU(a.cfg.Host)
		if err != nil {
			return nil, fmt.Errorf("find the underlay MTU (or give --mtu): %w", err)
		}
		// With the kernel fast path, pods' packets may go either way: the
		// larger overhead (VXLAN's) sets the MTU.
		overhead := router.Overhead(encrypted)
		if a.fp.enabled() {
			overhead = max(overhead, fastdp.Overhead)
		}
		mtu = underlay - overhead
		a.log.Info("overlay MTU from the underlay", "underlay_mtu", underlay, "overhead", overhead, "mtu", mtu)
	}
	dev, desc, err := a.dev.OpenTUN(a.cfg.TUN, mtu, a.log.With("component", "tun"))
	if err != nil {
		return nil, fmt.Errorf("open TUN %s: %w", a.cfg.TUN, err)
	}
	dataAddr := netip.AddrPortFrom(a.cfg.Host, uint16(a.cfg.Port+1))
	sock, err := a.dev.ListenUDP(dataAddr, a.log.With("component", "udp"))
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("data plane socket %s: %w", dataAddr, err)
	}
	conn := newSwapConn(sock)
	dp := &dataplane{a: a, mtu: mtu, tun: dev, conn: conn}
	cfg := router.Config{TUN: dev, Conn: conn, Routes: a.routes, MTU: mtu, Logger: a.log.With("component", "router")}
	if encrypted {
		dp.crypto, err = crypto.NewManager(crypto.Config{
			Identity: a.identity,
			PSK:      a.keys.PSK,
			// Handshakes go out on the data socket; the router learns of
			// new sessions from the Manager's SessionsUp signal.
			Send:       router.NewHandshakeSender(conn),
			RekeyAfter: a.cfg.RekeyAfter,
			Logger:     a.log.With("component", "crypto"),
			OnWrongPassword: func(from netip.AddrPort) {
				a.notify().PasswordMismatch(from.Addr(), wrongPasswordWhy)
			},
		})
		if err != nil {
			conn.Close()
			dev.Close()
			return nil, err
		}
		cfg.Crypto = dp.crypto
	}
	if dp.router, err = router.New(cfg); err != nil {
		conn.Close()
		dev.Close()
		return nil, err
	}
	a.log.Info("data plane up", "tun", a.cfg.TUN, "datapath", dp.router.Datapath()+" ("+desc+")", "listen", dataAddr, "mtu", mtu, "encrypted", encrypted)
	// Run closes the TUN and the socket when it returns. The TUN is
	// persistent: it stays with its routes (dropping what is routed to it
	// until the next agent attaches), as do the bridge and the pods, so a
	// relaunch does not disturb running pods.
	goRun(func() {
		if err := dp.router.Run(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("data plane failed; stopping the agent so that it is restarted", "err", err)
			a.fail(fmt.Errorf("data plane: %w", err))
		}
	})
	if dp.crypto != nil {
		goRun(func() { dp.crypto.Run(ctx) })
	}
	return dp, nil
}

// setupHost makes the bridge, addresses, routes and masquerade; idempotent.
func (dp *dataplane) setupHost(addr netip.Addr, local []netip.Prefix) error {
	// Held throughout so that a membership change cannot slip between the
	// peers read here and dp.host being set.
	dp.mu.Lock()
	defer dp.mu.Unlock()
	h, err := dp.a.dev.HostNet.Setup(hostnet.Config{
		Bridge: dp.a.cfg.Bridge, TUN: dp.a.cfg.TUN, Range: dp.a.cfg.Range,
		HostAddr: addr, MTU: dp.mtu, Logger: dp.a.log.With("component", "hostnet"), Tunnels: dp.a.fp.tunnels(), VXLANPort: dp.a.fp.port(),
		Ports: append(dp.a.cfg.agentPorts(), dp.peerPorts...), Peers: dp.peerAddrs,
	})
	if err != nil {
		return err
	}
	if err := h.RouteOverlay(); err != nil {
		return err
	}
	if err := h.SyncLocalRanges(local); err != nil {
		return err
	}
	dp.host = h
	return nil
}

// hostRoutes is the set-up host network, nil before setupHost.
func (dp *dataplane) hostRoutes() HostRoutes {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	return dp.host
}

// peersChanged tells crypto where every peer is and what its key is, and
// the host filter which underlay addresses and ports pods must not reach.
func (dp *dataplane) peersChanged(members []mesh.PeerInfo) {
	dp.guardPeers(members)
	if dp.crypto == nil {
		return
	}
	for _, m := range members {
		if m.Name == dp.a.cfg.Name {
			continue
		}
		ep, ok := dp.a.routes.endpoint(m.Name)
		if !ok || len(m.Meta.PublicKey) != 32 {
			if m.State.Gone() {
				dp.crypto.RemovePeer(m.Name)
			}
			continue
		}
		dp.crypto.SetPeer(m.Name, [32]byte(m.Meta.PublicKey), ep)
	}
}

// guardPeers keeps the host filter's peer set in step with membership. Every
// peer ever seen stays in it: a dead peer may come back, and its address
// is an agent's address all the same.
func (dp *dataplane) guardPeers(members []mesh.PeerInfo) {
	var addrs []netip.Addr
	var ports []uint16
	for _, m := range members {
		if m.Name == dp.a.cfg.Name || !m.Addr.IsValid() {
			continue
		}
		addrs = append(addrs, m.Addr)
		if m.Meta.DataPort > 1 {
			// Gossip is on data port - 1 (the contract), data on DataPort.
			ports = append(ports, m.Meta.DataPort-1, m.Meta.DataPort)
		}
		if m.Meta.VXLAN != nil {
			ports = append(ports, m.Meta.VXLAN.Port)
		}
	}
	dp.mu.Lock()
	defer dp.mu.Unlock()
	dp.peerAddrs, dp.peerPorts = addrs, ports
	if dp.host == nil {
		return // setupHost passes them on
	}
	if err := dp.host.SetPeers(addrs, ports); err != nil {
		dp.a.log.Warn("updating the host filter", "err", err)
	}
}
