package plugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weftnet/weft/api"
)

// fakePodNetwork records attachments instead of touching the kernel.
type fakePodNetwork struct {
	mu        sync.Mutex
	attached  map[string]Attachment // by host veth
	attachErr error
	detached  []string
}

func newFakePodNetwork() *fakePodNetwork {
	return &fakePodNetwork{attached: map[string]Attachment{}}
}

var (
	fakeHostMAC = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	fakePodMAC  = net.HardwareAddr{2, 0, 0, 0, 0, 2}
)

func (f *fakePodNetwork) Attach(a Attachment) (Links, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.attachErr != nil {
		return Links{}, f.attachErr
	}
	f.attached[a.HostVeth] = a
	return Links{HostMAC: fakeHostMAC, PodMAC: fakePodMAC}, nil
}

func (f *fakePodNetwork) Detach(netnsPath, ifName, hostVeth, owner string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.attached, hostVeth)
	f.detached = append(f.detached, hostVeth)
	return nil
}

func (f *fakePodNetwork) Check(want Attachment) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	got, ok := f.attached[want.HostVeth]
	if !ok {
		return fmt.Errorf("no attachment %s", want.HostVeth)
	}
	if !reflect.DeepEqual(got, want) {
		return fmt.Errorf("attachment differs:\n got %+v\nwant %+v", got, want)
	}
	return nil
}

const testBridge = "weft"

type harness struct {
	t      *testing.T
	agent  *fakeAgent
	net    *fakePodNetwork
	plugin *Plugin
	out    *bytes.Buffer
}

func newHarness(t *testing.T) *harness {
	agent := newFakeAgent(t, netip.MustParsePrefix("10.32.0.0/24"), testBridge, 1376)
	h := &harness{t: t, agent: agent, net: newFakePodNetwork(), out: &bytes.Buffer{}}
	h.plugin = &Plugin{
		Net:    h.net,
		Agent:  func(socket string) *api.Client { return api.NewClient(socket, AgentTimeout) },
		Stdout: h.out,
	}
	return h
}

func (h *harness) conf(extra string) []byte {
	return []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","socket":%q%s}`, h.agent.Socket, extra))
}

func (h *harness) args(id, ifName string, conf []byte) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: id, IfName: ifName, Netns: "/var/run/netns/" + id, StdinData: conf}
}

func (h *harness) add(id string) *current.Result {
	h.t.Helper()
	h.out.Reset()
	if err := h.plugin.Add(h.args(id, "eth0", h.conf(""))); err != nil {
		h.t.Fatalf("ADD %s: %v", id, err)
	}
	var res current.Result
	if err := json.Unmarshal(h.out.Bytes(), &res); err != nil {
		h.t.Fatalf("ADD %s printed %q: %v", id, h.out.String(), err)
	}
	return &res
}

func cniCode(t *testing.T, err error) uint {
	t.Helper()
	var ce *types.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v (%T) is not a CNI error", err, err)
	}
	return ce.Code
}

func TestAddAllocatesAndAttaches(t *testing.T) {
	h := newHarness(t)
	res := h.add("c1")

	if len(res.IPs) != 1 || res.IPs[0].Address.String() != "10.32.0.2/32" || res.IPs[0].Gateway.String() != "10.32.0.1" {
		t.Fatalf("result IPs = %+v, want 10.32.0.2/32 via 10.32.0.1", res.IPs)
	}
	if res.IPs[0].Interface == nil || *res.IPs[0].Interface != 1 || res.Interfaces[1].Name != "eth0" || res.Interfaces[1].Sandbox == "" {
		t.Fatalf("result does not point the address at the pod interface: %+v", res)
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" || res.Routes[0].GW.String() != "10.32.0.1" {
		t.Fatalf("result routes = %+v", res.Routes)
	}
	veth := HostVethName("c1", "eth0")
	got := h.net.attached[veth]
	want := Attachment{
		Netns: "/var/run/netns/c1", IfName: "eth0", HostVeth: veth, Owner: HostVethOwner("c1", "eth0"), Bridge: testBridge,
		Address: netip.MustParsePrefix("10.32.0.2/32"), Gateway: netip.MustParseAddr("10.32.0.1"),
		Routes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, MTU: 1376,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("attached %+v\nwant %+v", got, want)
	}
	if res2 := h.add("c2"); res2.IPs[0].Address.String() != "10.32.0.3/32" {
		t.Fatalf("second pod got %s, want the next address", res2.IPs[0].Address.String())
	}
}

