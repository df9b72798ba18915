package policy

// These tests need root: each builds a node in network namespaces (a
// bridge "weft" with pods on veths, a remote pod behind a routed link),
// programs it with a real Engine, and checks verdicts with real TCP and
// UDP traffic. Everything lives in namespaces named wnp-<rand>-*, deleted
// at the end, also on failure.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/internal/netnstest"
	"github.com/weftnet/weft/internal/roottest"
)

const (
	bedDenyWait = 300 * time.Millisecond // how long a dropped connect is given
	sinkPort    = 5353                   // UDP port that counts and never answers
)

var (
	kNode   = ip("10.32.0.1")
	kA      = ip("10.32.0.10") // prod, app=web, http=8080
	kB      = ip("10.32.0.11") // prod, app=web, http=9090
	kC      = ip("10.32.0.12") // dev, app=client
	kRemote = ip("10.32.1.10") // dev, app=tool, on another node
	kExt    = ip("198.18.0.2") // the routed link's far end: "outside"
)

type bed struct {
	t       *testing.T
	prefix  string
	node    string            // the node's namespace
	ns      map[string]string // pod name -> namespace ("remote" for the remote pod)
	pods    []Pod
	sinks   map[netip.Addr]*atomic.Int64
	closers []io.Closer
}

func (b *bed) run(args ...string) {
	b.t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		b.t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func (b *bed) netns(suffix string) string {
	name := b.prefix + suffix
	b.run("ip", "netns", "add", name)
	b.t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	b.run("ip", "-n", name, "link", "set", "lo", "up")
	return name
}

func newBed(t *testing.T) *bed {
	roottest.Require(t)
	r := make([]byte, 3)
	_, _ = rand.Read(r)
	b := &bed{t: t, prefix: "wnp-" + hex.EncodeToString(r) + "-", ns: map[string]string{}, sinks: map[netip.Addr]*atomic.Int64{}}
	t.Cleanup(func() {
		for _, c := range b.closers {
			_ = c.Close()
		}
	})
	b.node = b.netns("node")
	b.run("ip", "-n", b.node, "link", "add", "weft", "type", "bridge")
	b.run("ip", "-n", b.node, "addr", "add", "10.32.0.1/24", "dev", "weft")
	b.run("ip", "-n", b.node, "link", "set", "weft", "up")
	b.run("ip", "netns", "exec", b.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	// Start with bridged traffic bypassing the inet hooks, so the test
	// shows that Apply turns it on.
	b.run("ip", "netns", "exec", b.node, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
	for i, p := range []struct {
		name string
		addr netip.Addr
	}{{"a", kA}, {"b", kB}, {"c", kC}} {
		ns := b.netns(p.name)
		b.ns[p.name] = ns
		host := fmt.Sprintf("vp%d", i)
		b.run("ip", "-n", b.node, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
		b.run("ip", "-n", b.node, "link", "set", host, "master", "weft", "up")
		b.run("ip", "-n", ns, "addr", "add", p.addr.String()+"/24", "dev", "eth0")
		b.run("ip", "-n", ns, "link", "set", "eth0", "up")
		b.run("ip", "-n", ns, "route", "add", "default", "via", "10.32.0.1")
	}
	// The remote path: a routed link, as weft-tun / weft-vx are.
	rem := b.netns("remote")
	b.ns["remote"] = rem
	b.run("ip", "-n", b.node, "link", "add", "rmt0", "type", "veth", "peer", "name", "eth0", "netns", rem)
	b.run("ip", "-n", b.node, "addr", "add", "198.18.0.1/30", "dev", "rmt0")
	b.run("ip", "-n", b.node, "link", "set", "rmt0", "up")
	b.run("ip", "-n", rem, "addr", "add", "198.18.0.2/30", "dev", "eth0")
	b.run("ip", "-n", rem, "link", "set", "eth0", "up")
	b.run("ip", "-n", rem, "addr", "add", kRemote.String()+"/32", "dev", "lo")
	b.run("ip", "-n", rem, "route", "add", "10.32.0.0/24", "via", "198.18.0.1")
	b.run("ip", "-n", b.node, "route", "add", "10.32.1.0/24", "via", "198.18.0.2")

	b.pods = []Pod{
		{Namespace: "prod", Name: "a", IPs: []netip.Addr{kA}, Labels: map[string]string{"app": "web", "id": "a"}, Local: true, Ports: []NamedPort{{Name: "http", Port: 8080}}},
		{Namespace: "prod", Name: "b", IPs: []netip.Addr{kB}, Labels: map[string]string{"app": "web", "id": "b"}, Local: true, Ports: []NamedPort{{Name: "http", Port: 9090}}},
		{Namespace: "dev", Name: "c", IPs: []netip.Addr{kC}, Labels: map[string]string{"app": "client"}, Local: true},
		{Namespace: "dev", Name: "remote", IPs: []netip.Addr{kRemote}, Labels: map[string]string{"app": "tool"}},
	}
	// Servers everywhere: TCP 80, 8080, 9090; UDP echo on 53; a UDP sink.
	for _, s := range []struct {
		ns   string
		addr netip.Addr
	}{{b.ns["a"], kA}, {b.ns["b"], kB}, {b.ns["c"], kC}, {rem, kRemote}, {rem, kExt}, {b.node, kNode}} {
		b.serve(s.ns, s.addr)
	}
	return b
}

// serve starts the servers on addr inside ns.
func (b *bed) serve(ns string, addr netip.Addr) {
	b.t.Helper()
	sink := &atomic.Int64{}
	b.sinks[addr] = sink
	err := netnstest.Do(ns, func() error {
		for _, port := range []int{80, 8080, 9090} {
			l, err := net.Listen("tcp4", netip.AddrPortFrom(addr, uint16(port)).String())
			if err != nil {
				return err
			}
			b.closers = append(b.closers, l)
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					_, _ = c.Write([]byte("ok"))
					_ = c.Close()
				}
			}()
		}
		echo, err := net.ListenPacket("udp4", netip.AddrPortFrom(addr, 53).String())
		if err != nil {
			return err
		}
		b.closers = append(b.closers, echo)
		go func() {
			buf := make([]byte, 1500)
			for {
				n, from, err := echo.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = echo.WriteTo(buf[:n], from)
			}
		}()
		sk, err := net.ListenPacket("udp4", netip.AddrPortFrom(addr, sinkPort).String())
		if err != nil {
			return err
		}
		b.closers = append(b.closers, sk)
		go func() {
			buf := make([]byte, 1500)
			for {
				if _, _, err := sk.ReadFrom(buf); err != nil {
					return
				}
				sink.Add(1)
			}
		}()
		return nil
	})
	if err != nil {
		b.t.Fatal(err)
	}
}

// nsOf is the namespace that owns addr.
func (b *bed) nsOf(a netip.Addr) string {
	switch a {
	case kA:
		return b.ns["a"]
	case kB:
		return b.ns["b"]
	case kC:
		return b.ns["c"]
	case kRemote, kExt:
		return b.ns["remote"]
	case kNode:
		return b.node
	}
	b.t.Fatalf("no namespace for %v", a)
	return ""
}

// tcpOK connects from src to dst:port and reads the server's "ok".
func (b *bed) tcpOK(src, dst netip.Addr, port uint16) bool {
	var ok bool
	err := netnstest.Do(b.nsOf(src), func() error {
		d := net.Dialer{Timeout: bedDenyWait, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		c, err := d.Dial("tcp4", netip.AddrPortFrom(dst, port).String())
		if err != nil {
			return nil
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 2)
		_, err = io.ReadFull(c, buf)
		ok = err == nil && string(buf) == "ok"
		return nil
	})
	if err != nil {
		b.t.Error(err) // not Fatal: check calls this from its goroutines
	}
	return ok
}

// udpOK sends to the echo server on dst and waits for the echo.
func (b *bed) udpOK(src, dst netip.Addr) bool {
	var ok bool
	err := netnstest.Do(b.nsOf(src), func() error {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: src.AsSlice()}, &net.UDPAddr{IP: dst.AsSlice(), Port: 53})
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(bedDenyWait))
		if _, err := c.Write([]byte("ping")); err != nil {
			return nil
		}
		buf := make([]byte, 16)
		n, err := c.Read(buf)
		ok = err == nil && string(buf[:n]) == "ping"
		return nil
	})
	if err != nil {
		b.t.Error(err) // not Fatal: check calls this from its goroutines
	}
	return ok
}

