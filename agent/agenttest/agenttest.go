// Package agenttest runs whole weft agents in one test process, without
// root: real gossip (memberlist) over an in-memory network (mesh/meshtest),
// real IPAM with state in temporary directories, the real router over fake
// TUN devices (router/tun/tuntest) and a fake UDP network
// (router/udp/udptest), and a host network that only records what it is
// asked (HostNet). Links between hosts can be cut and healed, agents
// stopped and started again from their state directories.
//
//	c := agenttest.Start(t, agenttest.Options{N: 5})
//	c.WaitFormed()                           // all ready, all see 5 alive
//	c.Partition([]int{0, 1}, []int{2, 3, 4}) // and c.Heal()
//	c.Nodes[2].Stop(); c.Nodes[2].Start()
//
// Start checks at the end of the test that every goroutine the agents
// started is gone (CheckGoroutines). Waits are on conditions with a
// deadline, never on sleeps. Each host has an underlay address in
// 198.18.0.0/15 that exists only in the in-memory network; nothing of the
// machine's own network is touched. With NoDataplane the agents run gossip
// and IPAM only, which is how a simulation of many agents is meant to use it.
package agenttest

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/weftnet/weft/agent"
	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/mesh"
	"github.com/weftnet/weft/mesh/meshtest"
	"github.com/weftnet/weft/router/tun"
	"github.com/weftnet/weft/router/tun/tuntest"
	"github.com/weftnet/weft/router/udp"
	"github.com/weftnet/weft/router/udp/udptest"
)

// Network is the underlay shared by a cluster's hosts: gossip and data
// plane, each in memory.
type Network struct {
	Gossip meshtest.Network
	Data   udptest.Network
}

// Block cuts every link between hosts a and b, gossip and data, both ways.
func (n *Network) Block(a, b netip.Addr) {
	n.Gossip.Block(a, b)
	n.Data.Block(a, b)
}

// Unblock heals a link cut by Block.
func (n *Network) Unblock(a, b netip.Addr) {
	n.Gossip.Unblock(a, b)
	n.Data.Unblock(a, b)
}

// Options shape a cluster; the zero value of each field has a default.
type Options struct {
	N           int          // agents (default 3)
	Range       netip.Prefix // overlay range (default 10.32.0.0/12)
	IPAMInit    string       // --ipalloc-init (default consensus=N)
	Password    []byte       // encrypt gossip and data
	MTU         int          // overlay MTU (default 1400)
	Timing      mesh.Timing  // gossip timing (default mesh.LocalTiming())
	NoDataplane bool         // gossip and IPAM only
	// LogLevel of the agents' logs, kept per node and printed when the test
	// fails (default Info; WEFT_TEST_LOG=debug sets Debug).
	LogLevel slog.Level
	// Configure has the last word on each agent's configuration.
	Configure func(i int, cfg *agent.Config)
	// LogKeep is how many bytes of each agent's log are kept (the most
	// recent; default 4 MiB). A simulation of a thousand agents keeps less:
	// at the default, warnings of a loaded run held gigabytes.
	LogKeep int
	// StopWorkers is how many agents the cleanup stops at once (default 1,
	// one after the other; a simulation of hundreds of agents wants more,
	// or each leave in turn waits for its timeouts).
	StopWorkers int
}

// Cluster is a set of agents on one in-memory network.
type Cluster struct {
	T     testing.TB
	Net   *Network
	Nodes []*Node
}

// HostAddr is the underlay address of host i: 198.18.0.1 onwards.
func HostAddr(i int) netip.Addr {
	n := i + 1
	return netip.AddrFrom4([4]byte{198, 18, byte(n >> 8), byte(n)})
}

// Start configures opts.N agents and starts them all. Agent i > 0 is given
// agent 0 as its peer, agent 0 is given agent 1, as an operator would name
// one other host. Everything is stopped when the test ends, and the test
// fails if a goroutine an agent started outlives it.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c := New(t, opts)
	c.StartAll()
	return c
}

// StartAll starts every node that is not running. The agents are created
// concurrently: with a password each derives its keys with Argon2, which
// takes a good part of a second.
func (c *Cluster) StartAll() {
	c.T.Helper()
	agents := make([]*agent.Agent, len(c.Nodes))
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		if n.Running() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			agents[i], errs[i] = agent.New(n.Config, n.log)
		}()
	}
	wg.Wait()
	for i, n := range c.Nodes {
		if errs[i] != nil {
			c.T.Fatalf("%s: %v", n.Name, errs[i])
		}
		if agents[i] != nil {
			n.run(agents[i])
		}
	}
}

