package plugin

// End-to-end tests: the real weft-cni binary driven by the real cnitool,
// inside a network namespace simulating a host that hostnet set up, with the
// real agent in-process (realAgent). They need root and clean up every
// namespace they make.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/hostnet"
	"github.com/weftnet/weft/test/cnitest"

	"github.com/weftnet/weft/internal/netnstest"
	"github.com/weftnet/weft/internal/roottest"
)

var (
	overlayRange = netip.MustParsePrefix("10.32.0.0/12")
	hostRange    = netip.MustParsePrefix("10.32.0.0/24")
	hostAddr     = netip.MustParseAddr("10.32.0.1") // the agent's gateway: first of hostRange
)

const e2eMTU = 1376

// e2eHost is one simulated host: a namespace with the weft bridge, the real
// agent, the weft-cni binary and a network config naming it.
type e2eHost struct {
	tag     string // wcni-<rand>: netns name, network name
	nsPath  string
	agent   *realAgent
	host    *hostnet.Host
	cfg     hostnet.Config
	tool    cnitest.Tool
	rt      cnitest.Runtime
	network string
}

func randTag(t testing.TB) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "wcni-" + hex.EncodeToString(b)
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// addNetns creates a named namespace and deletes it when the test ends.
func addNetns(t testing.TB, name string) string {
	t.Helper()
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return "/run/netns/" + name
}

var (
	buildOnce sync.Once
	builtDir  string
	buildErr  error
)

// buildShim builds cmd/weft-cni once per test binary run.
func buildShim(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		builtDir, buildErr = os.MkdirTemp("", "wcni-bin-")
		if buildErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", filepath.Join(builtDir, PluginType), "github.com/weftnet/weft/cmd/weft-cni").CombinedOutput()
		if err != nil {
			buildErr = err
			t.Logf("go build: %s", out)
		}
	})
	if buildErr != nil {
		t.Fatalf("build weft-cni: %v", buildErr)
	}
	return builtDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

func newE2EHost(t testing.TB) *e2eHost {
	t.Helper()
	roottest.Require(t)
	ctx := context.Background()
	cnitool, installed, err := cnitest.EnsureCnitoolInstalled(ctx)
	if err != nil {
		t.Fatalf("cnitool: %v", err)
	}
	if installed {
		t.Logf("installed cnitool (%s) into %s", cnitest.CnitoolModule, cnitool)
	}
	binDir := buildShim(t)

	tag := randTag(t)
	h := &e2eHost{tag: tag, network: tag}
	h.nsPath = addNetns(t, tag)
	h.cfg = hostnet.Config{Bridge: "weft", TUN: "weft-tun", Range: overlayRange, HostAddr: hostAddr, MTU: e2eMTU, Ports: []uint16{6782, 6783, 6784}}
	h.setup(t)

	h.agent = newRealAgent(t, hostRange, hostAddr, h.cfg.Bridge, e2eMTU)
	netconf := t.TempDir()
	if err := cnitest.WriteConflist(netconf, h.network, "1.1.0", map[string]any{"type": PluginType, "socket": h.agent.Socket}); err != nil {
		t.Fatal(err)
	}
	h.tool = cnitest.Tool{Cnitool: cnitool, NetconfDir: netconf, CNIPath: binDir, HostNetns: h.nsPath}
	h.rt = cnitest.Runtime{CNIPath: binDir, NetconfDir: netconf, HostNetns: h.nsPath}
	// cnitool caches results under /var/lib/cni; DEL removes them, this
	// catches what a failed test left.
	t.Cleanup(func() {
		files, _ := filepath.Glob(filepath.Join("/var/lib/cni/results", h.network+"-*"))
		for _, f := range files {
			os.Remove(f)
		}
	})
	return h
}

// setup runs hostnet.Setup and the local range in the host namespace.
func (h *e2eHost) setup(t testing.TB) {
	t.Helper()
	err := netnstest.Do(h.nsPath, func() error {
		hn, err := hostnet.Setup(h.cfg)
		if err != nil {
			return err
		}
		h.host = hn
		return hn.SyncLocalRanges([]netip.Prefix{hostRange})
	})
	if err != nil {
		t.Fatalf("host network: %v", err)
	}
}

