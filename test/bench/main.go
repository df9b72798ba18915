// Command bench prints weft's benchmark tables in one run, each figure beside
// its baseline measured in the same run, because the machine is shared and
// noisy and only ratios taken together mean something:
//
//   - throughput (one TCP stream, iperf3) and latency (ping RTT) pod to pod
//     across two simulated hosts, plaintext and encrypted, beside the bare
//     underlay between the same two hosts;
//   - CNI ADD and DEL latency of weft-cni beside the reference bridge plugin
//     with host-local IPAM;
//   - time for 3, 10 and 30 agents to form one mesh;
//   - NetworkPolicy on a three-node Kubernetes cluster: update latency with
//     200 policies and 1,000 pod addresses, throughput with and without
//     (policy.go; skipped when the cluster's binaries are missing).
//
// Run it as root with `make bench`.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/test/cnitest"
	"github.com/weftnet/weft/test/testbed"
)

var (
	seconds = flag.Int("t", 5, "seconds per iperf3 run")
	runs    = flag.Int("runs", 3, "iperf3 runs per datapath (the median is shown)")
	procs   = flag.Int("gomaxprocs", 1, "GOMAXPROCS of each agent: each of the two simulated hosts has about one core of this machine (0: Go's default, every core)")
	cycles  = flag.Int("cni-cycles", 50, "CNI ADD/DEL cycles per plugin")
	only    = flag.String("only", "", "run only: throughput, cni, ipam, mesh or policy")
	rows    = flag.String("rows", "", "throughput: only the rows whose name contains one of these comma-separated words (the bare underlay is always measured), e.g. fast,VXLAN")
	brNF    = flag.String("bridge-nf", "", "throughput: set net.bridge.bridge-nf-call-iptables to 0 or 1 in both hosts first (empty: leave the kernel's default, 1 once br_netfilter is loaded)")
)

// wantRow reports whether -rows selects the throughput row name.
func wantRow(name string) bool {
	if *rows == "" {
		return true
	}
	for _, w := range strings.Split(*rows, ",") {
		if w = strings.TrimSpace(w); w != "" && strings.Contains(name, w) {
			return true
		}
	}
	return false
}