// New is Start without starting the agents, to change their configuration
// (Node.Config) first.
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.N == 0 {
		opts.N = 3
	}
	if !opts.Range.IsValid() {
		opts.Range = netip.MustParsePrefix(agent.DefaultRange)
	}
	if opts.IPAMInit == "" {
		opts.IPAMInit = fmt.Sprintf("consensus=%d", opts.N)
	}
	if opts.MTU == 0 {
		opts.MTU = 1400
	}
	if opts.Timing == (mesh.Timing{}) {
		opts.Timing = slowed(mesh.LocalTiming(), raceSlowdown)
	}
	checkGoroutinesWithin(t, leakGrace(opts.Timing))
	if strings.EqualFold(os.Getenv("WEFT_TEST_LOG"), "debug") {
		opts.LogLevel = slog.LevelDebug
	}
	c := &Cluster{T: t, Net: &Network{}}
	for i := 0; i < opts.N; i++ {
		n := &Node{c: c, Index: i, Name: fmt.Sprintf("host%d", i+1), Addr: HostAddr(i), HostNet: &HostNet{}}
		n.logs = &logBuffer{keep: opts.LogKeep}
		n.log = slog.New(slog.NewTextHandler(n.logs, &slog.HandlerOptions{Level: opts.LogLevel})).With("host", n.Name)
		peer := HostAddr(0)
		if i == 0 {
			peer = HostAddr(min(1, opts.N-1))
		}
		n.Config = agent.Config{
			Name:     n.Name,
			Host:     n.Addr,
			Port:     agent.DefaultPort,
			Range:    opts.Range,
			IPAMInit: opts.IPAMInit,
			Password: opts.Password,
			MTU:      opts.MTU,
			StateDir: tempDir(t),
			RunDir:   tempDir(t),
			Bridge:   agent.DefaultBridge,
			TUN:      agent.DefaultTUN,
			Timing:   opts.Timing,
			// Metrics and health servers would need TCP ports; the local API
			// on its unix socket is enough to drive an agent.
			NoDataplane: opts.NoDataplane,
		}
		if opts.N > 1 {
			n.Config.Peers = []string{peer.String()}
		}
		n.Config.Devices = agent.Devices{
			OpenTUN:         n.openTUN,
			ListenUDP:       n.listenUDP,
			GossipTransport: n.gossipTransport,
			HostNet:         n.HostNet,
		}
		if opts.Configure != nil {
			opts.Configure(i, &n.Config)
		}
		n.Client = api.NewClient(api.SocketPath(n.Config.RunDir), 5*time.Second)
		c.Nodes = append(c.Nodes, n)
	}
	// Registered after CheckGoroutines, so it runs before the check.
	t.Cleanup(func() {
		// One after the other by default: an agent leaving waits until a
		// peer has heard of it, which is quick while the others still run.
		c.stopAll(max(1, opts.StopWorkers))
		if t.Failed() {
			for _, n := range c.Nodes {
				t.Logf("log of %s (%s):\n%s", n.Name, n.Addr, n.logs.tail(64<<10))
			}
		}
	})
	return c
}

// stopAll stops every node, workers at a time.
func (c *Cluster) stopAll(workers int) {
	next := make(chan *Node)
	var wg sync.WaitGroup
	for range min(workers, max(1, len(c.Nodes))) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range next {
				n.stop()
			}
		}()
	}
	for _, n := range c.Nodes {
		next <- n
	}
	close(next)
	wg.Wait()
}

