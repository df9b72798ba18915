package plugin

import (
	"context"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/ipam"
)

// TestFakeAgentKeepsTheRealContract runs every API call the shim makes
// against the in-test fake agent and against the real agent (in-process, no
// root), and requires the same answers. The shim's unit tests use the fake;
// this keeps it from drifting from what the agent really serves, as it had
// for the container list (issue 16 item 7).
func TestFakeAgentKeepsTheRealContract(t *testing.T) {
	const mtu = 1376
	rng := netip.MustParsePrefix("10.32.0.0/24")
	gw := netip.MustParseAddr("10.32.0.1")
	fake := newFakeAgent(t, rng, "weft", mtu)
	real := newRealAgent(t, rng, gw, "weft", mtu)
	clients := map[string]*api.Client{
		"fake": api.NewClient(fake.Socket, 5*time.Second),
		"real": api.NewClient(real.Socket, 5*time.Second),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// same runs one call against both and requires equal answers (errors
	// compared by their stable code).
	same := func(what string, call func(c *api.Client) (any, error)) any {
		t.Helper()
		got := map[string]any{}
		for name, c := range clients {
			v, err := call(c)
			if err != nil {
				v = "error " + api.Code(err)
			}
			got[name] = v
		}
		if !reflect.DeepEqual(got["fake"], got["real"]) {
			t.Errorf("%s:\nfake %#v\nreal %#v", what, got["fake"], got["real"])
		}
		return got["real"]
	}
	// containers is the list without the host's own entry, which only a
	// real agent has, and without creation times.
	containers := func(c *api.Client) (any, error) {
		cs, err := c.Containers(ctx)
		out := map[string]string{}
		for _, x := range cs {
			if x.ContainerID != ipam.HostContainerID {
				out[x.ContainerID+"/"+x.IfName] = x.Address
			}
		}
		return out, err
	}

	same("network", func(c *api.Client) (any, error) { return c.Network(ctx) })
	same("status ready", func(c *api.Client) (any, error) {
		st, err := c.Status(ctx)
		return st.Ready, err
	})
	for _, id := range []string{"c1", "c1", "c2"} { // the second c1 is idempotent
		same("allocate "+id, func(c *api.Client) (any, error) {
			return c.Allocate(ctx, api.AllocateRequest{ContainerID: id, IfName: "eth0"})
		})
	}
	same("allocate without ifname", func(c *api.Client) (any, error) {
		return c.Allocate(ctx, api.AllocateRequest{ContainerID: "c3"})
	})
	list := same("containers", containers)
	if m, ok := list.(map[string]string); !ok || len(m) != 2 {
		t.Fatalf("containers: %#v, want c1 and c2", list)
	}
	for _, c := range clients {
		cs, err := c.Containers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range cs {
			if _, err := x.Addr(); err != nil {
				t.Errorf("%s: %v", c.Socket, err)
			}
		}
	}
	same("release c1", func(c *api.Client) (any, error) {
		return nil, c.Release(ctx, api.ReleaseRequest{ContainerID: "c1", IfName: "eth0"})
	})
	same("release c1 again", func(c *api.Client) (any, error) {
		return nil, c.Release(ctx, api.ReleaseRequest{ContainerID: "c1", IfName: "eth0"})
	})
	same("gc keeping nothing", func(c *api.Client) (any, error) { return c.GC(ctx, api.GCRequest{}) })
	same("containers after gc", containers)
	if t.Failed() {
		t.Logf("fake calls: %d allocate, %d release, %d gc", fake.Calls("allocate"), fake.Calls("release"), fake.Calls("gc"))
	}
}
