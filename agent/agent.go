// Package agent composes one weft host: gossip membership, IPAM, the host
// network, the data plane, the local API and the health and metrics servers.
//
// It lives apart from cmd/weft so that tests can run agents in-process and
// the CLI stays a thin layer of flag parsing.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/identity"
	"github.com/weftnet/weft/internal/logx"
	"github.com/weftnet/weft/ipam"
	"github.com/weftnet/weft/mesh"
	"github.com/weftnet/weft/router/crypto"
)

// Agent is one running weft host.
type Agent struct {
	cfg     Config
	dev     Devices // cfg.Devices with the real ones where nil
	log     *slog.Logger
	started time.Time

	keys     *crypto.PasswordKeys // nil without a password
	identity crypto.Identity
	signer   *identity.Signer // long-term IPAM signing key, with or without a password
	pins     *identity.Pins   // peers' signing keys, pinned to their names
	mesh     *mesh.Mesh
	ipam     *ipam.IPAM
	routes   *routes
	dp       *dataplane // nil with NoDataplane
	fp       *fastPath  // nil with NoDataplane
	kube     *kubeSide  // nil outside Kubernetes
	policy   *policyCtl // nil without NetworkPolicy enforcement

	joined atomic.Int32 // alive peers last logged, to log changes once
	// up is set once mesh, ipam, routes and dp are assigned; the API and
	// metrics, which start earlier, read those fields only after seeing it.
	up atomic.Bool

	standby atomic.Bool // waiting for another agent to let go of the host (see takeHost)

	pendingAllocs atomic.Int64 // allocation requests in progress, for metrics
	repairs       repairCounts // host network repairs, for metrics
	// reconcileMu serialises a repair and `weft reset`'s teardown; after
	// tornDown the reconcile loop repairs nothing.
	reconcileMu sync.Mutex
	tornDown    bool
	met         *agentMetrics
	pods        *podNames // which pod each container is, for weft ps
	health      *healthGossip
	// events holds the notifier: Kubernetes Events on the Node, else
	// noNotifier. Set before the mesh starts, but read by metrics too,
	// which start earlier: hence atomic (see notify).
	events atomic.Pointer[notifierBox]

	mu         sync.Mutex
	hostAddr   netip.Addr // this host's overlay address (bridge, pods' gateway)
	blocker    string     // why not ready, for /readyz and status
	hostBroken string     // why the host network is broken and not repaired ("" when fine)
	host       netip.Addr // underlay address after a change of it (see rebind); invalid: cfg.Host

	stop      context.CancelFunc // ends Run, used by reset
	resetting atomic.Bool        // reset asked: Run removes the persistent TUN last
	failure   error              // the fatal failure that stopped Run, see fail
	resetErr  chan error
}

