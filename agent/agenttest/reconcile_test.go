package agenttest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/agent"
	"github.com/weftnet/weft/agent/agenttest"
	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/hostnet"
	"github.com/weftnet/weft/plugin"
)

// freeAddr is a loopback address with a port free a moment ago, for the
// health and metrics listeners.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func get(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// noPods is a PodNetwork that must not be reached: the agent refuses first.
type noPods struct{ t *testing.T }

func (p noPods) Attach(plugin.Attachment) (plugin.Links, error) {
	p.t.Error("the shim attached a pod while the host network was broken")
	return plugin.Links{}, errors.New("noPods")
}
func (noPods) Detach(string, string, string, string) error { return nil }
func (noPods) Check(plugin.Attachment) error               { return nil }

// While the host network is broken and cannot be repaired, /readyz says
// not ready with the reason, `weft status` gives it, and CNI ADD answers
// code 11 (try again); once repaired, all is ready again. Repairs are
// counted in weft_repairs_total, on a netlink event and on the timer alone.
func TestBrokenHostNetworkIsNotReady(t *testing.T) {
	tick := make(chan time.Time)
	var healthAddr, metricsAddr string
	c := agenttest.Start(t, agenttest.Options{N: 1, IPAMInit: "seed=host1", Configure: func(_ int, cfg *agent.Config) {
		healthAddr, metricsAddr = freeAddr(t), freeAddr(t)
		cfg.HTTPAddr, cfg.MetricsAddr = healthAddr, metricsAddr
		cfg.Devices.NewTicker = func(time.Duration) (<-chan time.Time, func()) { return tick, func() {} }
	}})
	c.WaitFormed()
	n := c.Nodes[0]
	readyz := func() (int, string) {
		code, body, err := get("http://" + healthAddr + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		return code, body
	}
	if code, body := readyz(); code != http.StatusOK {
		t.Fatalf("readyz of a ready agent: %d %s", code, body)
	}

	n.HostNet.Jam(errors.New("link weft is a dummy, not a bridge"))
	c.Wait("the agent to notice the broken host network", func() error {
		st, err := n.Status()
		if err != nil {
			return err
		}
		if st.Ready || !strings.Contains(st.NotReady, "not a bridge") {
			return fmt.Errorf("status ready=%v reason %q", st.Ready, st.NotReady)
		}
		return nil
	})
	if code, body := readyz(); code != http.StatusServiceUnavailable || !strings.Contains(body, "host network broken") {
		t.Fatalf("readyz while broken: %d %q, want 503 with the reason", code, body)
	}
	sh := &plugin.Plugin{Net: noPods{t}, Agent: func(socket string) *api.Client { return api.NewClient(socket, 2*time.Second) }, Stdout: io.Discard}
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","socket":%q}`, api.SocketPath(n.Config.RunDir))
	err := sh.Add(&skel.CmdArgs{ContainerID: "c1", Netns: "/var/run/netns/none", IfName: "eth0", StdinData: []byte(conf)})
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != types.ErrTryAgainLater {
		t.Fatalf("CNI ADD while the host network is broken: %v, want code %d (try again)", err, types.ErrTryAgainLater)
	}

	n.HostNet.Jam(nil)
	c.Wait("the agent to be ready again", func() error {
		if code, body := readyz(); code != http.StatusOK {
			return fmt.Errorf("readyz %d %s", code, body)
		}
		return nil
	})

	// Repaired on the netlink event.
	n.HostNet.Break(hostnet.Fault{Part: hostnet.PartBridge, What: "bridge weft is missing"})
	waitRepairs(t, c, metricsAddr, "bridge", 1)
	// A change without an event (a sysctl) is repaired on the timer.
	n.HostNet.BreakSilently(hostnet.Fault{Part: hostnet.PartSysctl, What: "ip_forward is 0"})
	tick <- time.Now()
	waitRepairs(t, c, metricsAddr, "sysctl", 1)
	if st := n.HostNet.State(); len(st.Repairs) != 2 {
		t.Fatalf("repairs %v, want the two faults once each", st.Repairs)
	}
}

func waitRepairs(t *testing.T, c *agenttest.Cluster, metricsAddr, what string, want int) {
	t.Helper()
	line := fmt.Sprintf(`weft_repairs_total{what=%q} %d`, what, want)
	c.Wait("metric "+line, func() error {
		_, body, err := get("http://" + metricsAddr + "/metrics")
		if err != nil {
			return err
		}
		if !strings.Contains(body, line+"\n") {
			return fmt.Errorf("no %s in /metrics", line)
		}
		return nil
	})
}

// When the underlay address changes (the old one deleted, a new one on the
// same link), the agent moves its gossip and data socket there, and the
// peer sends to the new address: pods reach each other again.
func TestUnderlayAddressChange(t *testing.T) {
	c := agenttest.Start(t, agenttest.Options{N: 2, IPAMInit: "seed=host1,host2"})
	c.WaitFormed()
	addrs := pods(c, "pod")
	exchange(t, c, addrs, "before")

	moved := netip.MustParseAddr("198.18.0.101")
	began := time.Now()
	c.Nodes[0].HostNet.SetUnderlayAddrs(moved)
	c.Wait("host2 to see host1 at its new address", func() error {
		for _, p := range peersOf(t, c.Nodes[1]) {
			if p.Name == "host1" && (p.State != api.StateAlive || !strings.HasPrefix(p.Address, moved.String()+":")) {
				return fmt.Errorf("host2 sees host1 %s at %s", p.State, p.Address)
			}
		}
		st, err := c.Nodes[0].Status()
		if err != nil {
			return err
		}
		if st.Host != moved.String() {
			return fmt.Errorf("host1's status says host %s", st.Host)
		}
		return nil
	})
	t.Logf("host2 saw host1 at its new address after %v", time.Since(began).Round(time.Millisecond))
	exchange(t, c, addrs, "after")
}

func peersOf(t *testing.T, n *agenttest.Node) []api.Peer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ps, err := n.Client.Peers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}