func (h *e2eHost) pod(t testing.TB, i int) string {
	t.Helper()
	return addNetns(t, h.tag+"-pod"+strconv.Itoa(i))
}

// hostVeths lists the veths in the host namespace.
func (h *e2eHost) hostVeths(t testing.TB) []string {
	t.Helper()
	var names []string
	if err := netnstest.Do(h.nsPath, func() (err error) {
		names, err = hostVethsIn()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return names
}

// hostVethsIn lists the veths of the current network namespace.
func hostVethsIn() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, l := range links {
		if l.Type() == "veth" {
			names = append(names, l.Attrs().Name)
		}
	}
	return names, nil
}

func podAddr(t testing.TB, result []byte) netip.Addr {
	t.Helper()
	var res current.Result
	if err := json.Unmarshal(result, &res); err != nil || len(res.IPs) != 1 {
		t.Fatalf("ADD result %s: %v", result, err)
	}
	a, _ := netip.AddrFromSlice(res.IPs[0].Address.IP)
	return a.Unmap()
}

func ping(nsPath string, to netip.Addr) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return cnitest.Ping(ctx, nsPath, to)
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestE2ETwentyPodsPingEachOtherAndGateway(t *testing.T) {
	h := newE2EHost(t)
	ctx := ctxT(t, 2*time.Minute)
	const n = 20
	pods := make([]string, n)
	addrs := make([]netip.Addr, n)
	seen := map[netip.Addr]bool{}
	for i := range n {
		pods[i] = h.pod(t, i)
		res, err := h.tool.Add(ctx, pods[i], h.network)
		if err != nil {
			t.Fatalf("pod %d: %v", i, err)
		}
		addrs[i] = podAddr(t, res)
		if seen[addrs[i]] || !hostRange.Contains(addrs[i]) || addrs[i] == hostAddr {
			t.Fatalf("pod %d got %s: duplicate or outside %s", i, addrs[i], hostRange)
		}
		seen[addrs[i]] = true
	}

	pingAll := func() {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, n*(n+1))
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := ping(pods[i], hostAddr); err != nil {
					errs <- err
				}
				for j := range n {
					if j != i {
						if err := ping(pods[i], addrs[j]); err != nil {
							errs <- err
						}
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}
	pingAll()
	// The check can fail: nobody has this address.
	ctx1, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := cnitest.Ping(ctx1, pods[0], netip.MustParseAddr("10.32.0.250")); err == nil {
		t.Fatal("ping of an unallocated address succeeded")
	}

	// A relaunched agent runs Setup again: running pods must not notice.
	h.setup(t)
	pingAll()

	for i := range n {
		if err := h.tool.Del(ctx, pods[i], h.network); err != nil {
			t.Fatalf("DEL pod %d: %v", i, err)
		}
	}
	if v := h.hostVeths(t); len(v) != 0 {
		t.Fatalf("veths left after DEL: %v", v)
	}
	if held := h.agent.Held(); len(held) != 0 {
		t.Fatalf("allocations left after DEL: %v", held)
	}
}

func TestE2EAddCheckDelDel(t *testing.T) {
	h := newE2EHost(t)
	ctx := ctxT(t, time.Minute)
	pod := h.pod(t, 0)
	res, err := h.tool.Add(ctx, pod, h.network)
	if err != nil {
		t.Fatal(err)
	}
	addr := podAddr(t, res)
	if err := h.tool.Check(ctx, pod, h.network); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := ping(pod, hostAddr); err != nil {
		t.Fatal(err)
	}
	// The bridge port is in hairpin mode (a pod reaching itself through its
	// Service): like the CNI bridge plugin's hairpinMode.
	if err := netnstest.Do(h.nsPath, func() error {
		names, err := hostVethsIn()
		if err != nil {
			return err
		}
		if len(names) != 1 {
			return fmt.Errorf("host veths %v, want one", names)
		}
		for _, name := range names {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			pi, err := netlink.LinkGetProtinfo(l)
			if err != nil {
				return fmt.Errorf("protinfo of %s: %w", name, err)
			}
			if !pi.Hairpin {
				return fmt.Errorf("bridge port %s: hairpin off", name)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := h.tool.Del(ctx, pod, h.network); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if held := h.agent.Held(); len(held) != 0 {
		t.Fatalf("address %s still allocated after DEL: %v", addr, held)
	}
	if v := h.hostVeths(t); len(v) != 0 {
		t.Fatalf("veths left after DEL: %v", v)
	}

	// DEL after the pod's namespace is gone still releases the address.
	gone := h.pod(t, 1)
	if _, err := h.tool.Add(ctx, gone, h.network); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "netns", "del", filepath.Base(gone))
	if err := h.tool.Del(ctx, gone, h.network); err != nil {
		t.Fatalf("DEL with the netns gone: %v", err)
	}
	if held := h.agent.Held(); len(held) != 0 {
		t.Fatalf("allocation left after DEL of a gone netns: %v", held)
	}
	if v := h.hostVeths(t); len(v) != 0 {
		t.Fatalf("veths left after DEL of a gone netns: %v", v)
	}
}

func TestE2ENoAgentTryAgainLater(t *testing.T) {
	h := newE2EHost(t)
	ctx := ctxT(t, time.Minute)
	pod := h.pod(t, 0)
	h.agent.Stop()

	start := time.Now()
	_, err := h.tool.Add(ctx, pod, h.network)
	took := time.Since(start)
	if err == nil {
		t.Fatal("cnitool ADD succeeded without an agent")
	}
	if took > 2*time.Second {
		t.Fatalf("cnitool ADD without agent took %v, want < 2 s", took)
	}
	t.Logf("cnitool ADD without agent failed in %v: %v", took.Round(time.Millisecond), err)

	start = time.Now()
	_, err = h.rt.Add(ctx, h.network, "no-agent", pod, "eth0")
	if code := cnitest.Code(err); code != types.ErrTryAgainLater || time.Since(start) > 2*time.Second {
		t.Fatalf("ADD: code %d after %v (%v), want %d within 2 s", code, time.Since(start), err, types.ErrTryAgainLater)
	}
	if code := cnitest.Code(h.rt.Status(ctx, h.network)); code != types.ErrTryAgainLater {
		t.Fatalf("STATUS code %d, want %d", code, types.ErrTryAgainLater)
	}
	if err := h.tool.Status(ctx, h.network); err == nil {
		t.Fatal("cnitool STATUS succeeded without an agent")
	}
	if v := h.hostVeths(t); len(v) != 0 {
		t.Fatalf("veths made without an agent: %v", v)
	}

	// The agent comes back: ADD works again.
	h.agent.Start(t)
	if err := h.tool.Status(ctx, h.network); err != nil {
		t.Fatalf("STATUS with the agent back: %v", err)
	}
	if _, err := h.tool.Add(ctx, pod, h.network); err != nil {
		t.Fatalf("ADD with the agent back: %v", err)
	}
	if err := h.tool.Del(ctx, pod, h.network); err != nil {
		t.Fatal(err)
	}
}

func TestE2EGCFreesExactlyTheInvalidHalf(t *testing.T) {
	h := newE2EHost(t)
	ctx := ctxT(t, time.Minute)
	const n = 10
	pods := make([]string, n)
	var valid []types.GCAttachment
	for i := range n {
		pods[i] = h.pod(t, i)
		if _, err := h.tool.Add(ctx, pods[i], h.network); err != nil {
			t.Fatal(err)
		}
		if i < n/2 {
			valid = append(valid, types.GCAttachment{ContainerID: cnitest.ContainerID(pods[i]), IfName: "eth0"})
		}
	}
	// cnitool's gc passes no valid list; the runtime path passes half.
	if err := h.rt.GC(ctx, h.network, valid); err != nil {
		t.Fatalf("GC: %v", err)
	}
	held := h.agent.Held()
	if len(held) != n/2 {
		t.Fatalf("after GC %d allocations held, want %d: %v", len(held), n/2, held)
	}
	for _, v := range valid {
		if !held[api.Attachment{ContainerID: v.ContainerID, IfName: v.IfName}].IsValid() {
			t.Fatalf("GC released valid %s", v.ContainerID)
		}
	}
	veths := h.hostVeths(t)
	if len(veths) != n/2 {
		t.Fatalf("after GC host veths %v, want the %d valid ones", veths, n/2)
	}
	for i := range n / 2 {
		if err := ping(pods[i], hostAddr); err != nil {
			t.Errorf("valid pod %d lost its network: %v", i, err)
		}
	}
	for i := range n {
		if err := h.tool.Del(ctx, pods[i], h.network); err != nil {
			t.Fatalf("DEL pod %d after GC: %v", i, err)
		}
	}
	if len(h.agent.Held()) != 0 || len(h.hostVeths(t)) != 0 {
		t.Fatalf("left after DEL: %v %v", h.agent.Held(), h.hostVeths(t))
	}
}

func TestE2EAddDelCycles(t *testing.T) {
	h := newE2EHost(t)
	// 500 cycles take about 45 s on an idle 2-core machine; the budget only
	// bounds a machine that is badly overloaded.
	cycles, budget := 500, 150*time.Second
	if testing.Short() {
		cycles = 50
	} else if raceEnabled {
		cycles = 100 // still enough to see a leak per cycle; 500 take ~7 min instrumented
	}
	ctx := ctxT(t, budget+30*time.Second)
	pod := h.pod(t, 0)
	start := time.Now()
	done := 0
	for ; done < cycles && time.Since(start) < budget; done++ {
		if _, err := h.tool.Add(ctx, pod, h.network); err != nil {
			t.Fatalf("cycle %d ADD: %v", done, err)
		}
		if err := h.tool.Del(ctx, pod, h.network); err != nil {
			t.Fatalf("cycle %d DEL: %v", done, err)
		}
	}
	t.Logf("%d ADD/DEL cycles through cnitool in %v", done, time.Since(start).Round(time.Millisecond))
	if done < cycles {
		t.Errorf("only %d of %d cycles within %v", done, cycles, budget)
	}
	if held := h.agent.Held(); len(held) != 0 {
		t.Fatalf("allocations left: %v", held)
	}
	if v := h.hostVeths(t); len(v) != 0 {
		t.Fatalf("veths left: %v", v)
	}
}

// A host veth that has the name of a new pod interface but belongs to another
// container (a hash collision) is neither deleted nor taken over: ADD fails
// and DEL leaves it (issue 16 item 8). Before, ADD deleted it as "stale".
func TestE2EVethOfAnotherContainerIsNotTakenOver(t *testing.T) {
	h := newE2EHost(t)
	pod, other := h.pod(t, 0), h.pod(t, 1)
	name := HostVethName("c1", "eth0")
	foreign := HostVethOwner("someone-else", "eth0")
	run(t, "ip", "-n", h.tag, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", filepath.Base(other))
	run(t, "ip", "-n", h.tag, "link", "set", name, "alias", foreign)

	a := Attachment{Netns: pod, IfName: "eth0", HostVeth: name, Owner: HostVethOwner("c1", "eth0"),
		Bridge: h.cfg.Bridge, Address: netip.MustParsePrefix("10.32.0.9/32"), Gateway: hostAddr, MTU: e2eMTU}
	var attachErr, detachErr error
	if err := netnstest.Do(h.nsPath, func() error {
		_, attachErr = NetlinkPodNetwork{}.Attach(a)
		detachErr = NetlinkPodNetwork{}.Detach(pod, a.IfName, a.HostVeth, a.Owner)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(attachErr, ErrVethTaken) {
		t.Fatalf("ADD over another container's veth: %v, want ErrVethTaken", attachErr)
	}
	if detachErr != nil {
		t.Fatalf("DEL next to another container's veth: %v", detachErr)
	}
	var alias string
	if err := netnstest.Do(h.nsPath, func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		alias = l.Attrs().Alias
		return nil
	}); err != nil {
		t.Fatalf("the other container's veth is gone: %v", err)
	}
	if alias != foreign {
		t.Fatalf("the other container's veth was taken over: alias %q", alias)
	}
}