// New validates cfg, derives keys and loads persistent state; Run starts it.
// A corrupt state file is an error here, before anything touches the network.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log = logx.OrDiscard(log)
	for _, dir := range []string{cfg.StateDir, cfg.RunDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", dir, err)
		}
	}
	a := &Agent{cfg: cfg, dev: cfg.Devices.withDefaults(), log: log, blocker: "starting",
		met: newAgentMetrics(), pods: loadPodNames(cfg.StateDir, log)}
	a.setNotifier(noNotifier{})
	a.health = newHealthGossip(cfg.Name, log, cfg.Timing, a.ownHealth)
	var err error
	if a.signer, err = identity.LoadOrCreate(cfg.StateDir); err != nil {
		return nil, err
	}
	if a.pins, err = identity.LoadPins(cfg.StateDir, log); err != nil {
		return nil, err
	}
	if cfg.Password == nil {
		dropCachedKeys(cfg.StateDir, log) // no secret of a former password lingers
	} else {
		if a.keys, _, err = passwordKeys(cfg, log); err != nil {
			return nil, err
		}
		if a.identity, err = crypto.LoadOrCreateIdentity(cfg.StateDir); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// Run starts everything and blocks until ctx is done (SIGTERM) or the agent
// is reset; it then leaves the mesh cleanly and returns.
func (a *Agent) Run(ctx context.Context) error {
	// The probe socket and the host lock come first and go last: the next
	// agent, standing by, takes over only once everything below has let go.
	if a.cfg.ProbeSocket != "" {
		probeSrv, err := a.serveProbe()
		if err != nil {
			return err
		}
		defer probeSrv.close()
	}
	lock, err := a.takeHost(ctx)
	if err != nil {
		return err
	}
	defer lock.release()

	a.started = time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.stop = cancel
	// Last of all, once the data plane has let go of it.
	defer a.afterReset()
	// Pins learnt while running are written in the background; the last
	// ones reach the disk before Run returns.
	defer func() {
		if err := a.pins.Flush(); err != nil {
			a.log.Warn("could not persist pinned peer keys", "err", err)
		}
	}()

	apiSrv, err := a.serveAPI()
	if err != nil {
		return err
	}
	defer apiSrv.close()
	if a.cfg.HTTPAddr != "" {
		healthSrv, err := a.serveHealth()
		if err != nil {
			return err
		}
		defer healthSrv.close()
	}
	if a.cfg.MetricsAddr != "" {
		metricsSrv, err := a.serveMetrics()
		if err != nil {
			return err
		}
		defer metricsSrv.close()
	}

	meta := mesh.Meta{
		Protocol:  mesh.ProtocolMax,
		DataPort:  uint16(a.cfg.Port + 1),
		Encrypted: a.keys != nil,
		Version:   api.Version,
		// SigningKey: see identity; pinned by peers on first sight.
		SigningKey: a.signer.Public(),
	}
	if a.keys != nil {
		pub := a.identity.Public()
		meta.PublicKey = pub[:]
	}
	if !a.cfg.NoDataplane {
		// Before gossip: the metadata says whether this host offers it.
		if a.fp, err = a.startFastPath(); err != nil {
			return err
		}
		meta.VXLAN = a.fp.meta
	}
	mcfg := mesh.Config{
		Name: a.cfg.Name, Bind: a.cfg.Host, Port: a.cfg.Port, Meta: meta,
		SecretKey: a.gossipKey(), Timing: a.cfg.Timing, Logger: a.log, Pins: a.pins,
		StateDir: a.cfg.StateDir,
		OnRefusal: func(r mesh.Refusal) {
			if r.Password {
				a.notify().PasswordMismatch(r.From, r.Why)
			}
		},
	}
	if a.dev.GossipTransport != nil {
		bind := netip.AddrPortFrom(a.cfg.Host, uint16(a.cfg.Port))
		if mcfg.Transport, err = a.dev.GossipTransport(bind); err != nil {
			return fmt.Errorf("gossip transport on %s: %w", bind, err)
		}
	}
	if a.cfg.Kube {
		// Before the mesh listens: the first peers' keys are then already
		// checked against their Nodes (see startKube).
		if a.kube, err = a.startKube(ctx); err != nil {
			return err
		}
	}
	m, err := mesh.New(mcfg)
	if err != nil {
		return err
	}
	a.mesh = m

	// Every goroutine started below has ended when Run returns, also on an
	// error: the context is cancelled before waiting for them.
	var wg sync.WaitGroup
	// The data plane stops only after the mesh has left: pods keep their
	// traffic while the peers are told, and a restart's gap is only the
	// time between two processes (the TUN and its routes persist).
	dpCtx, dpCancel := context.WithCancel(context.WithoutCancel(ctx))
	meshRunning := false
	defer func() {
		cancel()
		if !meshRunning {
			dpCancel()
		}
		wg.Wait()
		dpCancel()
	}()
	goRun := func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() }

	init, err := a.ipamInit(ctx)
	if err != nil {
		m.Shutdown()
		return err
	}
	a.ipam, err = ipam.New(ipam.Config{
		Name: a.cfg.Name, Range: a.cfg.Range, Init: init, StateDir: a.cfg.StateDir,
		Transport: mesh.Transport{Mesh: m, Channel: mesh.ChannelIPAM},
		Logger:    a.log,
		Alive:     m.IsAlive,
		Reachable: m.Reachable,
		Peers:     m.AliveNames,
		Signer:    a.signer,
		PeerKey:   m.PeerKey,
		PeerGone: func(name string) {
			if err := a.pins.Forget(name); err != nil {
				a.log.Warn("could not clear the pinned signing key of a removed peer", "peer", name, "err", err)
			}
		},
	})
	if err != nil {
		m.Shutdown()
		return err
	}
	a.routes = newRoutes(a.cfg.Name, a.cfg.Range, a.ipam, a.log.With("component", "routes"))
	a.routes.onDemand = a.cfg.NoDataplane
	m.Handle(mesh.ChannelIPAM, a.ipam)
	m.Handle(mesh.ChannelHealth, a.health)
	m.OnChange(a.membershipChanged)
	goRun(func() { a.ipam.Run(ctx) })

	if !a.cfg.NoDataplane {
		if a.dp, err = a.startDataplane(dpCtx, goRun); err != nil {
			m.Shutdown()
			return err
		}
	}
	// The peers of the last run, before gossip speaks: endpoints for the
	// routes and keys for crypto, so that traffic flows at once.
	a.membershipChanged()
	if a.fp != nil {
		goRun(func() { a.fp.run(ctx) })
	}
	a.up.Store(true)
	if len(a.cfg.Peers) > 0 {
		a.log.Info("joining peers", "peers", a.cfg.Peers)
		if err := m.Connect(a.cfg.Peers); err != nil {
			m.Shutdown()
			return err
		}
	} else if !a.cfg.Kube {
		a.log.Info("no peers given; waiting for others to join this host")
	}
	meshRunning = true
	goRun(func() { defer dpCancel(); m.Run(ctx) })
	goRun(func() { a.becomeReady(ctx) })
	goRun(func() { a.health.run(ctx, m) })
	if a.kube != nil {
		goRun(func() { a.kube.run(ctx, a, goRun) })
	}

	<-ctx.Done()
	a.log.Info("shutting down")
	return a.failed()
}