type flow struct {
	src, dst netip.Addr
	port     uint16 // 0: UDP echo
	allow    bool
}

func (b *bed) check(what string, flows ...flow) {
	b.t.Helper()
	var wg sync.WaitGroup
	got := make([]bool, len(flows))
	for i, f := range flows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if f.port == 0 {
				got[i] = b.udpOK(f.src, f.dst)
			} else {
				got[i] = b.tcpOK(f.src, f.dst, f.port)
			}
		}()
	}
	wg.Wait()
	for i, f := range flows {
		if got[i] != f.allow {
			proto := fmt.Sprintf("tcp/%d", f.port)
			if f.port == 0 {
				proto = "udp/53"
			}
			b.t.Errorf("%s: %v -> %v %s: connected=%v, want %v", what, f.src, f.dst, proto, got[i], f.allow)
		}
	}
}

func (b *bed) engine() *Engine {
	e, err := New(Config{
		Logger:    slog.New(slog.NewTextHandler(b.t.Output(), nil)),
		NetNS:     b.node,
		Table:     DefaultTable,
		NodeAddrs: func() []netip.Addr { return []netip.Addr{kNode, ip("198.18.0.1")} },
	})
	if err != nil {
		b.t.Fatal(err)
	}
	e.SetNamespace("prod", map[string]string{"team": "a"})
	e.SetNamespace("dev", map[string]string{"team": "b"})
	for _, p := range b.pods {
		e.SetPod(p)
	}
	return e
}

