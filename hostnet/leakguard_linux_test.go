package hostnet

import (
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/roottest"
)

// packetsTo counts, in namespace name, the packets for dst that arrived
// there (a counter rule in a table of the test's own).
func packetsTo(t *testing.T, name, dst string) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", name, "nft", "list", "chain", "ip", "leakprobe", "in").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list: %v: %s", err, out)
	}
	m := regexp.MustCompile(`ip daddr ` + regexp.QuoteMeta(dst) + ` counter packets (\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no counter for %s in %s", dst, out)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// With every route for the overlay range flushed (the TUN route and the
// fail-closed route both), a pod's packet for a pod on another host would
// follow the default route out of the underlay in the clear. The leak
// guard drops it; with the guard removed the same packet arrives on the
// underlay, which shows the test can fail.
func TestLeakGuardWhenRoutesAreFlushed(t *testing.T) {
	roottest.Require(t)
	hostName, hostNS := newNetns(t, "")
	podName, _ := newNetns(t, "-pod")
	gwName, _ := newNetns(t, "-gw")
	cfg := testConfig()
	in(t, hostNS, func() (err error) {
		h, err := Setup(cfg)
		if err != nil {
			return err
		}
		return h.SyncLocalRanges([]netip.Prefix{netip.MustParsePrefix("10.32.0.0/24")})
	})
	wirePodAndUnderlay(t, hostName, podName, gwName)
	run(t, "ip", "-n", hostName, "route", "add", "default", "via", "198.18.0.2", "dev", "ul0")
	run(t, "ip", "netns", "exec", hostName, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	run(t, "ip", "netns", "exec", gwName, "nft", "add table ip leakprobe; add chain ip leakprobe in { type filter hook prerouting priority 0 ; } ; add rule ip leakprobe in ip daddr 10.33.0.5 counter")

	// The routes an operator or a script might flush: all of the range's.
	run(t, "ip", "-n", hostName, "route", "flush", "root", "10.32.0.0/12")
	ping := func() {
		_ = exec.Command("ip", "netns", "exec", podName, "ping", "-c", "3", "-i", "0.2", "-W", "1", "10.33.0.5").Run()
	}
	ping()
	if n := packetsTo(t, gwName, "10.33.0.5"); n != 0 {
		t.Fatalf("%d packets for a remote pod left by the underlay with the routes flushed", n)
	}
	// Without the guard the same packets do leave: the check above can fail.
	run(t, "ip", "netns", "exec", hostName, "nft", "delete", "chain", "ip", NftTable, nftChainFailClosed)
	deadline := time.Now().Add(5 * time.Second)
	for packetsTo(t, gwName, "10.33.0.5") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("without the guard no packet reached the underlay either: the test proves nothing")
		}
		ping()
	}
}

// The guard lets overlay traffic leave by the bridge, the TUN, loopback
// and every tunnel, and matches the overlay range only.
func TestLeakGuardExprsAllowedLinks(t *testing.T) {
	cfg := testConfig()
	cfg.Tunnels = []string{"weft-vx"}
	got := leakGuardOutputs(cfg)
	want := []string{"weft", "weft-tun", "lo", "weft-vx"}
	if len(got) != len(want) {
		t.Fatalf("outputs %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("outputs %v, want %v", got, want)
		}
	}
	if n := len(leakGuardExprs(cfg)); n != 4+len(want)+2 {
		t.Fatalf("rule has %d expressions, want %d", n, 4+len(want)+2)
	}
}