// The pod's identity from CNI_ARGS reaches the agent, the UID included:
// the agent's policy gate tells a recreated pod from the old one by it.
func TestAddPassesPodIdentity(t *testing.T) {
	h := newHarness(t)
	args := h.args("c1", "eth0", h.conf(""))
	args.Args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=np;K8S_POD_NAME=web;K8S_POD_UID=0b9c-77"
	if err := h.plugin.Add(args); err != nil {
		t.Fatal(err)
	}
	if r := h.agent.LastAllocate(); r.PodNamespace != "np" || r.PodName != "web" || r.PodUID != "0b9c-77" {
		t.Fatalf("the agent got %+v, want pod np/web uid 0b9c-77", r)
	}
}

func TestAddConfigMTUOverridesAgent(t *testing.T) {
	h := newHarness(t)
	if err := h.plugin.Add(h.args("c1", "eth0", h.conf(`,"mtu":1200`))); err != nil {
		t.Fatal(err)
	}
	if mtu := h.net.attached[HostVethName("c1", "eth0")].MTU; mtu != 1200 {
		t.Fatalf("MTU %d, want the config's 1200", mtu)
	}
}

func TestAddRollsBackAllocationWhenAttachFails(t *testing.T) {
	h := newHarness(t)
	h.net.attachErr = errors.New("boom")
	err := h.plugin.Add(h.args("c1", "eth0", h.conf("")))
	if err == nil {
		t.Fatal("ADD succeeded with a failing attach")
	}
	if held := h.agent.Held(); len(held) != 0 {
		t.Fatalf("allocation left after failed ADD: %v", held)
	}
}

// A bridge deleted a moment before the agent's reconcile loop re-creates
// it: ADD says "try again" and leaves no allocation behind.
func TestAddTryAgainWhenBridgeMissing(t *testing.T) {
	h := newHarness(t)
	h.net.attachErr = fmt.Errorf("%w: bridge weft: link not found", ErrNoBridge)
	err := h.plugin.Add(h.args("c1", "eth0", h.conf("")))
	if code := cniCode(t, err); code != types.ErrTryAgainLater {
		t.Fatalf("ADD code %d (%v), want %d", code, err, types.ErrTryAgainLater)
	}
	if held := h.agent.Held(); len(held) != 0 {
		t.Fatalf("allocation left after ADD without a bridge: %v", held)
	}
}

func TestAddAndStatusTryAgainLater(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(h *harness) []byte
	}{
		{"no socket", func(h *harness) []byte {
			h.agent.Stop()
			return h.conf("")
		}},
		{"agent not ready", func(h *harness) []byte {
			h.agent.SetNotReady(true)
			return h.conf("")
		}},
		{"agent hangs", func(h *harness) []byte {
			// Accepts connections, never answers.
			sock := filepath.Join(h.t.TempDir(), "hung.sock")
			ln, err := net.Listen("unix", sock)
			if err != nil {
				h.t.Fatal(err)
			}
			h.t.Cleanup(func() { ln.Close() })
			return []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","socket":%q}`, sock))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			conf := tc.setup(h)
			start := time.Now()
			err := h.plugin.Add(h.args("c1", "eth0", conf))
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("ADD took %v, must answer within 2 s", took)
			}
			if code := cniCode(t, err); code != types.ErrTryAgainLater {
				t.Errorf("ADD code %d (%v), want %d", code, err, types.ErrTryAgainLater)
			}
			if code := cniCode(t, h.plugin.Status(h.args("", "", conf))); code != types.ErrTryAgainLater {
				t.Errorf("STATUS code %d, want %d", code, types.ErrTryAgainLater)
			}
			if len(h.net.attached) != 0 {
				t.Errorf("attached %v without an agent", h.net.attached)
			}
		})
	}
}

func TestStatusReady(t *testing.T) {
	h := newHarness(t)
	if err := h.plugin.Status(h.args("", "", h.conf(""))); err != nil {
		t.Fatalf("STATUS with a ready agent: %v", err)
	}
}