func (b *bed) apply(e *Engine, policies ...*networkingv1.NetworkPolicy) {
	b.t.Helper()
	for _, np := range policies {
		e.SetPolicy(np)
	}
	if err := e.Apply(context.Background()); err != nil {
		b.t.Fatal(err)
	}
}

func (b *bed) nftList() string {
	out, err := exec.Command("ip", "netns", "exec", b.node, "nft", "list", "table", "inet", DefaultTable).CombinedOutput()
	if err != nil {
		b.t.Fatalf("nft list: %v: %s", err, out)
	}
	return string(out)
}

func TestKernelVerdicts(t *testing.T) {
	b := newBed(t)
	e := b.engine()
	all := &metav1.LabelSelector{}
	I, E := networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress

	b.apply(e)
	if v, _ := os.ReadFile("/proc/sys/net/bridge/bridge-nf-call-iptables"); strings.TrimSpace(string(v)) != "1" {
		t.Logf("root namespace's bridge-nf-call-iptables: %q (not ours)", v)
	}
	var bnf string
	_ = netnstest.Do(b.node, func() error {
		v, err := os.ReadFile(bridgeNFPath)
		bnf = strings.TrimSpace(string(v))
		return err
	})
	if bnf != "1" {
		t.Fatalf("bridge-nf-call-iptables in the node's namespace is %q after Apply, want 1", bnf)
	}
	b.check("no policy",
		flow{kC, kA, 80, true}, flow{kRemote, kA, 80, true}, flow{kA, kB, 0, true}, flow{kA, kExt, 80, true})

	b.apply(e, netpol("prod", "deny", all, I))
	b.check("default deny in prod",
		flow{kC, kA, 80, false}, flow{kB, kA, 80, false}, flow{kRemote, kA, 8080, false}, flow{kExt, kB, 80, false},
		flow{kC, kA, 0, false},
		flow{kA, kC, 80, true}, flow{kA, kRemote, 80, true}, flow{kA, kC, 0, true}, // unselected c; replies come back
		flow{kNode, kA, 80, true}, flow{kA, kNode, 80, true}, // node <-> own pod
		flow{kRemote, kC, 80, true}) // unselected pod
	if in, _ := e.Drops(); in == 0 {
		t.Error("no ingress drops counted")
	}

	in0, _ := e.Drops()
	b.apply(e, withIngress(netpol("prod", "from-dev", all), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{nsPeer(sel("team", "b"))}}))
	if in, _ := e.Drops(); in < in0 {
		t.Errorf("ingress drops went from %d to %d on a policy change", in0, in)
	}
	b.check("allow from namespace",
		flow{kC, kA, 80, true}, flow{kRemote, kA, 80, true}, flow{kC, kB, 0, true}, flow{kB, kA, 80, false}, flow{kExt, kA, 80, false})
	e.DeletePolicy("prod", "from-dev")

	b.apply(e, withIngress(netpol("prod", "client", all), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{bothPeer(sel("team", "b"), sel("app", "client"))}}))
	b.check("pod and namespace selector",
		flow{kC, kA, 80, true}, flow{kRemote, kA, 80, false}, flow{kB, kA, 80, false})
	e.DeletePolicy("prod", "client")

	b.apply(e, withIngress(netpol("prod", "block", all), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{blockPeer("10.32.0.0/16", "10.32.0.12/32")}}))
	b.check("ipBlock with except",
		flow{kRemote, kA, 80, true}, flow{kB, kA, 80, true}, flow{kC, kA, 80, false}, flow{kExt, kA, 80, false})
	e.DeletePolicy("prod", "block")

	b.apply(e, withIngress(netpol("prod", "http", all), ruleSpec{ports: []networkingv1.NetworkPolicyPort{namedPort("TCP", "http")}}))
	b.check("named port",
		flow{kC, kA, 8080, true}, flow{kC, kA, 9090, false}, flow{kC, kB, 9090, true}, flow{kC, kB, 8080, false},
		flow{kRemote, kB, 9090, true}, flow{kC, kA, 80, false})
	e.DeletePolicy("prod", "http")

	b.apply(e, withIngress(netpol("prod", "range", all), ruleSpec{ports: []networkingv1.NetworkPolicyPort{portRange("TCP", 8000, 8100), port("UDP", 53), port("SCTP", 80)}}))
	b.check("endPort",
		flow{kC, kA, 8080, true}, flow{kC, kA, 9090, false}, flow{kC, kA, 80, false}, flow{kRemote, kB, 0, true})
	if l := b.nftList(); !strings.Contains(l, "sctp dport 80") {
		t.Errorf("no SCTP rule in the table:\n%s", l)
	}
	e.DeletePolicy("prod", "range")
	e.DeletePolicy("prod", "deny")

	b.apply(e, withEgress(netpol("prod", "a-out", sel("id", "a"), E), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{podPeer(sel("id", "b"))}}))
	_, out0 := e.Drops()
	b.check("egress",
		flow{kA, kB, 80, true}, flow{kA, kB, 0, true}, flow{kA, kC, 80, false}, flow{kA, kC, 0, false},
		flow{kA, kRemote, 80, false}, flow{kA, kExt, 80, false}, flow{kA, kNode, 80, true},
		flow{kC, kA, 80, true}, // ingress to a not isolated; replies to c are established
		flow{kB, kC, 80, true})
	if _, out := e.Drops(); out <= out0 {
		t.Error("no egress drops counted")
	}
	e.DeletePolicy("prod", "a-out")

	b.apply(e, withEgress(netpol("prod", "a-world", sel("id", "a"), E), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{blockPeer("198.18.0.0/15", "198.18.0.1/32")}}))
	b.check("egress ipBlock to the outside world",
		flow{kA, kExt, 80, true}, flow{kA, kExt, 0, true}, flow{kA, kRemote, 80, false}, flow{kA, kB, 80, false})
	e.DeletePolicy("prod", "a-world")

	// A label change flips reachability after Apply.
	b.apply(e, netpol("prod", "deny", all, I),
		withIngress(netpol("prod", "from-client", all), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{nsPeer(all)}, ports: nil}))
	e.DeletePolicy("prod", "from-client")
	b.apply(e, withIngress(netpol("prod", "from-client", all), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{bothPeer(all, sel("app", "client"))}}))
	b.check("before the label change", flow{kC, kA, 80, true}, flow{kRemote, kA, 80, false})
	c := b.pods[2]
	c.Labels = map[string]string{"app": "other"}
	e.SetPod(c)
	r := b.pods[3]
	r.Labels = map[string]string{"app": "client"}
	e.SetPod(r)
	rules := e.Status().Rules
	b.apply(e)
	b.check("after the label change", flow{kC, kA, 80, false}, flow{kRemote, kA, 80, true})
	if e.Status().Rules != rules {
		t.Error("a label change rewrote rules")
	}

	// Someone deletes the table: the next Apply, even one that only
	// changes a label, puts it back.
	b.run("ip", "netns", "exec", b.node, "nft", "delete", "table", "inet", DefaultTable)
	b.check("table deleted behind the engine's back", flow{kC, kA, 80, true})
	r.Labels = map[string]string{"app": "tool"}
	e.SetPod(r)
	b.apply(e)
	b.check("after the next Apply", flow{kC, kA, 80, false}, flow{kRemote, kA, 80, false})

	inBefore, outBefore := e.Drops()
	if err := e.Remove(); err != nil {
		t.Fatal(err)
	}
	if in, out := e.Drops(); in != inBefore || out != outBefore {
		t.Errorf("drops after Remove %d/%d, before %d/%d", in, out, inBefore, outBefore)
	}
	b.check("after Remove", flow{kC, kA, 80, true}, flow{kRemote, kA, 80, true})
	if err := e.Remove(); err != nil {
		t.Errorf("Remove of a missing table: %v", err)
	}
	b.apply(e)
	b.check("Apply after Remove", flow{kC, kA, 80, false}, flow{kC, kB, 80, false})
}

