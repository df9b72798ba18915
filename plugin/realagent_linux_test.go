package plugin

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/weftnet/weft/agent"
	"github.com/weftnet/weft/agent/agenttest"
	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/ipam"
)

// realAgent is the real weft agent, in this process: its local API on a unix
// socket in a temporary directory, real IPAM with its state in another, and
// in-memory devices instead of the TUN, the sockets and the host network
// (agent/agenttest). The shim's end-to-end tests talk to it, so the API they
// rely on is the one the agent really serves, not a fake's idea of it.
type realAgent struct {
	Socket  string
	t       testing.TB
	cluster *agenttest.Cluster
	node    *agenttest.Node
}

// newRealAgent starts one agent that owns rng and whose gateway, the first
// address it allocates for itself, is want.
func newRealAgent(t testing.TB, rng netip.Prefix, want netip.Addr, bridge string, mtu int) *realAgent {
	t.Helper()
	c := agenttest.New(t, agenttest.Options{N: 1, Range: rng, IPAMInit: "seed=host1", MTU: mtu,
		Configure: func(_ int, cfg *agent.Config) { cfg.Bridge = bridge }})
	n := c.Nodes[0]
	n.Start()
	c.WaitFormed()
	a := &realAgent{Socket: api.SocketPath(n.Config.RunDir), t: t, cluster: c, node: n}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	network, err := n.Client.Network(ctx)
	if err != nil {
		t.Fatalf("real agent: network: %v", err)
	}
	if network.Gateway != want.String() || network.Bridge != bridge || network.MTU != mtu {
		t.Fatalf("real agent: network %+v, want gateway %s on bridge %s, MTU %d", network, want, bridge, mtu)
	}
	return a
}

// Held lists the containers' allocations, as the agent reports them.
func (a *realAgent) Held() map[api.Attachment]netip.Addr {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cs, err := a.node.Client.Containers(ctx)
	if err != nil {
		a.t.Fatalf("real agent: containers: %v", err)
	}
	out := map[api.Attachment]netip.Addr{}
	for _, c := range cs {
		if c.ContainerID == ipam.HostContainerID {
			continue
		}
		addr, err := c.Addr()
		if err != nil {
			a.t.Fatalf("real agent: %v", err)
		}
		out[api.Attachment{ContainerID: c.ContainerID, IfName: c.IfName}] = addr
	}
	return out
}

// Stop stops the agent: its socket stops answering.
func (a *realAgent) Stop() {
	if err := a.node.Stop(); err != nil {
		a.t.Fatalf("real agent: stop: %v", err)
	}
}

// Start starts it again from its state directory.
func (a *realAgent) Start(t testing.TB) {
	t.Helper()
	a.node.Start()
	a.cluster.WaitFormed()
}
