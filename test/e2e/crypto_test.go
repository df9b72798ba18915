package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/test/testbed"
)

const marker = "WEFT-PLAINTEXT-MARKER-7f3a"

// capture records the underlay's data-plane datagrams (UDP 6784) on the
// bridge while fn runs and returns the pcap file's bytes.
func capture(t *testing.T, bed *testbed.Bed, fn func()) []byte {
	t.Helper()
	return captureFilter(t, bed, fn, "udp", "port", "6784")
}

// captureFilter is capture with another tcpdump filter.
func captureFilter(t *testing.T, bed *testbed.Bed, fn func(), filter ...string) []byte {
	t.Helper()
	file := filepath.Join(t.TempDir(), "underlay.pcap")
	args := append([]string{"netns", "exec", bed.Underlay, "tcpdump", "-i", "br0", "-U", "-n", "-s", "0", "-w", file}, filter...)
	cmd := exec.Command("ip", args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("tcpdump: %v (apt-get install -y tcpdump)", err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = cmd.Process.Signal(syscall.SIGINT)
			_ = cmd.Wait()
		}
	}
	defer stop()
	// tcpdump says "listening on br0..." once it captures.
	r := bufio.NewReader(stderr)
	var said strings.Builder
	for !strings.Contains(said.String(), "listening on") {
		line, err := r.ReadString('\n')
		said.WriteString(line)
		if err != nil {
			t.Fatalf("tcpdump did not start: %s", said.String())
		}
	}
	go func() { _, _ = io.Copy(io.Discard, r) }()
	fn()
	stop()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// datagrams splits a pcap (Ethernet, IPv4) into the UDP payloads sent from
// src to dst.
func datagrams(pcap []byte, src, dst string) [][]byte {
	var out [][]byte
	for _, g := range udpGrams(pcap) {
		if g.from == src && g.to == dst {
			out = append(out, g.payload)
		}
	}
	return out
}

func netipString(b []byte) string {
	return strconv.Itoa(int(b[0])) + "." + strconv.Itoa(int(b[1])) + "." + strconv.Itoa(int(b[2])) + "." + strconv.Itoa(int(b[3]))
}

// splitTrain cuts a GSO train, as the capture sees it before segmentation,
// into its datagrams: every one starts with the same 8-byte header (version,
// type, receiver index).
func splitTrain(g []byte) [][]byte {
	var out [][]byte
	for len(g) > 0 {
		next := bytes.Index(g[8:], g[:8])
		if next < 0 {
			return append(out, g)
		}
		out = append(out, g[:8+next])
		g = g[8+next:]
	}
	return out
}

// metric reads one sample of host h's /metrics ("" if absent).
func metric(t *testing.T, h *testbed.Host, series string) float64 {
	t.Helper()
	out := inNetns(t, h.Netns, "WEFT_E2E_HELPER=get", "WEFT_E2E_URL=http://127.0.0.1:6782/metrics")
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, series+" ") {
			v, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, series)), 64)
			return v
		}
	}
	return 0
}