// An agent restart: a fresh Engine's first Apply replaces the table in
// one transaction, so a pod under default-deny never gets one packet.
func TestKernelReapplyFromFreshEngine(t *testing.T) {
	b := newBed(t)
	e := b.engine()
	b.apply(e, netpol("prod", "deny", &metav1.LabelSelector{}, networkingv1.PolicyTypeIngress))
	sink := b.sinks[kA]

	var sent atomic.Int64
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- netnstest.Do(b.ns["c"], func() error {
			conn, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: kA.AsSlice(), Port: sinkPort})
			if err != nil {
				return err
			}
			defer conn.Close()
			for {
				select {
				case <-stop:
					return nil
				default:
				}
				if _, err := conn.Write([]byte("probe")); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
					return err
				}
				sent.Add(1)
			}
		})
	}()
	// Wait until probes flow before replacing the table.
	deadline := time.Now().Add(5 * time.Second)
	for sent.Load() < 100 {
		if time.Now().After(deadline) {
			t.Fatal("prober does not send")
		}
		time.Sleep(time.Millisecond)
	}
	for range 20 {
		fresh := b.engine()
		b.apply(fresh, netpol("prod", "deny", &metav1.LabelSelector{}, networkingv1.PolicyTypeIngress))
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := sink.Load(); n != 0 {
		t.Fatalf("%d of %d probes reached the denied pod during re-Apply", n, sent.Load())
	}
	t.Logf("%d probes sent during 20 fresh-Engine Applies, none arrived", sent.Load())
	// The control: with the policy gone the same probes arrive.
	fresh := b.engine()
	b.apply(fresh)
	if !b.waitSink(kC, kA) {
		t.Fatal("probes do not arrive without the policy: the test proves nothing")
	}
}

