package agenttest_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"testing"

	"github.com/weftnet/weft/agent"
	"github.com/weftnet/weft/agent/agenttest"
	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/router/tun"
	"github.com/weftnet/weft/router/udp"
)

// pods attaches one pod on each host and returns their addresses.
func pods(c *agenttest.Cluster, prefix string) []netip.Addr {
	var out []netip.Addr
	for _, n := range c.Nodes {
		out = append(out, n.AttachPod(prefix+"-"+n.Name))
	}
	return out
}

// exchange sends a packet from the pod on every host to the pod on every
// other host and checks that each comes out of the right TUN unchanged.
func exchange(t *testing.T, c *agenttest.Cluster, addrs []netip.Addr, tag string) {
	t.Helper()
	for i, from := range c.Nodes {
		for j, to := range c.Nodes {
			if i == j {
				continue
			}
			pkt := agenttest.IPv4UDP(addrs[i], addrs[j], 4000, 5000, fmt.Appendf(nil, "%s %s->%s", tag, from.Name, to.Name))
			from.TUN().Inject(pkt)
			to.ExpectPacket(pkt)
		}
	}
}

func ringOf(c *agenttest.Cluster, n *agenttest.Node) (map[string]uint64, error) {
	st, err := n.IPAM()
	if err != nil {
		return nil, err
	}
	ring := map[string]uint64{}
	for _, e := range st.Entries {
		ring[e.Name] = e.Owned
	}
	return ring, nil
}

// sameRing waits until every running agent reports the same owners with
// the same amounts of the range, covering it whole.
func sameRing(c *agenttest.Cluster, want int) func() error {
	return func() error {
		var first map[string]uint64
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			ring, err := ringOf(c, n)
			if err != nil {
				return err
			}
			var total uint64
			for _, owned := range ring {
				total += owned
			}
			size := uint64(1) << (32 - n.Config.Range.Bits())
			if total != size || len(ring) != want {
				return fmt.Errorf("%s: ring of %d owners covers %d of %d addresses", n.Name, len(ring), total, size)
			}
			if first == nil {
				first = ring
				continue
			}
			for name, owned := range first {
				if ring[name] != owned {
					return fmt.Errorf("%s sees %s owning %d, %s sees %d", n.Name, name, ring[name], c.Nodes[0].Name, owned)
				}
			}
		}
		return nil
	}
}

func TestFiveAgentsFormAndForward(t *testing.T) {
	c := agenttest.Start(t, agenttest.Options{N: 5})
	c.WaitFormed()
	c.Wait("one ring everywhere", sameRing(c, 5))
	for _, n := range c.Nodes {
		hs := n.HostNet.State()
		if hs.Setups == 0 || !hs.OverlayRouted || len(hs.Local) == 0 {
			t.Fatalf("%s: host network not set up: %+v", n.Name, hs)
		}
		if hs.Config.HostAddr != n.Agent().HostAddr() || hs.Config.Bridge != agent.DefaultBridge {
			t.Fatalf("%s: host network set up with %+v, agent's address %s", n.Name, hs.Config, n.Agent().HostAddr())
		}
	}
	exchange(t, c, pods(c, "pod"), "hello")
}

// An agent stopped and started again from its state directory owns the
// same ranges, keeps its pods' addresses and carries traffic again.
func TestAgentRestartKeepsItsRanges(t *testing.T) {
	c := agenttest.Start(t, agenttest.Options{N: 5})
	c.WaitFormed()
	addrs := pods(c, "pod")
	n := c.Nodes[2]
	before := n.HostNet.State()

	if err := n.Stop(); err != nil {
		t.Fatalf("Run of the stopped agent: %v", err)
	}
	c.Wait("the others to see host3 gone", func() error {
		for _, o := range c.Nodes {
			if o == n {
				continue
			}
			st, err := o.Status()
			if err != nil {
				return err
			}
			if st.Alive != 4 {
				return fmt.Errorf("%s sees %d alive", o.Name, st.Alive)
			}
		}
		return nil
	})

	n.Start()
	c.WaitFormed()
	c.Wait("host3 to route its ranges again", func() error {
		if st := n.HostNet.State(); st.Setups <= before.Setups || st.LocalSyncs <= before.LocalSyncs {
			return fmt.Errorf("host network set up %d times, ranges synced %d times", st.Setups, st.LocalSyncs)
		}
		return nil
	})
	after := n.HostNet.State()
	if !slices.Equal(after.Local, before.Local) {
		t.Fatalf("ranges before the restart %v, after %v", before.Local, after.Local)
	}
	if after.Config.HostAddr != before.Config.HostAddr {
		t.Fatalf("host address before the restart %s, after %s", before.Config.HostAddr, after.Config.HostAddr)
	}
	if again := n.AttachPod("pod-" + n.Name); again != addrs[2] {
		t.Fatalf("the pod had %s before the restart, %s after", addrs[2], again)
	}
	c.Wait("one ring everywhere", sameRing(c, 5))
	exchange(t, c, addrs, "after restart")
}

