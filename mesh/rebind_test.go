package mesh

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/weftnet/weft/mesh/meshtest"
)

// A member whose underlay address changes (the old one is gone, its sockets
// with it) moves to the new one, and its peer sees it alive there: without
// the announcer's leave the peer refuses the new address as a conflict.
func TestRebindMovesToNewAddress(t *testing.T) {
	var network meshtest.Network
	newTransport := func(a netip.AddrPort) (memberlist.NodeAwareTransport, error) { return network.Listen(a) }
	start := func(name string, addr netip.Addr) *Mesh {
		t.Helper()
		tr, err := network.Listen(netip.AddrPortFrom(addr, 6783))
		if err != nil {
			t.Fatal(err)
		}
		m, err := New(Config{
			Name: name, Bind: addr, Port: 6783,
			Meta: Meta{Protocol: ProtocolMin, DataPort: 6784, Version: "test",
				SigningKey: bytes.Repeat([]byte(name[len(name)-1:]), 32)},
			Timing: LocalTiming(), Transport: tr,
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { m.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		return m
	}
	oldAddr, newAddr := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.101")
	a := start("host1", oldAddr)
	b := start("host2", netip.MustParseAddr("198.18.0.2"))
	if err := a.Connect([]string{"198.18.0.2"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the mesh to form", 10*time.Second, func() bool { return b.IsAlive("host1") && a.IsAlive("host2") })

	began := time.Now()
	if err := a.Rebind(newAddr, newTransport); err != nil {
		t.Fatal(err)
	}
	if a.Bind() != newAddr {
		t.Fatalf("Bind() = %v after Rebind", a.Bind())
	}
	seen := func() string {
		for _, p := range b.Members() {
			if p.Name == "host1" {
				return fmt.Sprintf("%s at %s", p.State, p.Addr)
			}
		}
		return "unknown"
	}
	waitFor(t, "host2 to see host1 alive at the new address", 5*time.Second, func() bool {
		return seen() == "alive at "+newAddr.String() && a.IsAlive("host2")
	})
	t.Logf("host2 sees host1 alive at its new address %v after the rebind began", time.Since(began).Round(time.Millisecond))
}