func TestDelIsIdempotentAndReleases(t *testing.T) {
	h := newHarness(t)
	h.add("c1")
	args := h.args("c1", "eth0", h.conf(""))
	for i := range 2 {
		if err := h.plugin.Del(args); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if held := h.agent.Held(); len(held) != 0 {
		t.Fatalf("allocation left after DEL: %v", held)
	}
	if len(h.net.attached) != 0 || len(h.net.detached) != 2 || h.net.detached[0] != HostVethName("c1", "eth0") {
		t.Fatalf("detach calls %v, attached left %v", h.net.detached, h.net.attached)
	}
	// An unknown container, and one whose netns the runtime no longer has.
	unknown := h.args("never-added", "eth0", h.conf(""))
	unknown.Netns = ""
	if err := h.plugin.Del(unknown); err != nil {
		t.Fatalf("DEL of unknown container: %v", err)
	}
}

func TestDelWithoutAgentFailsRetryably(t *testing.T) {
	h := newHarness(t)
	h.add("c1")
	h.agent.Stop()
	if code := cniCode(t, h.plugin.Del(h.args("c1", "eth0", h.conf("")))); code != types.ErrTryAgainLater {
		t.Fatalf("DEL code %d, want %d: the address must not be leaked silently", code, types.ErrTryAgainLater)
	}
}

func TestCheck(t *testing.T) {
	h := newHarness(t)
	res := h.add("c1")
	prev, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	conf := h.conf(`,"prevResult":` + string(prev))
	if err := h.plugin.Check(h.args("c1", "eth0", conf)); err != nil {
		t.Fatalf("CHECK after ADD: %v", err)
	}
	if err := h.plugin.Check(h.args("c1", "eth0", h.conf(""))); err == nil {
		t.Fatal("CHECK without prevResult succeeded")
	}
	// The agent lost the allocation: CHECK must say so.
	if err := h.agent.releaseAll(); err != nil {
		t.Fatal(err)
	}
	if err := h.plugin.Check(h.args("c1", "eth0", conf)); err == nil {
		t.Fatal("CHECK succeeded although the agent holds no allocation")
	}
}

func (a *fakeAgent) releaseAll() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	clear(a.held)
	return nil
}

func TestGCReleasesAllButValid(t *testing.T) {
	h := newHarness(t)
	for _, id := range []string{"a", "b", "c", "d"} {
		h.add(id)
	}
	conf := h.conf(`,"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"},{"containerID":"c","ifname":"eth0"}]`)
	if err := h.plugin.GC(h.args("", "", conf)); err != nil {
		t.Fatalf("GC: %v", err)
	}
	held := h.agent.Held()
	if len(held) != 2 || !held[api.Attachment{ContainerID: "a", IfName: "eth0"}].IsValid() || !held[api.Attachment{ContainerID: "c", IfName: "eth0"}].IsValid() {
		t.Fatalf("held after GC = %v, want a and c", held)
	}
	if _, ok := h.net.attached[HostVethName("b", "eth0")]; ok {
		t.Fatal("GC left b's veth")
	}
	if _, ok := h.net.attached[HostVethName("a", "eth0")]; !ok {
		t.Fatal("GC removed a's veth")
	}
	// Without the key nothing is valid (what libcni sends when it has none).
	if err := h.plugin.GC(h.args("", "", h.conf(""))); err != nil {
		t.Fatal(err)
	}
	if held := h.agent.Held(); len(held) != 0 {
		t.Fatalf("held after GC with no valid attachments: %v", held)
	}
}

func TestBadConfigIsInvalidNetworkConfig(t *testing.T) {
	h := newHarness(t)
	err := h.plugin.Add(h.args("c1", "eth0", []byte(`{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","mtu":"big"}`)))
	if code := cniCode(t, err); code != types.ErrInvalidNetworkConfig {
		t.Fatalf("code %d, want %d", code, types.ErrInvalidNetworkConfig)
	}
	if h.agent.Calls("allocate") != 0 {
		t.Fatal("allocated despite a bad config")
	}
}

func TestHostVethName(t *testing.T) {
	a, b := HostVethName("c1", "eth0"), HostVethName("c1", "eth1")
	if a != HostVethName("c1", "eth0") {
		t.Fatal("not deterministic")
	}
	if a == b || a == HostVethName("c2", "eth0") {
		t.Fatal("names collide for different interfaces")
	}
	if len(a) != 15 || a[:6] != "vethwe" {
		t.Fatalf("name %q: want prefix vethwe and 15 characters (IFNAMSIZ)", a)
	}
	// 9 base32 characters: 45 bits of hash, not 32 as before.
	if len(HostVethName("c1", "eth0"))-len(hostVethPrefix) < 9 {
		t.Fatalf("hash part of %q shorter than 9 characters", a)
	}
	if o := HostVethOwner("c1", "eth0"); o == HostVethOwner("c1", "eth1") || len(o) > 255 {
		t.Fatalf("owner alias %q", o)
	}
}

func TestPodOfCNIArgs(t *testing.T) {
	for args, want := range map[string]podID{
		"IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-abc;K8S_POD_INFRA_CONTAINER_ID=123;K8S_POD_UID=4f1c-9a": {"kube-system", "coredns-abc", "4f1c-9a"},
		"":                       {},
		"K8S_POD_NAME=solo":      {Name: "solo"},
		"garbage;=;K8S_POD_NAME": {},
	} {
		if got := podOf(args); got != want {
			t.Errorf("podOf(%q) = %+v; want %+v", args, got, want)
		}
	}
}
