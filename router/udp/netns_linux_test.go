package udp

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"testing"

	"github.com/weftnet/weft/internal/netnstest"
)

// TestTrainAboveRouteMTU sends a GSO train whose datagrams exceed the route
// MTU: the kernel refuses such a train as a whole, so the Conn must fall
// back to single datagrams (which the kernel fragments) and lose nothing.
func TestTrainAboveRouteMTU(t *testing.T) {
	if os.Geteuid() != 0 {
		msg := "SKIPPING: needs root for a network namespace with a small loopback MTU"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + " (CI=true: a skip is a failure)")
		}
		t.Skip(msg)
	}
	ns := fmt.Sprintf("wdp-%06x-u", rand.Uint32()&0xffffff)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	for _, args := range [][]string{{"link", "set", "lo", "mtu", "1500"}, {"link", "set", "lo", "up"}} {
		if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	var a, b Conn
	if err := netnstest.Do(ns, func() (err error) {
		if a, err = Listen(netip.MustParseAddrPort("127.0.0.1:0"), nil); err != nil {
			return err
		}
		b, err = Listen(netip.MustParseAddrPort("127.0.0.1:0"), nil)
		if err != nil {
			a.Close()
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	parts := [][]byte{bytes.Repeat([]byte{1}, 2000), bytes.Repeat([]byte{2}, 2000), bytes.Repeat([]byte{3}, 100)}
	if err := a.WriteBatch([]Message{{Addr: b.LocalAddr(), Parts: parts}}); err != nil {
		t.Fatalf("WriteBatch: %v", err)
	}
	got, _ := received(t, b, len(parts))
	for i := range parts {
		if !bytes.Equal(got[i], parts[i]) {
			t.Fatalf("datagram %d: %d bytes, want %d", i, len(got[i]), len(parts[i]))
		}
	}

	// The same with each datagram sent as a head and a part.
	heads := [][]byte{bytes.Repeat([]byte{9}, 50), bytes.Repeat([]byte{8}, 50), bytes.Repeat([]byte{7}, 50)}
	if err := a.WriteBatch([]Message{{Addr: b.LocalAddr(), Heads: heads, Parts: parts}}); err != nil {
		t.Fatalf("WriteBatch with heads: %v", err)
	}
	got, _ = received(t, b, len(parts))
	for i := range parts {
		if want := append(bytes.Clone(heads[i]), parts[i]...); !bytes.Equal(got[i], want) {
			t.Fatalf("datagram %d with head: %d bytes, want %d", i, len(got[i]), len(want))
		}
	}
}