// With a password: pods still reach each other; the underlay carries no
// plaintext; a replayed, a tampered and a forged datagram are dropped and
// counted; a host with another password reaches nothing.
func TestEncryptedDataPlane(t *testing.T) {
	bed := threeHosts(t, testbed.Options{Hosts: 4}, "--password", "s3cret passphrase")
	ps := pods(t, bed, 1)
	p1, p2, p3 := ps[0], ps[1], ps[2]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, pair := range [][2]*testbed.Pod{{p1, p2}, {p2, p3}, {p3, p1}} {
		if err := testbed.Eventually(ctx, 10*time.Second, func() error { return testbed.Ping(ctx, pair[0].Netns, pair[1].Addr, 1) }); err != nil {
			t.Fatalf("%s -> %s: %v", pair[0].Host.Name, pair[1].Host.Name, err)
		}
	}
	h1, h2 := bed.Hosts[0], bed.Hosts[1]
	pcap := capture(t, bed, func() {
		transferPattern(t, p1.Netns, p2.Netns, p2.Addr.String()+":5005", 4<<20, marker)
	})
	src, dst := h1.Addr.String()+":6784", h2.Addr.String()+":6784"
	grams := datagrams(pcap, src, dst)
	if len(grams) < 100 {
		t.Fatalf("captured only %d datagrams %s -> %s: the capture saw nothing", len(grams), src, dst)
	}
	if strings.Contains(string(pcap), marker) {
		t.Fatal("the marker crossed the underlay in plaintext")
	}

	// Replay the last data datagram, flip one bit of another, and forge one
	// from host1's endpoint: each is dropped and counted by host2.
	var data [][]byte
	for _, g := range grams {
		if len(g) > 100 && g[1] == 2 { // wire.TypeEncrypted
			data = append(data, splitTrain(g)...)
		}
	}
	if len(data) < 2 {
		t.Fatalf("no encrypted data datagrams captured")
	}
	replay := data[len(data)-1]
	// Flip one bit of the nonce counter (bytes 8..15) to a value never seen,
	// so the replay window lets it through to the authentication check.
	flipped := append([]byte(nil), data[len(data)-2]...)
	flipped[9] ^= 0x01
	before := metric(t, h2, `weft_dropped_packets_total{reason="decrypt"}`)
	for _, g := range [][]byte{replay, flipped} {
		inNetns(t, h1.Netns, "WEFT_E2E_HELPER=inject", "WEFT_E2E_SRC="+src, "WEFT_E2E_DST="+dst,
			"WEFT_E2E_PAYLOAD="+hex.EncodeToString(g))
	}
	if err := testbed.Eventually(ctx, 5*time.Second, func() error {
		if got := metric(t, h2, `weft_dropped_packets_total{reason="decrypt"}`); got < before+2 {
			return errorf("decrypt drops %v, want at least %v", got, before+2)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if metric(t, h2, `weft_crypto_events_total{event="open_dropped_replay"}`) < 1 {
		t.Error("the replayed datagram was not counted as a replay")
	}
	if metric(t, h2, `weft_crypto_events_total{event="open_dropped_auth"}`) < 1 {
		t.Error("the tampered datagram was not counted as failing authentication")
	}

	// A host with another password is refused and reaches no pod.
	h4 := bed.Hosts[3]
	launch(t, h4, []string{"--password", "wrong password", "--ipalloc-init", "observer"}, h1.Target())
	waitLog(t, h4, 20*time.Second, "different password")
	if _, err := h4.Exec(ctx, "ping", "-c", "2", "-W", "1", p1.Addr.String()); err == nil {
		t.Error("a host with the wrong password reached a pod")
	}
}

// A plaintext mesh does show the marker: the capture above can fail.
func TestPlaintextCaptureSeesMarker(t *testing.T) {
	bed := threeHosts(t, testbed.Options{})
	ps := pods(t, bed, 1)
	pcap := capture(t, bed, func() {
		transferPattern(t, ps[0].Netns, ps[1].Netns, ps[1].Addr.String()+":5006", 1<<20, marker)
	})
	if !strings.Contains(string(pcap), marker) {
		t.Fatal("plaintext transfer: marker not in the capture; the capture check proves nothing")
	}
}

// Sessions are rekeyed under a long transfer without losing the connection.
func TestRekeyDuringTransfer(t *testing.T) {
	bed := threeHosts(t, testbed.Options{}, "--password", "rekey passphrase", "--rekey-after", "3s")
	ps := pods(t, bed, 1)
	before := metric(t, bed.Hosts[0], `weft_crypto_events_total{event="rekeys"}`) +
		metric(t, bed.Hosts[1], `weft_crypto_events_total{event="rekeys"}`)
	start := time.Now()
	transferPattern(t, ps[0].Netns, ps[1].Netns, ps[1].Addr.String()+":5007", 1<<40, "", "WEFT_E2E_SECONDS=15")
	after := metric(t, bed.Hosts[0], `weft_crypto_events_total{event="rekeys"}`) +
		metric(t, bed.Hosts[1], `weft_crypto_events_total{event="rekeys"}`)
	t.Logf("%s transfer, %v rekeys between host1 and host2", time.Since(start).Round(time.Second), after-before)
	if after-before < 2 {
		t.Errorf("only %v rekeys during a 15 s transfer with --rekey-after 3s", after-before)
	}
}
