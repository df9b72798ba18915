package router

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/weftnet/weft/router/tun"
	"github.com/weftnet/weft/router/udp"

	"github.com/weftnet/weft/internal/netnstest"
	"github.com/weftnet/weft/internal/roottest"
)

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// dpHost is one simulated host: a namespace with an underlay address, an
// overlay address on lo inside its own /24, and a running Router.
type dpHost struct {
	ns       string
	underlay netip.Addr
	overlay  netip.Addr
	router   *Router
	crypto   Crypto // nil = plaintext
	// makeCrypto builds crypto on the host's socket once it is open.
	makeCrypto func(conn udp.Conn) Crypto
}

// setupTestCrypto gives both hosts of a testbed a router/crypto Manager. It
// is set by netns_crypto_test.go, built only with -tags weftcrypto, so that
// this package's tests never depend on another package mid-edit.
var setupTestCrypto func(t *testing.T, tb *dpTestbed)

// dpTestbed is two hosts joined by a veth pair on 198.18.x.0/24.
type dpTestbed struct {
	a, b       *dpHost
	afterStart []func() // run once both routers run (e.g. start crypto)
}

// newTestbed creates wdp-<rand>-a/b. routerMTU 0 = the TUN MTU.
func newTestbed(t *testing.T, tunMTU, routerMTU int, encrypted bool) *dpTestbed {
	t.Helper()
	roottest.Require(t)
	if encrypted && setupTestCrypto == nil {
		t.Skip("encrypted variant: build with -tags weftcrypto to use router/crypto")
	}
	tag := fmt.Sprintf("wdp-%06x", rand.Uint32()&0xffffff)
	x := rand.IntN(256)
	tb := &dpTestbed{
		a: &dpHost{ns: tag + "-a", underlay: netip.AddrFrom4([4]byte{198, 18, byte(x), 1}), overlay: netip.MustParseAddr("10.40.1.1")},
		b: &dpHost{ns: tag + "-b", underlay: netip.AddrFrom4([4]byte{198, 18, byte(x), 2}), overlay: netip.MustParseAddr("10.40.2.1")},
	}
	for _, h := range []*dpHost{tb.a, tb.b} {
		run(t, "ip", "netns", "add", h.ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", h.ns).Run() })
	}
	// The veth pair is created inside the namespaces, never in ours.
	run(t, "ip", "-n", tb.a.ns, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", tb.b.ns)
	for _, h := range []*dpHost{tb.a, tb.b} {
		run(t, "ip", "-n", h.ns, "addr", "add", h.underlay.String()+"/24", "dev", "ul0")
		run(t, "ip", "-n", h.ns, "link", "set", "ul0", "up")
		run(t, "ip", "-n", h.ns, "link", "set", "lo", "up")
		run(t, "ip", "-n", h.ns, "addr", "add", h.overlay.String()+"/32", "dev", "lo")
	}
	if encrypted {
		setupTestCrypto(t, tb)
	}
	tb.start(t, tb.a, tb.b, tunMTU, routerMTU)
	tb.start(t, tb.b, tb.a, tunMTU, 0)
	for _, f := range tb.afterStart {
		f()
	}
	return tb
}

// start opens self's TUN and socket inside its namespace, routes the overlay
// range to the TUN and runs a Router with a static table.
func (tb *dpTestbed) start(t *testing.T, self, peer *dpHost, tunMTU, routerMTU int) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var dev tun.Device
	var conn udp.Conn
	err := netnstest.Do(self.ns, func() error {
		var err error
		if dev, _, err = tun.Open("weft-tun", tunMTU, log); err != nil {
			return err
		}
		conn, err = udp.Listen(netip.AddrPortFrom(self.underlay, 6784), log)
		return err
	})
	if err != nil {
		if dev != nil {
			_ = dev.Close()
		}
		t.Fatalf("open devices in %s: %v", self.ns, err)
	}
	run(t, "ip", "-n", self.ns, "route", "add", "10.40.0.0/16", "dev", "weft-tun", "src", self.overlay.String())
	if self.makeCrypto != nil {
		self.crypto = self.makeCrypto(conn)
	}
	routes := &staticRoutes{
		local: []netip.Prefix{netip.PrefixFrom(self.overlay, 24).Masked()},
		peers: []routeEntry{{netip.PrefixFrom(peer.overlay, 24).Masked(), peer.ns, netip.AddrPortFrom(peer.underlay, 6784)}},
	}
	r, err := New(Config{TUN: dev, Conn: conn, Routes: routes, Crypto: self.crypto, MTU: routerMTU, Logger: log})
	if err != nil {
		_ = dev.Close()
		_ = conn.Close()
		t.Fatalf("New: %v", err)
	}
	self.router = r
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("router %s: %v", self.ns, err)
		}
	})
}