// tempDir is a t.TempDir short enough for a unix socket path inside it
// (108 bytes), even under a long test name.
func tempDir(t testing.TB) string {
	d := t.TempDir()
	if len(d)+len("/"+api.SocketName) < 100 {
		return d
	}
	d, err := os.MkdirTemp("", "weft")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// Partition cuts every link between hosts of different groups (node
// indexes); hosts in no group keep all their links.
func (c *Cluster) Partition(groups ...[]int) {
	for gi, g := range groups {
		for _, other := range groups[gi+1:] {
			for _, a := range g {
				for _, b := range other {
					c.Net.Block(c.Nodes[a].Addr, c.Nodes[b].Addr)
				}
			}
		}
	}
}

// Heal restores every link between the cluster's hosts.
func (c *Cluster) Heal() {
	for i, a := range c.Nodes {
		for _, b := range c.Nodes[i+1:] {
			c.Net.Unblock(a.Addr, b.Addr)
		}
	}
}

// WaitTimeout bounds each Wait (longer under the race detector).
const WaitTimeout = 15 * time.Second * raceSlowdown

// slowed is t with every interval k times longer.
func slowed(t mesh.Timing, k time.Duration) mesh.Timing {
	t.ProbeInterval *= k
	t.ProbeTimeout *= k
	t.GossipInterval *= k
	t.PushPullInterval *= k
	t.RejoinInterval *= k
	t.RejoinMaxBackoff *= k
	t.TCPTimeout *= k
	return t
}

// Wait polls cond until it returns nil, failing the test with cond's last
// answer after WaitTimeout, or at once if an agent stopped by itself.
func (c *Cluster) Wait(what string, cond func() error) {
	c.T.Helper()
	deadline := time.Now().Add(WaitTimeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		for _, n := range c.Nodes {
			if exited, runErr := n.exited(); exited {
				c.T.Fatalf("waiting for %s: %s stopped by itself: %v", what, n.Name, runErr)
			}
		}
		if time.Now().After(deadline) {
			c.T.Fatalf("waiting for %s: not after %v: %v", what, WaitTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitFormed waits until every running agent is ready and sees every
// running agent alive.
func (c *Cluster) WaitFormed() {
	c.T.Helper()
	c.Wait("the mesh and the ring to form", func() error {
		var running int
		for _, n := range c.Nodes {
			if n.Running() {
				running++
			}
		}
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			st, err := n.Status()
			if err != nil {
				return fmt.Errorf("%s: %w", n.Name, err)
			}
			if !st.Ready {
				return fmt.Errorf("%s not ready (%s)", n.Name, ipamState(st))
			}
			if st.Alive != running {
				return fmt.Errorf("%s sees %d alive, want %d", n.Name, st.Alive, running)
			}
		}
		return nil
	})
}

func ipamState(st api.Status) string {
	if st.IPAM == nil {
		return "starting"
	}
	return st.IPAM.State
}

// Node is one host of the cluster: its configuration, devices and agent.
// The configuration and the state directory survive Stop and Start, as on
// a host whose agent is relaunched.
type Node struct {
	c       *Cluster
	Index   int
	Name    string
	Addr    netip.Addr // underlay
	Config  agent.Config
	HostNet *HostNet
	Client  *api.Client // the local API of the agent

	log  *slog.Logger
	logs *logBuffer

	mu     sync.Mutex
	agent  *agent.Agent
	tun    *tuntest.Device
	gossip *meshtest.Transport
	cancel context.CancelFunc
	done   chan struct{}
	runErr error
}

// Start creates and runs the agent from Config; the test fails if it cannot.
func (n *Node) Start() {
	t := n.c.T
	t.Helper()
	if n.Running() {
		t.Fatalf("%s: Start while running", n.Name)
	}
	a, err := agent.New(n.Config, n.log)
	if err != nil {
		t.Fatalf("%s: %v", n.Name, err)
	}
	n.run(a)
}

func (n *Node) run(a *agent.Agent) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	n.agent, n.cancel, n.done, n.runErr = a, cancel, done, nil
	go func() {
		err := a.Run(ctx)
		n.mu.Lock()
		n.runErr = err
		n.mu.Unlock()
		close(done)
	}()
}

// Stop stops the agent and waits until its Run has returned, which it does
// only once every goroutine it started has ended; it returns Run's error.
func (n *Node) Stop() error {
	n.c.T.Helper()
	err, ok := n.stopWithin(WaitTimeout)
	if !ok {
		n.c.T.Fatalf("%s: Run did not return within %v of the stop", n.Name, WaitTimeout)
	}
	return err
}

func (n *Node) stop() { n.stopWithin(WaitTimeout) }

// Crash stops the agent as kill -9 would look to its peers: its gossip
// transport is shut first, so its leave reaches nobody and the others must
// find it dead by probing (its data plane, if any, stops with the agent). The state directory is kept, as on a host whose
// agent crashed; Start runs it again.
func (n *Node) Crash() {
	n.c.T.Helper()
	n.mu.Lock()
	gossip := n.gossip
	n.mu.Unlock()
	if gossip != nil {
		// Shutting the transport down frees the address: nothing sent to or
		// from it arrives any more, and dials to it are refused.
		_ = gossip.Shutdown()
	}
	if _, ok := n.stopWithin(WaitTimeout); !ok {
		n.c.T.Fatalf("%s: Run did not return within %v of the crash", n.Name, WaitTimeout)
	}
}

func (n *Node) stopWithin(d time.Duration) (error, bool) {
	n.mu.Lock()
	cancel, done := n.cancel, n.done
	n.mu.Unlock()
	if done == nil {
		return nil, true
	}
	cancel()
	select {
	case <-done:
	case <-time.After(d):
		return nil, false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.agent, n.tun, n.gossip, n.cancel, n.done = nil, nil, nil, nil, nil
	return n.runErr, true
}

// Running reports whether the agent was started and not stopped.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.done != nil
}

// exited reports whether a started agent's Run returned without Stop.
func (n *Node) exited() (bool, error) {
	n.mu.Lock()
	done := n.done
	n.mu.Unlock()
	if done == nil {
		return false, nil
	}
	select {
	case <-done:
		n.mu.Lock()
		defer n.mu.Unlock()
		return true, n.runErr
	default:
		return false, nil
	}
}

// Agent is the running agent, nil when stopped.
func (n *Node) Agent() *agent.Agent {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.agent
}

// TUN is the running agent's TUN device: Inject is a packet from a pod on
// this host, Written what the agent delivers to them. nil before the agent
// opened it.
func (n *Node) TUN() *tuntest.Device {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.tun
}

// GossipStats are the running agent's gossip counters.
func (n *Node) GossipStats() meshtest.Stats {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.gossip == nil {
		return meshtest.Stats{}
	}
	return n.gossip.Stats()
}

// Status asks the agent's local API, as `weft status` does.
func (n *Node) Status() (api.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return n.Client.Status(ctx)
}

// IPAM asks the agent's local API, as `weft status ipam` does.
func (n *Node) IPAM() (api.IPAMStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return n.Client.IPAM(ctx)
}

// AttachPod allocates an address for a pod on this host, as the CNI shim
// does, and returns it.
func (n *Node) AttachPod(id string) netip.Addr {
	t := n.c.T
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := n.Client.Allocate(ctx, api.AllocateRequest{ContainerID: id, IfName: "eth0"})
	if err != nil {
		t.Fatalf("%s: allocate for %s: %v", n.Name, id, err)
	}
	p, err := netip.ParsePrefix(r.Address)
	if err != nil {
		t.Fatalf("%s: allocated address %q: %v", n.Name, r.Address, err)
	}
	return p.Addr()
}

// Logs returns what the agent logged so far (all its runs).
func (n *Node) Logs() string { return n.logs.tail(1 << 30) }

func (n *Node) openTUN(name string, mtu int, _ *slog.Logger) (tun.Device, string, error) {
	d := tuntest.New(mtu, tuntest.Name(name))
	n.mu.Lock()
	n.tun = d
	n.mu.Unlock()
	return d, "fake", nil
}

func (n *Node) listenUDP(addr netip.AddrPort, _ *slog.Logger) (udp.Conn, error) {
	c, err := n.c.Net.Data.Listen(addr)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (n *Node) gossipTransport(addr netip.AddrPort) (memberlist.NodeAwareTransport, error) {
	tr, err := n.c.Net.Gossip.Listen(addr)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	n.gossip = tr
	n.mu.Unlock()
	return tr, nil
}

// logBuffer keeps an agent's log lines, the most recent keep bytes (at
// least; up to twice that before it trims).
type logBuffer struct {
	keep int // 0: defaultLogKeep

	mu  sync.Mutex
	buf bytes.Buffer
}

const defaultLogKeep = 4 << 20

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	keep := b.keep
	if keep <= 0 {
		keep = defaultLogKeep
	}
	if b.buf.Len()+len(p) > 2*keep && b.buf.Len() > keep {
		tail := b.buf.Bytes()[b.buf.Len()-keep:]
		b.buf = *bytes.NewBuffer(append(make([]byte, 0, 2*keep), tail...))
	}
	return b.buf.Write(p)
}

func (b *logBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.Bytes()
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return string(s)
}
