package tun

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

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

// inNetns runs fn on a thread switched into namespace name.
func inNetns(t *testing.T, name string, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(name)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	fn()
	if err := netns.Set(orig); err != nil {
		t.Fatalf("leave netns: %v", err) // thread stays locked and dies with the goroutine
	}
	runtime.UnlockOSThread()
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
			inNetns(t, ns, func() { dev, dp, err = Open("weft-tun", 1400, nil) })
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
			inNetns(t, ns, func() {
				c, err := net.Dial("udp4", "10.40.1.9:9")
				if err == nil {
					_, err = c.Write([]byte("hello"))
					c.Close()
				}
				if err != nil {
					t.Errorf("send into tun: %v", err)
				}
			})
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
