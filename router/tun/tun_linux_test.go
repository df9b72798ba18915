package tun

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

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
