package tun

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/netnstest"
	"github.com/weftnet/weft/internal/roottest"
	"github.com/weftnet/weft/router/gso"
)

// newNetns creates wdp-<rand>-t and removes it when the test ends.
func newNetns(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("wdp-%06x-t", rand.Uint32()&0xffffff)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return name
}

func TestOpenKinds(t *testing.T) {
	roottest.Require(t)
	for _, tc := range []struct {
		env      string
		datapath string
		offloads bool
	}{
		{"", DatapathOffload, true},
		{"water", DatapathWater, false},
	} {
		t.Run(tc.datapath, func(t *testing.T) {
			t.Setenv(EnvDatapath, tc.env)
			ns := newNetns(t)
			var dev Device
			var dp string
			var err error
			if nerr := netnstest.Do(ns, func() error { dev, dp, err = Open("weft-tun", 1400, nil); return nil }); nerr != nil {
				t.Fatal(nerr)
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer dev.Close()
			if dp != tc.datapath || DatapathOf(dev) != tc.datapath || dev.Offloads() != tc.offloads || dev.Name() != "weft-tun" || dev.MTU() != 1400 {
				t.Fatalf("datapath %q offloads %v name %q mtu %d", dp, dev.Offloads(), dev.Name(), dev.MTU())
			}
			link, err := exec.Command("ip", "-n", ns, "-o", "link", "show", "weft-tun").CombinedOutput()
			if err != nil || !strings.Contains(string(link), "mtu 1400") || !strings.Contains(string(link), ",UP") {
				t.Fatalf("link: %v %s", err, link)
			}

			// A datagram the namespace routes into the TUN comes out of Read.
			run := func(args ...string) {
				if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
					t.Fatalf("ip %v: %v %s", args, err, out)
				}
			}
			run("addr", "add", "10.40.1.1/24", "dev", "weft-tun")
			if err := netnstest.Do(ns, func() error {
				c, err := net.Dial("udp4", "10.40.1.9:9")
				if err != nil {
					return err
				}
				defer c.Close()
				_, err = c.Write([]byte("hello"))
				return err
			}); err != nil {
				t.Errorf("send into tun: %v", err)
			}
			buf := make([]byte, 16+gso.MaxPacket)
			timer := time.AfterFunc(5*time.Second, func() { _ = dev.Close() }) // bounds the loop
			defer timer.Stop()
			for {
				p, o, err := dev.Read(buf, 16)
				if err != nil {
					t.Fatalf("Read (the datagram never came out within 5s?): %v", err)
				}
				if len(p) == 20+8+5 && p[0]>>4 == 4 && string(p[28:]) == "hello" {
					if o.GSO != gso.None || &p[0] != &buf[16] {
						t.Fatalf("read %+v at the wrong place", o)
					}
					break
				}
				// IPv6 router solicitations and the like may come first.
			}
		})
	}
}

func TestOpenRejectsBadMTU(t *testing.T) {
	if _, _, err := Open("weft-tun", 10, nil); err == nil {
		t.Fatal("Open with mtu 10 succeeded")
	}
}

// The TUN outlives its agent: closing it leaves the device and the routes
// through it (so the overlay range never falls back to another route while
// the agent restarts), and the next Open attaches to the same device. A
// switch of datapath makes the device again; Remove deletes it.
func TestPersistentReattach(t *testing.T) {
	roottest.Require(t)
	ns := newNetns(t)
	in := func(f func() error) {
		t.Helper()
		if err := netnstest.Do(ns, f); err != nil {
			t.Fatal(err)
		}
	}
	ip := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
		return string(out)
	}
	open := func(env string) (Device, int) {
		t.Helper()
		t.Setenv(EnvDatapath, env)
		var dev Device
		var index int
		in(func() error {
			var err error
			if dev, _, err = Open("weft-tun", 1400, nil); err != nil {
				return err
			}
			link, err := netlink.LinkByName("weft-tun")
			if err != nil {
				return err
			}
			index = link.Attrs().Index
			return nil
		})
		return dev, index
	}

	dev, first := open("")
	ip("route", "add", "10.40.0.0/16", "dev", "weft-tun")
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	if out := ip("-4", "route", "show", "10.40.0.0/16"); !strings.Contains(out, "dev weft-tun") {
		t.Fatalf("route through the closed TUN is gone: %q", out)
	}
	dev, again := open("")
	if again != first || !dev.Offloads() {
		t.Fatalf("re-opened TUN: index %d (was %d), offloads %v; want the same device", again, first, dev.Offloads())
	}
	if out := ip("-4", "route", "show", "10.40.0.0/16"); !strings.Contains(out, "dev weft-tun") {
		t.Fatalf("route gone after re-attaching: %q", out)
	}
	// The re-attached device carries packets.
	ip("addr", "add", "10.40.1.1/24", "dev", "weft-tun")
	in(func() error {
		c, err := net.Dial("udp4", "10.40.1.9:9")
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("again"))
		return err
	})
	buf := make([]byte, 16+gso.MaxPacket)
	timer := time.AfterFunc(5*time.Second, func() { _ = dev.Close() })
	for {
		p, _, err := dev.Read(buf, 16)
		if err != nil {
			t.Fatalf("Read on the re-attached TUN (nothing within 5s?): %v", err)
		}
		if len(p) == 33 && string(p[28:]) == "again" {
			break
		}
	}
	timer.Stop()
	_ = dev.Close()

	// Another datapath: the device is made again, without the header.
	dev, water := open("water")
	if water == first || dev.Offloads() {
		t.Fatalf("water on an offload TUN: index %d (was %d), offloads %v; want a new device", water, first, dev.Offloads())
	}
	_ = dev.Close()
	var removed bool
	in(func() error { var err error; removed, err = Remove("weft-tun"); return err })
	if !removed {
		t.Fatal("Remove found no TUN")
	}
	if out, err := exec.Command("ip", "-n", ns, "link", "show", "weft-tun").CombinedOutput(); err == nil {
		t.Fatalf("TUN still there after Remove: %s", out)
	}
	in(func() error {
		if again, err := Remove("weft-tun"); err != nil || again {
			return fmt.Errorf("second Remove: %v %v", again, err)
		}
		return nil
	})

	// A link of another kind under the name is not taken over.
	ip("link", "add", "weft-tun", "type", "bridge")
	in(func() error {
		if _, _, err := Open("weft-tun", 1400, nil); !errors.Is(err, ErrNotTUN) {
			return fmt.Errorf("Open over a bridge: %v, want ErrNotTUN", err)
		}
		if _, err := Remove("weft-tun"); !errors.Is(err, ErrNotTUN) {
			return fmt.Errorf("Remove of a bridge: %v, want ErrNotTUN", err)
		}
		return nil
	})
}