// A partition into 2 and 3 hosts: each side sees only itself, and after
// the heal membership, ring and traffic are whole again.
func TestPartitionHeals(t *testing.T) {
	c := agenttest.Start(t, agenttest.Options{N: 5})
	c.WaitFormed()
	addrs := pods(c, "pod")
	small, large := []int{0, 1}, []int{2, 3, 4}
	c.Partition(small, large)
	c.Wait("each side to see only itself", func() error {
		for _, side := range [][]int{small, large} {
			for _, i := range side {
				st, err := c.Nodes[i].Status()
				if err != nil {
					return err
				}
				if st.Alive != len(side) {
					return fmt.Errorf("%s sees %d alive, want %d", c.Nodes[i].Name, st.Alive, len(side))
				}
			}
		}
		return nil
	})
	// Each side keeps allocating from its own ranges meanwhile.
	for _, i := range []int{0, 4} {
		c.Nodes[i].AttachPod("during-partition")
	}
	c.Heal()
	c.WaitFormed()
	c.Wait("one ring everywhere", sameRing(c, 5))
	exchange(t, c, addrs, "after heal")
}

// With NoDataplane an agent gossips and runs IPAM but opens no device and
// touches no host network.
func TestNoDataplane(t *testing.T) {
	c := agenttest.New(t, agenttest.Options{N: 3, NoDataplane: true})
	for _, n := range c.Nodes {
		name := n.Name
		n.Config.Devices.OpenTUN = func(string, int, *slog.Logger) (tun.Device, string, error) {
			t.Errorf("%s opened a TUN", name)
			return nil, "", errors.New("no TUN here")
		}
		n.Config.Devices.ListenUDP = func(netip.AddrPort, *slog.Logger) (udp.Conn, error) {
			t.Errorf("%s opened a data socket", name)
			return nil, errors.New("no UDP here")
		}
		n.Start()
	}
	c.WaitFormed()
	c.Wait("one ring everywhere", sameRing(c, 3))
	for _, n := range c.Nodes {
		// No bridge for a pod to attach to: the shim is told to try later.
		_, err := n.Client.Allocate(context.Background(), api.AllocateRequest{ContainerID: "pod", IfName: "eth0"})
		if api.Code(err) != api.CodeNotReady {
			t.Fatalf("%s: a pod attach answered %v, want %s", n.Name, err, api.CodeNotReady)
		}
		if hs := n.HostNet.State(); hs.Setups != 0 || hs.LocalSyncs != 0 {
			t.Fatalf("%s touched the host network: %+v", n.Name, hs)
		}
		st, err := n.Status()
		if err != nil {
			t.Fatal(err)
		}
		if st.Datapath != "" || st.Connected != 0 {
			t.Fatalf("%s reports a data plane: %+v", n.Name, st)
		}
	}
}

// Gossip and data encrypted with a password: the handshake runs over the
// fake UDP network.
func TestEncryptedForwarding(t *testing.T) {
	c := agenttest.Start(t, agenttest.Options{N: 2, Password: []byte("test password")})
	c.WaitFormed()
	exchange(t, c, pods(c, "pod"), "secret")
	st, err := c.Nodes[0].Status()
	if err != nil {
		t.Fatal(err)
	}
	if !st.Encryption || st.Connected != 1 {
		t.Fatalf("status %+v: want encryption and 1 session", st)
	}
}

// A data plane that cannot start stops the agent with the error, and every
// goroutine it had started ends (CheckGoroutines in New).
func TestRunFailureLeavesNothingRunning(t *testing.T) {
	c := agenttest.New(t, agenttest.Options{N: 1})
	n := c.Nodes[0]
	n.Config.Devices.OpenTUN = func(string, int, *slog.Logger) (tun.Device, string, error) {
		return nil, "", errors.New("no TUN in this test")
	}
	a, err := agent.New(n.Config, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background()) }()
	c.Wait("Run to fail", func() error {
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("Run returned nil")
			}
			return nil
		default:
			return errors.New("still running")
		}
	})
	// The socket is gone with the agent.
	if _, err := n.Status(); err == nil {
		t.Fatalf("the local API still answers after Run returned: %v", err)
	}
}