// tcpTransfer sends size bytes from a to b's overlay address through the
// tunnel and checks they arrive intact (the server answers with a SHA-256).
func tcpTransfer(t *testing.T, a, b *dpHost, size int) time.Duration {
	t.Helper()
	var ln net.Listener
	if err := netnstest.Do(b.ns, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(b.overlay, 0).String())
		return err
	}); err != nil {
		t.Fatalf("listen in %s: %v", b.ns, err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		h := sha256.New()
		_, _ = io.Copy(h, c)
		_, _ = c.Write(h.Sum(nil))
	}()
	var c net.Conn
	if err := netnstest.Do(a.ns, func() (err error) {
		c, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %s from %s: %v", ln.Addr(), a.ns, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if got := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr(); got != a.overlay {
		t.Fatalf("client address %s, want %s", got, a.overlay)
	}
	data := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{1})
	_, _ = rng.Read(data)
	want := sha256.Sum256(data)
	start := time.Now()
	if _, err := c.Write(data); err != nil {
		t.Fatalf("write: %v (drops a %v, b %v)", err, a.router.Drops(), b.router.Drops())
	}
	_ = c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read digest: %v", err)
	}
	if !bytes.Equal(got, want[:]) {
		t.Fatalf("digest mismatch: the %d bytes did not arrive intact (drops a %v, b %v)", size, a.router.Drops(), b.router.Drops())
	}
	return time.Since(start)
}

func TestNetnsForwarding(t *testing.T) {
	t.Run("plaintext", func(t *testing.T) { testNetnsForwarding(t, false) })
	t.Run("encrypted", func(t *testing.T) { testNetnsForwarding(t, true) })
}

func testNetnsForwarding(t *testing.T, encrypted bool) {
	// Router a enforces 1300 on a 1440 TUN: TCP must learn the smaller path
	// MTU from our ICMP "fragmentation needed" to get anything across.
	tb := newTestbed(t, 1440, 1300, encrypted)
	t.Logf("datapath %s", tb.a.router.Datapath())
	start := time.Now()
	waitReachable(t, tb.a, tb.b.overlay)
	t.Logf("reachable after %v", time.Since(start))
	ping(t, tb.a, tb.b.overlay, 56, 3)
	ping(t, tb.b, tb.a.overlay, 1400, 1)
	const size = 32 << 20
	d := tcpTransfer(t, tb.a, tb.b, size)
	t.Logf("%d MiB a->b in %v (%.2f Gbit/s)", size>>20, d, float64(size)*8/d.Seconds()/1e9)
	tcpTransfer(t, tb.b, tb.a, 4<<20)
	if tb.a.router.Drops()["too-big"] == 0 {
		t.Errorf("no packet was over the 1300 MTU: path MTU discovery was not exercised (drops %v)", tb.a.router.Drops())
	}
	for _, h := range []*dpHost{tb.a, tb.b} {
		s := h.router.Stats()
		if len(s) != 1 || s[0].TxPackets == 0 || s[0].RxPackets == 0 {
			t.Errorf("%s stats %+v", h.ns, s)
		}
	}
}