// waitSink sends probes from src to dst's sink until one is counted.
func (b *bed) waitSink(src, dst netip.Addr) bool {
	sink := b.sinks[dst]
	start := sink.Load()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		_ = netnstest.Do(b.nsOf(src), func() error {
			c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: dst.AsSlice(), Port: sinkPort})
			if err != nil {
				return err
			}
			defer c.Close()
			_, _ = c.Write([]byte("probe"))
			return nil
		})
		if sink.Load() > start {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// DenyLog adds a rate-limited log rule before each deny; the deny stays.
func TestKernelDenyLog(t *testing.T) {
	b := newBed(t)
	e, err := New(Config{NetNS: b.node, DenyLog: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range b.pods {
		e.SetPod(p)
	}
	b.apply(e, netpol("prod", "deny", &metav1.LabelSelector{}, networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress))
	l := b.nftList()
	for _, want := range []string{
		`limit rate 10/second burst 20 packets log prefix "weft-policy deny ingress: " level info`,
		`limit rate 10/second burst 20 packets log prefix "weft-policy deny egress: " level info`,
	} {
		if !strings.Contains(l, want) {
			t.Errorf("no %q in\n%s", want, l)
		}
	}
	b.check("deny with log", flow{kC, kA, 80, false}, flow{kA, kC, 80, false}, flow{kC, kRemote, 80, true})
	if in, out := e.Drops(); in == 0 || out == 0 {
		t.Errorf("drops %d/%d", in, out)
	}
}

// Interval sets at the edges of the key space, as nft reads them back.
func TestKernelIntervalSets(t *testing.T) {
	b := newBed(t)
	e := b.engine()
	all := &metav1.LabelSelector{}
	b.apply(e,
		withIngress(netpol("prod", "edges", all),
			ruleSpec{peers: []networkingv1.NetworkPolicyPeer{blockPeer("0.0.0.0/0", "10.0.0.0/8")}},
			ruleSpec{peers: []networkingv1.NetworkPolicyPeer{blockPeer("255.255.255.0/24", "255.255.255.128/25")}},
			ruleSpec{peers: []networkingv1.NetworkPolicyPeer{blockPeer("198.18.0.0/16")}, ports: []networkingv1.NetworkPolicyPort{
				portRange("TCP", 1, 65535), portRange("UDP", 65000, 65535), port("UDP", 1)}},
		))
	l := b.nftList()
	for _, want := range []string{
		"0.0.0.0-9.255.255.255, 11.0.0.0-255.255.255.255",
		"255.255.255.0/25",
		"198.18.0.0/16",
		"1-65535",
		"1, 65000-65535",
	} {
		if !strings.Contains(l, want) {
			t.Errorf("no %q in\n%s", want, l)
		}
	}
	b.check("edges", flow{kC, kA, 80, false}, flow{kExt, kA, 80, true}, flow{kExt, kA, 9090, true}, flow{kRemote, kA, 80, false})
}

// A flow established before a pod is isolated keeps going (conntrack) until
// ForgetFlows, as when the pod's address is released and given to a new pod.
func TestKernelForgetFlows(t *testing.T) {
	b := newBed(t)
	e := b.engine()
	b.apply(e)
	// A socket belongs to the namespace it was made in, whichever thread
	// uses it later.
	var conn *net.UDPConn
	if err := netnstest.Do(b.ns["c"], func() (err error) {
		conn, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: kA.AsSlice(), Port: 53})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	echo := func() bool {
		_ = conn.SetDeadline(time.Now().Add(bedDenyWait))
		if _, err := conn.Write([]byte("ping")); err != nil {
			return false
		}
		buf := make([]byte, 16)
		n, err := conn.Read(buf)
		return err == nil && string(buf[:n]) == "ping"
	}
	if !echo() {
		t.Fatal("no echo before any policy")
	}
	b.apply(e, netpol("prod", "deny", &metav1.LabelSelector{}, networkingv1.PolicyTypeIngress))
	if !echo() {
		t.Fatal("the established flow was cut by the policy alone")
	}
	n, err := e.ForgetFlows(kA)
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("ForgetFlows deleted no entry")
	}
	if echo() {
		t.Fatal("the flow still passes after ForgetFlows")
	}
	b.check("new flows", flow{kC, kA, 0, false}, flow{kC, kB, 80, false})
	if n, err := e.ForgetFlows(); n != 0 || err != nil {
		t.Errorf("ForgetFlows() = %d, %v", n, err)
	}
}

// The first packet: a remote pod pings an address no pod holds yet. Forward
// accepts the echoes (nothing isolates the address) and they wait in the
// bridge's neighbour queue. Then the CNI ADD isolates the address (Apply)
// and the pod comes up: without FlushNeighbours, ARP resolves, the queued
// echoes are delivered, the pod's reply makes the flow established and
// every later echo passes the default deny.
func TestKernelFirstPacketQueued(t *testing.T) {
	t.Run("flushed", func(t *testing.T) {
		if n := firstPacketReplies(t, true); n != 0 {
			t.Fatalf("%d echo replies from an isolated pod after FlushNeighbours, want 0", n)
		}
	})
	// The bed reproduces the leak: otherwise the 0 above proves nothing.
	// The leak depends on the node's next ARP solicitation falling inside
	// the window after the pod comes up, which a loaded machine can miss:
	// up to five attempts, and one leak is enough.
	t.Run("not flushed", func(t *testing.T) {
		for attempt := 1; attempt <= 5; attempt++ {
			if n := firstPacketReplies(t, false); n > 0 {
				return
			}
			t.Logf("attempt %d: no leak without FlushNeighbours", attempt)
		}
		t.Fatal("no echo reply leaked without FlushNeighbours in 5 attempts: the bed does not reproduce the bug")
	})
}

// firstPacketReplies runs the first-packet scenario and returns how many
// echo replies the remote pod got in the 2 s after the isolated pod came up.
func firstPacketReplies(t *testing.T, flush bool) int {
	b := newBed(t)
	x := ip("10.32.0.40")
	// Keep the unresolved entry (and its queue) for 10 s rather than 3 s,
	// so that a slow machine still has it when the pod comes up.
	b.run("ip", "netns", "exec", b.node, "sysctl", "-qw", "net.ipv4.neigh.weft.mcast_solicit=10")
	e := b.engine()
	b.apply(e, netpol("prod", "deny", &metav1.LabelSelector{}, networkingv1.PolicyTypeIngress))

	var out bytes.Buffer
	ping := exec.Command("ip", "netns", "exec", b.ns["remote"], "ping", "-n", "-i", "0.01", "-w", "30", "-I", kRemote.String(), x.String())
	ping.Stdout = &out
	if err := ping.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = ping.Process.Kill()
			_ = ping.Wait()
		}
	}
	defer stop()
	// The echoes wait for ARP.
	waitFor(t, 3*time.Second, "an unresolved neighbour entry of "+x.String(), func() bool {
		o, _ := exec.Command("ip", "-n", b.node, "neigh", "show", x.String()).Output()
		return strings.Contains(string(o), "INCOMPLETE")
	})

	// The CNI ADD: isolate x, then give the pod its network.
	e.SetPod(Pod{Namespace: "prod", Name: "x", IPs: []netip.Addr{x}, Labels: map[string]string{"app": "new"}, Local: true})
	if err := e.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	if flush {
		n, err := e.FlushNeighbours(x)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatal("FlushNeighbours deleted no entry")
		}
	}
	ns := b.netns("x")
	// The pod is complete (address, route) before its port on the bridge
	// comes up, as after a CNI ADD: the queued echoes then meet a pod that
	// can answer, whenever ARP resolves.
	b.run("ip", "-n", b.node, "link", "add", "vpx", "type", "veth", "peer", "name", "eth0", "netns", ns)
	b.run("ip", "-n", ns, "addr", "add", x.String()+"/24", "dev", "eth0")
	b.run("ip", "-n", ns, "link", "set", "eth0", "up")
	b.run("ip", "-n", ns, "route", "add", "default", "via", "10.32.0.1", "dev", "eth0", "onlink")
	b.run("ip", "-n", b.node, "link", "set", "vpx", "master", "weft", "up")
	// 2 s: long enough for the ARP retry (1 s) that would deliver the queue.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if !pingRunning(ping) {
			t.Fatal("ping ended early")
		}
		time.Sleep(50 * time.Millisecond) // pacing the check, not synchronisation
	}
	stop()
	replies := strings.Count(out.String(), "bytes from")
	t.Logf("flush=%v: %d echo replies", flush, replies)

	// The pod is up and reachable: without the policy a new ping gets
	// through, so 0 replies above were the policy's doing.
	e.DeletePolicy("prod", "deny")
	if err := e.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "an echo reply once the policy is gone", func() bool {
		return exec.Command("ip", "netns", "exec", b.ns["remote"], "ping", "-n", "-c", "1", "-W", "1", "-I", kRemote.String(), x.String()).Run() == nil
	})
	return replies
}