func main() {
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "make bench needs root: it creates network namespaces")
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bin, err := testbed.BuildBinaries()
	if err != nil {
		fail(err)
	}
	for _, b := range []struct {
		name string
		run  func(context.Context, string) error
	}{{"throughput", throughput}, {"cni", cniLatency}, {"ipam", ipamLatency}, {"mesh", meshConvergence}, {"policy", policyBench}} {
		if *only != "" && *only != b.name {
			continue
		}
		if err := b.run(ctx, bin); err != nil {
			fail(fmt.Errorf("%s: %w", b.name, err))
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

// result of one datapath.
type result struct {
	name  string
	mtu   int
	gbps  float64 // one stream
	gbps4 float64 // four streams
	lat   latency
	// paired: ratios to the bare underlay of the same bed, measured in
	// turn with the row's own runs (the kernel rows only).
	paired *pairedRatios
}

// pairedRatios are medians of per-run ratios row/bare, each run measuring
// the bare underlay right before the row: on a shared, noisy machine that
// cancels most of the drift between rows measured minutes apart. rtt is the
// ratio of the busy medians, rttIdle of the idle ones (see latency.go).
type pairedRatios struct{ gbps, gbps4, rtt, rttIdle float64 }

func throughput(ctx context.Context, bin string) error {
	fmt.Printf("\nThroughput and latency, one TCP stream, iperf3 %d s × %d runs (median), two simulated hosts sharing this machine's %d CPUs\n", *seconds, *runs, runtime.NumCPU())
	var agentEnv []string
	if *procs > 0 {
		// Two agents with a P per core each would contend for the same
		// cores; one core's share per simulated host is the fair model.
		agentEnv = []string{fmt.Sprintf("GOMAXPROCS=%d", *procs)}
		fmt.Printf("agents run with GOMAXPROCS=%d (one core's share per simulated host; -gomaxprocs 0 for Go's default)\n", *procs)
	}
	if *brNF != "" {
		fmt.Printf("net.bridge.bridge-nf-call-iptables=%s in both hosts\n", *brNF)
	}
	fmt.Printf("load average at the start: %s\n", loadAvg())
	defer func() { fmt.Printf("load average at the end: %s\n", loadAvg()) }()
	fmt.Println()
	var rs []result

	for _, c := range []struct {
		name      string
		extra     []string
		env       []string
		bare      bool
		goDefault bool // the comparison row with Go's default GOMAXPROCS
	}{
		{"bare underlay (veth + bridge)", nil, nil, true, false},
		{handVXLAN, nil, nil, false, false},
		{handVXLANMasq, nil, nil, false, false},
		{"weft plaintext, kernel fast path", nil, agentEnv, false, false},
		{"weft plaintext, userspace", []string{"--datapath", "userspace"}, agentEnv, false, false},
		{"weft encrypted", []string{"--password", "bench passphrase"}, agentEnv, false, false},
		{"weft plaintext, water TUN only", nil, append([]string{"WEFT_DATAPATH=water"}, agentEnv...), false, false},
		{fmt.Sprintf("weft plaintext, userspace, Go default GOMAXPROCS=%d", runtime.NumCPU()), []string{"--datapath", "userspace"}, nil, false, true},
	} {
		if c.goDefault && *procs == 0 {
			continue // the plaintext row is that already
		}
		if !c.bare && !wantRow(c.name) {
			continue
		}
		r, err := measureBed(ctx, bin, c.name, c.extra, c.env, c.bare)
		if err != nil {
			return err
		}
		rs = append(rs, r)
	}
	bare := rs[0]
	fmt.Printf("%-62s %5s %9s %7s %9s %7s %9s %7s %9s\n", "datapath", "MTU", "1 stream", "× bare", "4 streams", "× bare",
		"RTT p50", "min", "idle p50")
	for _, r := range rs {
		fmt.Printf("%-62s %5d %9.2f %7.2f %9.2f %7.2f %9.3f %7.3f %9.3f\n", r.name, r.mtu, r.gbps, r.gbps/bare.gbps,
			r.gbps4, r.gbps4/bare.gbps4, ms(r.lat.busy.p50), ms(r.lat.busy.min), ms(r.lat.idle.p50))
	}
	fmt.Printf("(Gbit/s; × bare is the ratio to the bare underlay measured in this run; RTT in ms: median and minimum of %d pings\n"+
		"1 ms apart, the path's own cost; idle: median of %d pings 20 ms apart, the path crossed cold)\n", *pingBusy, *pingIdle)
	fmt.Printf("\nKernel paths against the bare underlay of the same bed, measured in turn (median of %d per-run ratios)\n", *runs)
	fmt.Printf("%-62s %9s %9s %8s %9s\n", "datapath", "1 stream", "4 streams", "RTT", "idle RTT")
	for _, r := range rs {
		if r.paired != nil {
			fmt.Printf("%-62s %8.2f× %8.2f× %7.2f× %8.2f×\n", r.name, r.paired.gbps, r.paired.gbps4, r.paired.rtt, r.paired.rttIdle)
		}
	}
	return nil
}

// measureBed brings up two hosts; with bare it measures host to host on the
// underlay, else pod to pod through weft launched with extra.
func measureBed(ctx context.Context, bin, name string, extra, env []string, bare bool) (result, error) {
	dir, err := os.MkdirTemp("", "weft-bench-")
	if err != nil {
		return result{}, err
	}
	defer os.RemoveAll(dir)
	bed, err := testbed.New(ctx, testbed.Options{Hosts: 2, Dir: dir, BinDir: bin, Prefix: "wbn"})
	if err != nil {
		return result{}, err
	}
	defer bed.Close()
	h1, h2 := bed.Hosts[0], bed.Hosts[1]
	if *brNF != "" {
		// Bridged frames through netfilter or not: what the NetworkPolicy
		// engine turns on (policy.ensureBridgeNF), measured both ways.
		for _, h := range []*testbed.Host{h1, h2} {
			if _, err := testbed.Exec(ctx, h.Netns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables="+*brNF); err != nil {
				return result{}, fmt.Errorf("-bridge-nf %s: %w", *brNF, err)
			}
		}
	}
	srcNS, dstNS, dst := h1.Netns, h2.Netns, h2.Addr
	mtu := 1500
	if name == handVXLAN || name == handVXLANMasq {
		if srcNS, dstNS, dst, err = flannelByHand(ctx, bed, name == handVXLANMasq); err != nil {
			return result{}, err
		}
		mtu = 1450
	} else if !bare {
		args := append([]string{"--ipalloc-init", "consensus=2"}, extra...)
		h1.Env, h2.Env = env, env
		if err := h1.Launch(args); err != nil {
			return result{}, err
		}
		if err := h2.Launch(args, h1.Target()); err != nil {
			return result{}, err
		}
		if err := testbed.WaitReady(ctx, 30*time.Second, h1, h2); err != nil {
			return result{}, err
		}
		p1, err := h1.AddPod(ctx, "p1")
		if err != nil {
			return result{}, err
		}
		p2, err := h2.AddPod(ctx, "p1")
		if err != nil {
			return result{}, err
		}
		srcNS, dstNS, dst = p1.Netns, p2.Netns, p2.Addr
		st, err := h1.Client().Status(ctx)
		if err != nil {
			return result{}, err
		}
		mtu = st.MTU
		dp := st.Datapath
		if fast, err := waitFastPath(ctx, h1, h2.Name); err != nil {
			return result{}, err
		} else if fast {
			dp = "fastdp: VXLAN"
		}
		name += " [" + dp + "]"
	}
	// Warm up: first packets wait for ARP and, encrypted, a handshake.
	if err := testbed.Eventually(ctx, 10*time.Second, func() error { return testbed.Ping(ctx, srcNS, dst, 1) }); err != nil {
		return result{}, err
	}
	if !bare {
		if cs, err := h1.Client().Connections(ctx); err == nil && len(cs) > 0 && cs[0].Cipher != "" {
			name = strings.TrimSuffix(name, "]") + ", " + cs[0].Cipher + "]"
		}
	}
	median := func(streams int) (float64, error) {
		var gbps []float64
		for i := 0; i < *runs; i++ {
			g, err := iperf(ctx, srcNS, dstNS, dst, streams)
			if err != nil {
				return 0, err
			}
			gbps = append(gbps, g)
		}
		sort.Float64s(gbps)
		return gbps[len(gbps)/2], nil
	}
	r := result{name: name, mtu: mtu}
	if name == handVXLAN || name == handVXLANMasq || strings.Contains(name, "fastdp") {
		if r.paired, err = paired(ctx, h1.Netns, h2.Netns, h2.Addr, srcNS, dstNS, dst); err != nil {
			return r, err
		}
	}
	if r.gbps, err = median(1); err != nil {
		return r, err
	}
	if r.gbps4, err = median(4); err != nil {
		return r, err
	}
	r.lat, err = measureLatency(ctx, srcNS, dst)
	return r, err
}

// cniLatency times ADD and DEL of weft-cni against a real agent beside the
// reference bridge plugin with host-local IPAM, interleaved in one host.
func cniLatency(ctx context.Context, bin string) error {
	ref := "/usr/lib/cni"
	if _, err := os.Stat(filepath.Join(ref, "bridge")); err != nil {
		return fmt.Errorf("reference plugins not found in %s (apt-get install -y containernetworking-plugins)", ref)
	}
	dir, err := os.MkdirTemp("", "weft-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bed, err := testbed.New(ctx, testbed.Options{Hosts: 1, Dir: dir, BinDir: bin, Prefix: "wbn"})
	if err != nil {
		return err
	}
	defer bed.Close()
	h := bed.Hosts[0]
	if err := h.Launch([]string{"--ipalloc-init", "consensus=1"}); err != nil {
		return err
	}
	if err := testbed.WaitReady(ctx, 30*time.Second, h); err != nil {
		return err
	}
	// One pod made through the test bed writes the weft conflist; its
	// namespace then serves as the netns the cycles attach and detach.
	pod, err := h.AddPod(ctx, "bench")
	if err != nil {
		return err
	}
	if err := pod.Delete(ctx); err != nil {
		return err
	}
	weftPod, refPod := h.Netns+"-cw", h.Netns+"-cr"
	for _, ns := range []string{weftPod, refPod} {
		if err := bed.AddNetns(ctx, ns); err != nil {
			return err
		}
	}
	refConf := filepath.Join(dir, "ref.d")
	if err := cnitest.WriteConflist(refConf, "ref", "1.0.0", map[string]any{
		"type": "bridge", "bridge": "cnibr0", "isGateway": true,
		"ipam": map[string]any{"type": "host-local", "dataDir": filepath.Join(dir, "host-local"),
			"ranges": [][]map[string]string{{{"subnet": "10.99.0.0/24"}}}},
	}); err != nil {
		return err
	}
	hostNS := "/var/run/netns/" + h.Netns
	ls, err := cnitest.BenchCompare(ctx, *cycles, []cnitest.Bench{
		{Runtime: cnitest.Runtime{CNIPath: bin, NetconfDir: filepath.Join(h.Dir, "net.d"), HostNetns: hostNS},
			Network: testbed.NetworkName, Netns: "/var/run/netns/" + weftPod},
		{Runtime: cnitest.Runtime{CNIPath: ref, NetconfDir: refConf, HostNetns: hostNS},
			Network: "ref", Netns: "/var/run/netns/" + refPod},
	})
	if err != nil {
		return err
	}
	ls[0].Network, ls[1].Network = "weft-cni (real agent)", "bridge + host-local"
	fmt.Printf("\nCNI ADD/DEL latency, %d interleaved cycles each, plugin exec to exit\n\n", *cycles)
	for _, l := range ls {
		fmt.Println(l.String())
	}
	return nil
}

// meshConvergence times how long n fresh agents, each given only the first,
// take until every one sees all n alive.
func meshConvergence(ctx context.Context, bin string) error {
	fmt.Printf("\nMesh formation: n agents launched at once, each given only host1\n\n%-8s %12s\n", "agents", "converged")
	for _, n := range []int{3, 10, 30} {
		d, err := converge(ctx, bin, n)
		if err != nil {
			return err
		}
		fmt.Printf("%-8d %12s\n", n, d.Round(10*time.Millisecond))
	}
	return nil
}

func converge(ctx context.Context, bin string, n int) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "weft-bench-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	bed, err := testbed.New(ctx, testbed.Options{Hosts: n, Dir: dir, BinDir: bin, Prefix: "wbn"})
	if err != nil {
		return 0, err
	}
	defer bed.Close()
	start := time.Now()
	for i, h := range bed.Hosts {
		var peers []string
		if i > 0 {
			peers = []string{bed.Hosts[0].Target()}
		}
		if err := h.Launch([]string{"--ipalloc-init", "observer"}, peers...); err != nil {
			return 0, err
		}
	}
	if err := testbed.WaitAlive(ctx, 60*time.Second, n, bed.Hosts...); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// ipamLatency times allocations through the agent's API: on a host that owns
// free space, and on one that must first ask its peer for a donation. The
// range is small so that donations recur (each gives half the donor's free
// space).
func ipamLatency(ctx context.Context, bin string) error {
	dir, err := os.MkdirTemp("", "weft-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bed, err := testbed.New(ctx, testbed.Options{Hosts: 2, Dir: dir, BinDir: bin, Prefix: "wbn"})
	if err != nil {
		return err
	}
	defer bed.Close()
	h1, h2 := bed.Hosts[0], bed.Hosts[1]
	args := []string{"--ipalloc-init", "seed=host1", "--ipalloc-range", "10.50.0.0/24"}
	if err := h1.Launch(args); err != nil {
		return err
	}
	if err := h2.Launch(args, h1.Target()); err != nil {
		return err
	}
	if err := testbed.WaitReady(ctx, 30*time.Second, h1, h2); err != nil {
		return err
	}
	owned := func(h *testbed.Host) uint64 {
		st, err := h.Client().IPAM(ctx)
		if err != nil {
			return 0
		}
		for _, e := range st.Entries {
			if e.Local {
				return e.Owned
			}
		}
		return 0
	}
	// host2 allocates until the range is exhausted: most allocations come
	// from space it holds, and each time that runs out it waits for host1
	// to donate half of what is left.
	var local, donated []time.Duration
	for i := 0; i < 300; i++ {
		before := owned(h2)
		t0 := time.Now()
		_, err := h2.Client().Allocate(ctx, api.AllocateRequest{ContainerID: fmt.Sprintf("bench-%d", i), IfName: "eth0"})
		d := time.Since(t0)
		if api.Code(err) == api.CodeExhausted {
			break
		}
		if err != nil {
			return fmt.Errorf("allocation %d: %w", i, err)
		}
		if owned(h2) != before {
			donated = append(donated, d)
		} else {
			local = append(local, d)
		}
	}
	fmt.Printf("\nIPAM allocation latency through the local API (range /24 seeded to host1; host2 allocates until it is exhausted)\n\n")
	fmt.Printf("%-26s %5s %10s %10s\n", "allocation", "n", "p50 ms", "p99 ms")
	for _, row := range []struct {
		name string
		d    []time.Duration
	}{{"from own free space", local}, {"waiting for a donation", donated}} {
		p50, p99 := pct(row.d, 0.5), pct(row.d, 0.99)
		fmt.Printf("%-26s %5d %10.2f %10.2f\n", row.name, len(row.d), ms(p50), ms(p99))
	}
	return nil
}

func pct(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// loadAvg is the machine's 1, 5 and 15 minute load averages: the
// measurements of a shared machine mean little without them.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// handVXLAN names the row of kernel VXLAN configured by hand, as flannel's
// vxlan backend has it, pod to pod: the gap between it and weft's fast path
// is what weft's own setup costs.
const handVXLAN = "kernel VXLAN by hand (flannel layout, pod to pod)"

// handVXLANMasq is the same with the nftables equivalent of flannel's
// --ip-masq rules (on in flannel's own manifests), which turns on connection
// tracking for every packet of the host, as weft's masquerade does: the
// difference between the two hand-made rows is what conntrack costs, and
// the one between this row and weft's fast path what weft's host filter
// and leak guard cost.
const handVXLANMasq = "kernel VXLAN by hand + flannel's masquerade (conntrack)"

// flannelMasq is flannel's --ip-masq in nftables (flannel writes the same
// with iptables): pod traffic within the cluster range is left alone,
// traffic leaving it is masqueraded, and the forward chain accepts the
// cluster range both ways.
const flannelMasq = `table ip flannel {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.250.0.0/16 ip daddr 10.250.0.0/16 return
		ip saddr 10.250.0.0/16 ip daddr != 224.0.0.0/4 masquerade
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip saddr 10.250.0.0/16 accept
		ip daddr 10.250.0.0/16 accept
	}
}
`

// flannelByHand wires the two hosts as flannel does, with iproute2: on each
// host a bridge cni0 (10.250.i.1/24) with one pod (10.250.i.2) on a veth, a
// VXLAN device flannel.1 (VNI 1, port 8472, 10.250.i.0/32, no learning), and
// towards the other host a route "10.250.j.0/24 via 10.250.j.0 dev
// flannel.1 onlink" with a permanent neighbour and FDB entry; with masq
// also flannel's masquerade (flannelMasq). It returns the two pods'
// namespaces and the second pod's address.
func flannelByHand(ctx context.Context, bed *testbed.Bed, masq bool) (string, string, netip.Addr, error) {
	mac := func(i int) string { return fmt.Sprintf("02:fa:00:00:00:%02x", i) }
	var podNS [2]string
	for i, h := range bed.Hosts[:2] {
		n, other := i+1, 2-i
		podNS[i] = h.Netns + "-pod"
		if err := bed.AddNetns(ctx, podNS[i]); err != nil {
			return "", "", netip.Addr{}, err
		}
		ns, pod := h.Netns, podNS[i]
		for _, args := range [][]string{
			{"ip", "-n", ns, "link", "add", "cni0", "mtu", "1450", "type", "bridge"},
			{"ip", "-n", ns, "addr", "add", fmt.Sprintf("10.250.%d.1/24", n), "dev", "cni0"},
			{"ip", "-n", ns, "link", "set", "cni0", "up"},
			{"ip", "-n", ns, "link", "add", "vethpod", "mtu", "1450", "type", "veth", "peer", "name", "eth0", "mtu", "1450", "netns", pod},
			{"ip", "-n", ns, "link", "set", "vethpod", "master", "cni0", "up"},
			{"ip", "-n", pod, "addr", "add", fmt.Sprintf("10.250.%d.2/24", n), "dev", "eth0"},
			{"ip", "-n", pod, "link", "set", "eth0", "up"},
			{"ip", "-n", pod, "link", "set", "lo", "up"},
			{"ip", "-n", pod, "route", "add", "default", "via", fmt.Sprintf("10.250.%d.1", n)},
			{"ip", "-n", ns, "link", "add", "flannel.1", "address", mac(n), "mtu", "1450", "type", "vxlan", "id", "1",
				"dstport", "8472", "local", h.Addr.String(), "nolearning"},
			{"ip", "-n", ns, "addr", "add", fmt.Sprintf("10.250.%d.0/32", n), "dev", "flannel.1"},
			{"ip", "-n", ns, "link", "set", "flannel.1", "up"},
			{"ip", "-n", ns, "route", "add", fmt.Sprintf("10.250.%d.0/24", other), "via", fmt.Sprintf("10.250.%d.0", other),
				"dev", "flannel.1", "onlink"},
			{"ip", "-n", ns, "neigh", "add", fmt.Sprintf("10.250.%d.0", other), "lladdr", mac(other), "dev", "flannel.1", "nud", "permanent"},
			{"bridge", "-n", ns, "fdb", "append", mac(other), "dev", "flannel.1", "dst", bed.Hosts[other-1].Addr.String(), "self", "permanent"},
			{"ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		} {
			if out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput(); err != nil {
				return "", "", netip.Addr{}, fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
			}
		}
		if masq {
			nft := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "nft", "-f", "-")
			nft.Stdin = strings.NewReader(flannelMasq)
			if out, err := nft.CombinedOutput(); err != nil {
				return "", "", netip.Addr{}, fmt.Errorf("flannel's masquerade in %s: %w: %s", ns, err, out)
			}
		}
	}
	return podNS[0], podNS[1], netip.MustParseAddr("10.250.2.2"), nil
}

// waitFastPath waits until h sees the pair with peer on the kernel fast
// path, for up to 10 s; false at once when the pair is in userspace by
// choice (--datapath userspace, a password).
func waitFastPath(ctx context.Context, h *testbed.Host, peer string) (bool, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		cs, err := h.Client().Connections(ctx)
		if err != nil {
			return false, err
		}
		why := "no connection yet"
		for _, c := range cs {
			if c.Peer != peer {
				continue
			}
			if c.Datapath == "fastdp" {
				return true, nil
			}
			if strings.Contains(c.DatapathReason, "--datapath") || strings.Contains(c.DatapathReason, "encrypted") {
				return false, nil
			}
			why = c.DatapathReason
		}
		if time.Now().After(deadline) {
			return false, fmt.Errorf("%s: %s not on the fast path within 10 s: %s", h.Name, peer, why)
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(100 * time.Millisecond): // poll the agent's decision
		}
	}
}

// paired measures the row (pod to pod: srcNS to dst in dstNS) and the bare
// underlay of the same two hosts (underlay addresses) alternately, and
// returns the medians of the per-run ratios.
func paired(ctx context.Context, bareSrc, bareDst string, bareAddr netip.Addr, srcNS, dstNS string, dst netip.Addr) (*pairedRatios, error) {
	var one, four, rtt, idle []float64
	for i := 0; i < *runs; i++ {
		for _, m := range []struct {
			streams int
			out     *[]float64
		}{{1, &one}, {4, &four}} {
			b, err := iperf(ctx, bareSrc, bareDst, bareAddr, m.streams)
			if err != nil {
				return nil, err
			}
			g, err := iperf(ctx, srcNS, dstNS, dst, m.streams)
			if err != nil {
				return nil, err
			}
			*m.out = append(*m.out, g/b)
		}
		b, err := measureLatency(ctx, bareSrc, bareAddr)
		if err != nil {
			return nil, err
		}
		g, err := measureLatency(ctx, srcNS, dst)
		if err != nil {
			return nil, err
		}
		rtt = append(rtt, float64(g.busy.p50)/float64(b.busy.p50))
		idle = append(idle, float64(g.idle.p50)/float64(b.idle.p50))
	}
	med := func(v []float64) float64 { sort.Float64s(v); return v[len(v)/2] }
	return &pairedRatios{gbps: med(one), gbps4: med(four), rtt: med(rtt), rttIdle: med(idle)}, nil
}
