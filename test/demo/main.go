// Command demo shows weft to a newcomer on one machine: three hosts as
// network namespaces, agents that find each other, pods attached through the
// CNI plugin pinging across hosts, the status views — then a clean teardown.
// Run it as root with `make demo`.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/test/testbed"
)

func main() {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "make demo needs root: it creates network namespaces (nothing outside them is touched)")
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "\ndemo failed:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n\033[1m==> "+format+"\033[0m\n", args...) }
func say(format string, args ...any)  { fmt.Printf("    "+format+"\n", args...) }

func run(ctx context.Context) error {
	bin, err := testbed.BuildBinaries()
	if err != nil {
		return err
	}
	binDir = bin
	dir, err := os.MkdirTemp("", "weft-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	step("Three hosts, each a network namespace on the underlay 198.18.0.0/24")
	bed, err := testbed.New(ctx, testbed.Options{Hosts: 3, Dir: dir, BinDir: bin, Prefix: "wdemo", Outside: true})
	if err != nil {
		return err
	}
	defer func() {
		step("Teardown: stopping the agents, deleting every namespace the demo made")
		bed.Close()
		say("done — nothing of the demo is left on this machine")
	}()
	for _, h := range bed.Hosts {
		say("%s  underlay %s  (namespace %s)", h.Name, h.Addr, h.Netns)
	}

	step("Launching weft: host1 alone, host2 and host3 are told only about host1")
	start := time.Now()
	for i, h := range bed.Hosts {
		var peers []string
		if i > 0 {
			peers = []string{bed.Hosts[0].Target()}
		}
		args := []string{"--ipalloc-init", "consensus=3"}
		say("on %s: weft launch %s %s", h.Name, strings.Join(args, " "), strings.Join(peers, " "))
		if err := h.Launch(args, peers...); err != nil {
			return err
		}
	}
	if err := testbed.WaitAlive(ctx, 20*time.Second, 3, bed.Hosts...); err != nil {
		return logs(bed, err)
	}
	say("all three see each other after %s", time.Since(start).Round(10*time.Millisecond))
	if err := testbed.WaitReady(ctx, 30*time.Second, bed.Hosts...); err != nil {
		return logs(bed, err)
	}
	say("the address ring is agreed by consensus and every host is ready after %s", time.Since(start).Round(10*time.Millisecond))
	weft(bed.Hosts[0], "status")

	step("Two pods per host, attached by the weft-cni plugin (driven by cnitool, as a runtime would)")
	var pods []*testbed.Pod
	for _, h := range bed.Hosts {
		for i := 1; i <= 2; i++ {
			p, err := h.AddPod(ctx, fmt.Sprintf("pod%d", i))
			if err != nil {
				return logs(bed, err)
			}
			say("%s/%s got %s", h.Name, p.Name, p.Addr)
			pods = append(pods, p)
		}
	}

	step("Pings from host1/pod1 to every other pod — across hosts, no NAT")
	src := pods[0]
	for _, dst := range pods[1:] {
		t0 := time.Now()
		if err := testbed.Ping(ctx, src.Netns, dst.Addr, 3); err != nil {
			return logs(bed, err)
		}
		say("%s/%s -> %s/%s (%s): 3 of 3 replies in %s", src.Host.Name, src.Name, dst.Host.Name, dst.Name, dst.Addr,
			time.Since(t0).Round(time.Millisecond))
	}

	step("What weft says about it, on host1")
	for _, view := range [][]string{{"status", "peers"}, {"status", "connections"}, {"status", "ipam"}, {"ps"}} {
		weft(bed.Hosts[0], view...)
	}
	return nil
}

// binDir holds the weft binaries the demo runs.
var binDir string

// weft shows one CLI command and its output as run on host h.
func weft(h *testbed.Host, args ...string) {
	fmt.Printf("\n    $ weft %s        # on %s\n", strings.Join(args, " "), h.Name)
	cmd := exec.Command(filepath.Join(binDir, "weft"), args...)
	cmd.Env = append(os.Environ(), "WEFT_RUN_DIR="+h.RunDir)
	out, err := cmd.CombinedOutput()
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		fmt.Println("    " + line)
	}
	if err != nil {
		say("(%v)", err)
	}
}

// logs adds the agents' last log lines to a failure.
func logs(bed *testbed.Bed, err error) error {
	var b strings.Builder
	for _, h := range bed.Hosts {
		lines := strings.Split(strings.TrimRight(h.Log(), "\n"), "\n")
		if len(lines) > 15 {
			lines = lines[len(lines)-15:]
		}
		fmt.Fprintf(&b, "\n--- last lines of %s's log ---\n%s\n", h.Name, strings.Join(lines, "\n"))
	}
	return fmt.Errorf("%w%s", err, b.String())
}
