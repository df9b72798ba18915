package kubecluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/netnstest"
	"github.com/weftnet/weft/test/testbed"
)

// The NetworkPolicy phase reads "denied" from Connect's errNoAnswer and a
// first-packet leak from Pinger's replies: both must tell an answer, a drop
// and a rejection apart, from inside another namespace. Two namespaces on a
// veth pair, a server in one, nftables in it dropping or rejecting.
func TestProbesTellAnswerDropAndReject(t *testing.T) {
	testbed.RequireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not installed")
	}
	id := fmt.Sprintf("wnpt-%d", os.Getpid())
	cli, srv := id+"-c", id+"-s"
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{cli, srv} {
		run("ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	run("ip", "-n", cli, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", srv)
	run("ip", "-n", cli, "addr", "add", "198.18.7.1/24", "dev", "eth0")
	run("ip", "-n", srv, "addr", "add", "198.18.7.2/24", "dev", "eth0")
	for _, ns := range []string{cli, srv} {
		run("ip", "-n", ns, "link", "set", "eth0", "up")
		run("ip", "-n", ns, "link", "set", "lo", "up")
	}
	dst := netip.MustParseAddr("198.18.7.2")
	var ln net.Listener
	if err := netnstest.Do(srv, func() error {
		var err error
		ln, err = net.Listen("tcp", "198.18.7.2:7777")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go serve(ln, "srv")

	ns, err := EnterNetns("/run/netns/" + cli)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	ctx := context.Background()
	to := netip.AddrPortFrom(dst, 7777)

	if got, err := ns.Connect(ctx, to, time.Second); err != nil || got != "srv" {
		t.Fatalf("open path: answer %q, %v; want srv", got, err)
	}
	p, err := StartPinger(ns, []netip.Addr{dst}, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, r, _ := p.Counts(dst); return r >= 3 }, "echo replies on the open path")
	p.Stop()

	// Dropped: no answer within the timeout, and no echo reply.
	run("ip", "netns", "exec", srv, "nft", "add table inet t; add chain inet t in { type filter hook input priority 0; }; add rule inet t in ip saddr 198.18.7.1 drop")
	start := time.Now()
	if _, err := ns.Connect(ctx, to, 200*time.Millisecond); !errors.Is(err, errNoAnswer) {
		t.Fatalf("dropped: %v, want errNoAnswer", err)
	}
	if took := time.Since(start); took < 200*time.Millisecond || took > 2*time.Second {
		t.Fatalf("dropped: gave up after %s, want the 200 ms timeout", took)
	}
	p, err = StartPinger(ns, []netip.Addr{dst}, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { s, _, _ := p.Counts(dst); return s >= 20 }, "20 echo requests sent")
	p.Stop()
	if s, r, _ := p.Counts(dst); r != 0 {
		t.Fatalf("dropped: %d replies to %d echo requests", r, s)
	}

	// Rejected (RST): errRejected, not errNoAnswer.
	run("ip", "netns", "exec", srv, "nft", "flush chain inet t in; add rule inet t in tcp dport 7777 reject with tcp reset")
	if _, err := ns.Connect(ctx, to, time.Second); !errors.Is(err, errRejected) || errors.Is(err, errNoAnswer) {
		t.Fatalf("rejected: %v, want errRejected", err)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5 s", what)
		}
		time.Sleep(10 * time.Millisecond) // poll the counters
	}
}