// afterReset runs once a reset has stopped everything. It deletes the
// persistent TUN, which any other stop leaves, with its routes, for the
// next agent; and the peers of this run (a reset host joins only whom it
// is told to) and the keys cached from the password, which the mesh and
// the data plane no longer touch.
func (a *Agent) afterReset() {
	if !a.resetting.Load() {
		return
	}
	for _, f := range []string{mesh.KnownPeersFile, crypto.PasswordKeysFile} {
		if err := os.Remove(filepath.Join(a.cfg.StateDir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			a.log.Warn("reset: removing state", "file", f, "err", err)
		}
	}
	if a.cfg.NoDataplane {
		return
	}
	if removed, err := a.dev.RemoveTUN(a.cfg.TUN); err != nil {
		a.log.Warn("reset: removing the TUN", "tun", a.cfg.TUN, "err", err)
	} else if removed {
		a.log.Info("reset: removed the TUN", "tun", a.cfg.TUN)
	}
}

// ipamInit decides how the ring is bootstrapped: the flag, or in Kubernetes
// the seed recorded once for the whole cluster. A host that saved a ring
// comes up from it without the API server, which may be down.
func (a *Agent) ipamInit(ctx context.Context) (ipam.Init, error) {
	if a.kube != nil && a.cfg.IPAMInit == "" {
		seeds, ok, err := ipam.SavedRing(a.cfg.StateDir)
		if err != nil {
			return ipam.Init{}, err
		}
		if ok {
			a.log.Info("address ring from the state on disk; no bootstrap through the API server", "seeds", seeds)
			return ipam.Init{Mode: ipam.ModeSeed, Seeds: seeds}, nil
		}
		seeds, err = a.kube.cluster.BootstrapRing(ctx, a.cfg.Name)
		if err != nil {
			return ipam.Init{}, fmt.Errorf("bootstrap the address ring through the API server: %w", err)
		}
		return ipam.Init{Mode: "seed", Seeds: seeds}, nil
	}
	init, err := ipam.ParseInit(a.cfg.IPAMInit, len(a.cfg.Peers)+1)
	if err != nil {
		return init, fmt.Errorf("--ipalloc-init: %w", err)
	}
	return init, nil
}

// membershipChanged runs on a mesh goroutine after every membership change.
func (a *Agent) membershipChanged() {
	members := a.mesh.Members()
	a.met.membersChanged(a.cfg.Name, members)
	a.routes.update(members)
	if a.dp != nil {
		a.dp.peersChanged(members)
	}
	a.ipam.PeersChanged()
	_, alive := a.mesh.Counts()
	others := int32(alive - 1)
	if old := a.joined.Swap(others); old != others {
		a.log.Info(fmt.Sprintf("joined %d %s", others, plural(int(others), "peer", "peers")), "peers", others)
	}
}

// becomeReady waits until IPAM can allocate, gives this host its overlay
// address and sets up the host network, then keeps the kernel's routes in
// step with the ranges this host owns.
func (a *Agent) becomeReady(ctx context.Context) {
	a.setBlocker("waiting for the address ring (" + a.ipam.State() + ")")
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for !a.ipam.Ready() {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			a.setBlocker("waiting for the address ring (" + a.ipam.State() + ")")
		}
	}
	if a.dp == nil {
		a.setBlocker("")
		a.log.Info("ready: IPAM can allocate")
		return
	}
	for {
		addr, err := a.hostAddress(ctx)
		if err == nil {
			err = a.dp.setupHost(addr, a.ipam.OwnedPrefixes())
		}
		if err == nil {
			a.mu.Lock()
			a.hostAddr = addr
			a.mu.Unlock()
			break
		}
		a.setBlocker("host network: " + err.Error())
		a.log.Warn("setting up the host network, will retry", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
	a.setBlocker("")
	a.log.Info("ready: pods can be attached", "address", a.HostAddr(), "bridge", a.cfg.Bridge, "mtu", a.dp.mtu,
		"took", time.Since(a.started).Round(time.Millisecond), "cpu", processCPU().Round(time.Millisecond))
	a.keepHost(ctx)
}

func (a *Agent) hostAddress(ctx context.Context) (netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	addr, err := a.ipam.Allocate(ctx, ipam.HostContainerID, a.cfg.Bridge, "")
	if err != nil {
		return netip.Addr{}, fmt.Errorf("allocate this host's overlay address: %w", err)
	}
	return addr, nil
}

func (a *Agent) setBlocker(why string) {
	a.mu.Lock()
	a.blocker = why
	a.mu.Unlock()
	a.noteReadiness()
}

// HostAddr is this host's overlay address, invalid until ready.
func (a *Agent) HostAddr() netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.hostAddr
}

// running reports whether the components exist (see up).
func (a *Agent) running() bool { return a.up.Load() }

// Ready reports whether this host can network pods.
func (a *Agent) Ready() bool { return a.notReadyReason() == "" }

func (a *Agent) notReadyReason() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.blocker == "" && a.hostBroken != "" {
		return "host network broken: " + a.hostBroken
	}
	return a.blocker
}