// TestNetnsThroughput is the datapath benchmark: iperf3 through the tunnel
// beside bare veth between the same two namespaces, for the offload path and
// the water-only path. Bare and tunnel runs alternate, and medians are
// printed, because both hosts share the machine's cores with everything else.
//
//	WEFT_DP_BENCH=1 go test ./router -run TestNetnsThroughput -v -count=1
//
// WEFT_DP_BENCH_SECONDS sets the iperf3 duration (default 5), and
// WEFT_DP_BENCH_ROUNDS the alternating rounds (default 3).
func TestNetnsThroughput(t *testing.T) {
	if os.Getenv("WEFT_DP_BENCH") != "1" {
		t.Skip("benchmark: set WEFT_DP_BENCH=1 to run")
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("benchmark needs iperf3 (apt-get install -y iperf3)")
	}
	secs := cmp.Or(os.Getenv("WEFT_DP_BENCH_SECONDS"), "5")
	rounds, _ := strconv.Atoi(cmp.Or(os.Getenv("WEFT_DP_BENCH_ROUNDS"), "3"))
	rounds = max(rounds, 1)
	for _, v := range []struct {
		name       string
		forceWater bool
		encrypted  bool
	}{
		{"offload", false, false},
		{"offload-encrypted", false, true},
		{"water", true, false},
	} {
		name := v.name
		t.Run(name, func(t *testing.T) {
			t.Setenv(tun.EnvDatapath, map[bool]string{true: "water"}[v.forceWater])
			tb := newTestbed(t, 1500-Overhead(v.encrypted), 0, v.encrypted)
			waitReachable(t, tb.a, tb.b.overlay)
			var bare, one []float64
			for range rounds {
				bare = append(bare, iperf(t, tb.a.ns, tb.b.ns, tb.b.underlay, secs, "1"))
				one = append(one, iperf(t, tb.a.ns, tb.b.ns, tb.b.overlay, secs, "1"))
			}
			bare4 := iperf(t, tb.a.ns, tb.b.ns, tb.b.underlay, secs, "4")
			four := iperf(t, tb.a.ns, tb.b.ns, tb.b.overlay, secs, "4")
			rttBare := ping(t, tb.a, tb.b.underlay, 56, 20)
			rttTunnel := ping(t, tb.a, tb.b.overlay, 56, 20)
			mb, m1 := median(bare), median(one)
			fmt.Printf("\n== %s: datapath %s, overlay MTU %d, iperf3 -t %s, median of %d alternating rounds\n",
				name, tb.a.router.Datapath(), tb.a.router.MTU(), secs, rounds)
			fmt.Printf("%-24s %8s %8s  %s\n", "path", "Gbit/s", "x bare", "rounds")
			fmt.Printf("%-24s %8.2f %8.2f  %.2f\n", "bare veth, 1 stream", mb, 1.0, bare)
			fmt.Printf("%-24s %8.2f %8.2f  %.2f\n", "tunnel, 1 stream", m1, m1/mb, one)
			fmt.Printf("%-24s %8.2f %8.2f\n", "bare veth, 4 streams", bare4, 1.0)
			fmt.Printf("%-24s %8.2f %8.2f\n", "tunnel, 4 streams", four, four/bare4)
			fmt.Printf("ping RTT avg of 20: bare %v, tunnel %v\n", rttBare.Round(time.Microsecond), rttTunnel.Round(time.Microsecond))
			fmt.Printf("drops a %v, b %v\n", tb.a.router.Drops(), tb.b.router.Drops())
		})
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// iperf runs an iperf3 server in serverNS and a client in clientNS, and
// returns the received rate in Gbit/s.
func iperf(t *testing.T, clientNS, serverNS string, server netip.Addr, secs, streams string) float64 {
	t.Helper()
	port := fmt.Sprint(5201 + rand.IntN(1000))
	srv := exec.Command("ip", "netns", "exec", serverNS, "iperf3", "-s", "-1", "--forceflush", "-B", server.String(), "-p", port)
	out, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("start iperf3 server: %v", err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Server listening") {
				ready <- true
				break
			}
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
		t.Fatal("iperf3 server did not start within 5s")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := exec.CommandContext(ctx, "ip", "netns", "exec", clientNS, "iperf3", "-c", server.String(), "-p", port, "-t", secs, "-P", streams, "-J").Output()
	if err != nil {
		t.Fatalf("iperf3 client: %v\n%s", err, res)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(res, &r); err != nil {
		t.Fatalf("iperf3 json: %v", err)
	}
	return r.End.SumReceived.BitsPerSecond / 1e9
}

// ping sends count ICMP echo requests of size payload bytes from h's
// namespace to dst (from h's overlay address when dst is an overlay
// address) and returns the average round trip. Each must be answered
// within 2 s. No ping binary is needed.
func ping(t *testing.T, h *dpHost, dst netip.Addr, size, count int) time.Duration {
	t.Helper()
	rtt, err := tryPing(h, dst, size, count, 2*time.Second)
	if err != nil {
		t.Fatalf("%v (drops %v)", err, h.router.Drops())
	}
	return rtt
}

// waitReachable pings until dst answers, for up to 5 s: an encrypted path
// drops the first packets while the handshake runs.
func waitReachable(t *testing.T, h *dpHost, dst netip.Addr) {
	t.Helper()
	var err error
	for range 20 {
		if _, err = tryPing(h, dst, 56, 1, 250*time.Millisecond); err == nil {
			return
		}
	}
	t.Fatalf("%s never became reachable: %v (drops %v)", dst, err, h.router.Drops())
}

func tryPing(h *dpHost, dst netip.Addr, size, count int, timeout time.Duration) (time.Duration, error) {
	src := h.underlay
	if dst.As4()[0] == 10 {
		src = h.overlay
	}
	var c *icmp.PacketConn
	if err := netnstest.Do(h.ns, func() (err error) {
		c, err = icmp.ListenPacket("ip4:icmp", src.String())
		return err
	}); err != nil {
		return 0, fmt.Errorf("icmp socket in %s: %w", h.ns, err)
	}
	defer c.Close()
	id := rand.IntN(0xffff)
	var total time.Duration
	buf := make([]byte, 65536)
	for seq := range count {
		req, _ := (&icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: make([]byte, size)}}).Marshal(nil)
		start := time.Now()
		_ = c.SetDeadline(start.Add(timeout))
		if _, err := c.WriteTo(req, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			return 0, fmt.Errorf("ping %s from %s: %w", dst, src, err)
		}
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return 0, fmt.Errorf("ping %s from %s, seq %d: %w", dst, src, seq, err)
			}
			m, err := icmp.ParseMessage(1, buf[:n])
			if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && e.Seq == seq && len(e.Data) == size {
				break
			}
		}
		total += time.Since(start)
	}
	return total / time.Duration(count), nil
}