func pingRunning(c *exec.Cmd) bool {
	return c.Process.Signal(syscall.Signal(0)) == nil
}

// waitFor polls cond until it holds or d has passed.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ruleHandles lists the kernel's rule handles per chain of the table.
func (b *bed) ruleHandles() map[string][]uint64 {
	b.t.Helper()
	out, err := exec.Command("ip", "netns", "exec", b.node, "nft", "-j", "list", "table", "inet", DefaultTable).Output()
	if err != nil {
		b.t.Fatalf("nft -j list: %v", err)
	}
	var doc struct {
		Nftables []struct {
			Rule *struct {
				Chain  string `json:"chain"`
				Handle uint64 `json:"handle"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		b.t.Fatalf("nft -j output: %v", err)
	}
	hs := map[string][]uint64{}
	for _, o := range doc.Nftables {
		if o.Rule != nil {
			hs[o.Rule.Chain] = append(hs[o.Rule.Chain], o.Rule.Handle)
		}
	}
	return hs
}

// A policy change in the kernel touches only that policy's chain and
// jump: the other policies' rules keep their handles (they were not
// rewritten), and the verdicts follow the change.
func TestKernelPolicyChangeRewritesOneChain(t *testing.T) {
	b := newBed(t)
	e := b.engine()
	keep := withIngress(netpol("prod", "keep", sel("id", "a")), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{podPeer(sel("id", "b"))}})
	moving := withIngress(netpol("prod", "moving", sel("id", "b")), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{nsPeer(sel("team", "b"))}})
	b.apply(e, keep, moving)
	b.check("before", flow{kB, kA, 80, true}, flow{kC, kA, 80, false}, flow{kC, kB, 80, true}, flow{kA, kB, 80, false})
	keepChain := hashName(prefixIngress, "prod/keep")
	before := b.ruleHandles()
	if len(before[keepChain]) != 1 {
		t.Fatalf("chain %s has handles %v, want one rule", keepChain, before[keepChain])
	}
	moving = withIngress(netpol("prod", "moving", sel("id", "b")), ruleSpec{peers: []networkingv1.NetworkPolicyPeer{podPeer(sel("id", "a"))}})
	b.apply(e, moving)
	b.check("after a change", flow{kB, kA, 80, true}, flow{kC, kA, 80, false}, flow{kC, kB, 80, false}, flow{kA, kB, 80, true})
	after := b.ruleHandles()
	for _, ch := range []string{keepChain, chainForward, chainEgress, chainEgressOK} {
		if !slices.Equal(before[ch], after[ch]) {
			t.Errorf("chain %s rewritten by another policy's change: handles %v, then %v", ch, before[ch], after[ch])
		}
	}
	e.DeletePolicy("prod", "moving")
	b.apply(e)
	b.check("after a delete", flow{kB, kA, 80, true}, flow{kC, kA, 80, false}, flow{kC, kB, 80, true})
	if hs := b.ruleHandles(); !slices.Equal(before[keepChain], hs[keepChain]) || hs[hashName(prefixIngress, "prod/moving")] != nil {
		t.Errorf("after the delete: %v", hs)
	}
}

// sendUDP sends one datagram from src to dst:port and does not wait.
func (b *bed) sendUDP(src, dst netip.Addr, port int) {
	b.t.Helper()
	err := netnstest.Do(b.nsOf(src), func() error {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: src.AsSlice()}, &net.UDPAddr{IP: dst.AsSlice(), Port: port})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("x"))
		return err
	})
	if err != nil {
		b.t.Fatal(err)
	}
}

// conntrack lists the node's IPv4 conntrack entries as "src>dst:dport".
func (b *bed) conntrack() map[string]bool {
	b.t.Helper()
	h, err := netlinkHandle(b.node, unix.NETLINK_NETFILTER)
	if err != nil {
		b.t.Fatal(err)
	}
	defer h.Close()
	fl, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	if err != nil {
		b.t.Fatal(err)
	}
	out := map[string]bool{}
	for _, f := range fl {
		out[fmt.Sprintf("%v>%v:%d", f.Forward.SrcIP, f.Forward.DstIP, f.Forward.DstPort)] = true
	}
	return out
}

// ForgetUnreplied deletes, by a filter in the kernel, exactly the entries of
// the address that never saw a reply: a datagram to it that no one
// answered, and one from it; a flow to it that was answered stays, and so
// do the unreplied entries of other addresses.
func TestKernelForgetUnreplied(t *testing.T) {
	b := newBed(t)
	e := b.engine()
	b.apply(e) // bridged traffic through conntrack
	if !b.udpOK(kC, kA) {
		t.Fatal("no echo from a")
	}
	b.sendUDP(kC, kA, sinkPort)
	b.sendUDP(kA, kB, sinkPort)
	b.sendUDP(kC, kB, sinkPort)
	replied := fmt.Sprintf("%v>%v:53", kC, kA)
	toA := fmt.Sprintf("%v>%v:%d", kC, kA, sinkPort)
	fromA := fmt.Sprintf("%v>%v:%d", kA, kB, sinkPort)
	other := fmt.Sprintf("%v>%v:%d", kC, kB, sinkPort)
	waitFor(t, 5*time.Second, "the conntrack entries", func() bool {
		ct := b.conntrack()
		return ct[replied] && ct[toA] && ct[fromA] && ct[other]
	})
	t.Logf("before: %v", b.conntrack())
	// No skip on ErrNoCtFilter: the kernels weft is tested on have the
	// filter, and a skip would hide a malformed request (EINVAL).
	if err := e.ForgetUnreplied(kA); err != nil {
		t.Fatal(err)
	}
	ct := b.conntrack()
	t.Logf("after: %v", ct)
	for entry, want := range map[string]bool{replied: true, toA: false, fromA: false, other: true} {
		if ct[entry] != want {
			t.Errorf("entry %s present=%v after ForgetUnreplied(%v), want %v", entry, ct[entry], kA, want)
		}
	}
}