func (a *Agent) gossipKey() []byte {
	if a.keys == nil {
		return nil
	}
	return a.keys.Gossip[:]
}

func (a *Agent) status() api.Status {
	st := api.Status{
		Version:    api.Version,
		Name:       a.cfg.Name,
		Host:       a.underlayAddr().String(),
		Port:       a.cfg.Port,
		Encryption: a.keys != nil,
		Protocol:   mesh.ProtocolMax,
		Uptime:     time.Since(a.started).Round(time.Second),
		Ready:      a.Ready(),
		NotReady:   a.notReadyReason(),
	}
	if !a.running() {
		return st
	}
	st.Peers, st.Alive = a.mesh.Counts()
	st.Targets = len(a.mesh.Targets())
	ipamSummary := apiIPAMSummary(a.ipam.Status())
	st.IPAM = &ipamSummary
	if a.dp != nil {
		st.Datapath, st.MTU = a.dp.router.Datapath(), a.dp.mtu
		if a.fp.enabled() {
			st.Datapath += ", kernel fast path (VXLAN)"
		}
		for _, c := range a.connections() {
			if c.State == connEstablished {
				st.Connected++
			}
		}
	}
	return st
}

// processCPU is the CPU time this process has used so far (user and
// system), logged at the milestones of a start: on a node, the agent's CPU
// is taken first from the BestEffort pods beside it (site/operations.md).
func processCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

var errNoMesh = errors.New("gossip is still starting")
