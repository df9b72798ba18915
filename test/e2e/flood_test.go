package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/test/testbed"
)

// Figures of the flood, from the acceptance of issue 15: 10k spoofed copies
// of one captured initiation a second for 30 s, against sessions rekeyed
// every 3 s.
const (
	floodRate    = 10_000
	floodSeconds = 30
	floodRekey   = 3 * time.Second
	// minFloodTransfer is the least the paced transfer (at most 6.4 MB/s)
	// must move during the flood: 256 KB/s, far below an unloaded run.
	minFloodTransfer = 8 << 20
)

// Wire layout of a handshake initiation (router/wire, router/crypto/noise.go):
// header type TypeHandshake at byte 1, kind 1 (initiation) at byte 8. The
// length is not checked, so the test also runs against older agents
// (157-byte initiations before cookies) to show that it fails there.
const (
	wireTypeHandshake = 3
	kindInitiation    = 1
)

// An attacker on the underlay without the password replays one captured
// handshake initiation at 10k datagrams a second for 30 s from spoofed
// addresses. Every copy is dropped before any Diffie-Hellman, the real
// peer keeps rekeying every 3 s, and a TCP transfer between pods on the two
// hosts runs through the flood to completion.
func TestHandshakeFloodKeepsSessions(t *testing.T) {
	bed := threeHosts(t, testbed.Options{Outside: true},
		"--password", "flood test passphrase", "--rekey-after", floodRekey.String())
	ps := pods(t, bed, 1)
	h1, h2 := bed.Hosts[0], bed.Hosts[1]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Traffic between the pods keeps the session rekeying; the capture runs
	// until it holds an initiation between the two hosts. Only the initiator
	// of the current session rekeys it on time, so the receiver of the last
	// initiation is the host to flood.
	a, b := h1.Addr.String()+":6784", h2.Addr.String()+":6784"
	var ini udpGram
	captureUntil(t, bed, 3*floodRekey, func(pcap []byte) bool {
		ini = lastInitiation(pcap, a, b)
		return ini.payload != nil
	}, func(ctx context.Context) {
		_, _ = testbed.Exec(ctx, ps[0].Netns, "ping", "-q", "-i", "0.2", ps[1].Addr.String())
	})
	if ini.payload == nil {
		t.Fatalf("no handshake initiation between %s and %s within %s", h1.Name, h2.Name, 3*floodRekey)
	}
	peer, victim, peerPod, victimPod := h1, h2, ps[0], ps[1]
	if ini.to != h2.Addr.String()+":6784" {
		peer, victim, peerPod, victimPod = h2, h1, ps[1], ps[0]
	}
	t.Logf("captured an initiation %s -> %s (%d bytes); flooding %s", ini.from, ini.to, len(ini.payload), victim.Name)

	before := metrics(t, victim)

	// The flood runs in the outside namespace (on the underlay, no
	// password) as a helper that stops by itself; the context bounds it too.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	floodCtx, stopFlood := context.WithTimeout(ctx, floodMaxTime+10*time.Second)
	defer stopFlood()
	cmd := exec.CommandContext(floodCtx, "ip", "netns", "exec", bed.Outside, self)
	cmd.Env = append(os.Environ(), "WEFT_E2E_HELPER=flood", "WEFT_E2E_DST="+ini.to,
		"WEFT_E2E_PAYLOAD="+hex.EncodeToString(ini.payload),
		"WEFT_E2E_RATE="+strconv.Itoa(floodRate), "WEFT_E2E_SECONDS="+strconv.Itoa(floodSeconds),
		"WEFT_E2E_COUNT="+strconv.Itoa(floodRate*floodSeconds))
	type result struct {
		out        string
		err        error
		start, end time.Time
	}
	floodDone := make(chan result, 1)
	go func() {
		start := time.Now()
		out, err := cmd.CombinedOutput()
		floodDone <- result{string(out), err, start, time.Now()}
	}()

	// Meanwhile, sample the victim's view of its session with the peer: every
	// distinct LastRekey is one completed handshake.
	rekeys := make(chan []time.Time, 1)
	stopWatch := make(chan struct{})
	go func() {
		seen := map[time.Time]bool{}
		var at []time.Time
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			if conns, err := victim.Client().Connections(ctx); err == nil {
				for _, c := range conns {
					if c.Peer == peer.Name && !c.LastRekey.IsZero() && !seen[c.LastRekey] {
						seen[c.LastRekey] = true
						at = append(at, c.LastRekey)
					}
				}
			}
			select {
			case <-stopWatch:
				rekeys <- at
				return
			case <-ctx.Done(): // the test ended early
				return
			case <-tick.C:
			}
		}
	}()

	// A paced TCP transfer from the peer's pod to the victim's pod that
	// outlasts the flood.
	tr := transferFields(t, peerPod.Netns, victimPod.Netns, victimPod.Addr.String()+":5008", 1<<40, "",
		"WEFT_E2E_SECONDS="+strconv.Itoa(floodSeconds+2))
	fl := <-floodDone
	close(stopWatch)
	at := <-rekeys
	if fl.err != nil {
		t.Fatalf("flood helper: %v: %s", fl.err, fl.out)
	}
	after := metrics(t, victim)

	fields := map[string]string{}
	for _, f := range strings.Fields(fl.out) {
		if k, v, ok := strings.Cut(f, "="); ok {
			fields[k] = v
		}
	}
	sent, _ := strconv.Atoi(fields["sent"])
	during := 0
	for _, r := range at {
		if r.After(fl.start) && r.Before(fl.end) {
			during++
		}
	}
	delta := func(event string) float64 {
		s := `weft_crypto_events_total{event="` + event + `"}`
		return after[s] - before[s]
	}
	dropped := delta("handshake_failed_duplicate") + delta("handshake_failed_cookie_required") +
		delta("handshake_failed_busy") + delta("handshake_failed_rate_limited")
	t.Logf("flood: %s datagrams to %s in %s s (%s sends failed); %s: %d rekeys with %s during the flood, "+
		"%v handshakes completed in all; drops: %v duplicate, %v cookie_required, %v busy, %v rate_limited; "+
		"%v replayed_initiation (after a key exchange); transfer %s -> %s: %s bytes",
		fields["sent"], ini.to, fields["seconds"], fields["failed"], victim.Name, during, peer.Name,
		delta("handshake_completed"), delta("handshake_failed_duplicate"), delta("handshake_failed_cookie_required"),
		delta("handshake_failed_busy"), delta("handshake_failed_rate_limited"), delta("handshake_failed_replayed_initiation"),
		peerPod.Name+"@"+peer.Name, victimPod.Name+"@"+victim.Name, tr["bytes"])

	if sent < floodRate*floodSeconds*9/10 {
		t.Errorf("the flood sent only %d datagrams, want at least %d: it proves less than asked", sent, floodRate*floodSeconds*9/10)
	}
	// The real peer rekeys every 3 s: about 10 in 30 s; a flood that takes
	// the handshake stops them.
	want := floodSeconds / int(floodRekey/time.Second) / 2
	if during < want {
		t.Errorf("%s saw %d rekeys with %s during the %d s flood, want at least %d", victim.Name, during, peer.Name, floodSeconds, want)
	}
	if got := delta("handshake_completed"); got < float64(want) {
		t.Errorf("%s completed %v handshakes during the flood", victim.Name, got)
	}
	// Every copy is counted as dropped before the key exchange; the socket
	// may lose a few under load, so most, not all.
	if dropped < float64(sent)*9/10 {
		t.Errorf("%s counted %v of %d flood datagrams as dropped", victim.Name, dropped, sent)
	}
	// A copy that reached the key exchange fails there on its timestamp: at
	// most the first one, if the original had left the duplicate cache.
	if got := delta("handshake_failed_replayed_initiation"); got > 1 {
		t.Errorf("%v replayed initiations cost %s a key exchange", got, victim.Name)
	}
	// The transfer completed (transferFields checked the digest); it must
	// also have kept flowing: agents without the defences moved under
	// 200 KB in the same 32 s, against about 90 MB with them.
	if n, _ := strconv.ParseInt(tr["bytes"], 10, 64); n < minFloodTransfer {
		t.Errorf("only %s bytes crossed from %s to %s during the flood, want at least %d", tr["bytes"], peer.Name, victim.Name, minFloodTransfer)
	}
}

// captureUntil records the underlay's data-plane datagrams while traffic
// runs until found accepts the capture so far or timeout passes.
func captureUntil(t *testing.T, bed *testbed.Bed, timeout time.Duration, found func(pcap []byte) bool, traffic func(ctx context.Context)) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "underlay.pcap")
	ctx, cancel := context.WithTimeout(context.Background(), timeout+5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", bed.Underlay,
		"tcpdump", "-i", "br0", "-U", "-n", "-s", "0", "-w", file, "udp", "port", "6784")
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("tcpdump: %v (apt-get install -y tcpdump)", err)
	}
	defer func() { _ = cmd.Process.Signal(syscall.SIGINT); _ = cmd.Wait() }()
	if err := testbed.Eventually(ctx, 5*time.Second, func() error {
		if !strings.Contains(stderr.String(), "listening on") {
			return errorf("tcpdump did not start: %s", stderr.String())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	trafficCtx, stopTraffic := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); traffic(trafficCtx) }()
	defer func() { stopTraffic(); <-done }()
	_ = testbed.Eventually(ctx, timeout, func() error {
		b, _ := os.ReadFile(file)
		if found(b) {
			return nil
		}
		return errorf("not yet")
	})
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// udpGram is one UDP datagram of a capture.
type udpGram struct {
	from, to string // address:port
	payload  []byte
}

// lastInitiation returns the last handshake initiation in pcap between the
// endpoints a and b, in either direction (payload nil if there is none).
func lastInitiation(pcap []byte, a, b string) udpGram {
	var last udpGram
	for _, g := range udpGrams(pcap) {
		if (g.from == a && g.to == b || g.from == b && g.to == a) &&
			len(g.payload) > 8 && g.payload[1] == wireTypeHandshake && g.payload[8] == kindInitiation {
			last = g
		}
	}
	return last
}

// udpGrams lists a pcap's (Ethernet, IPv4) UDP datagrams in capture order.
func udpGrams(pcap []byte) []udpGram {
	var out []udpGram
	if len(pcap) < 24 {
		return nil
	}
	for p := pcap[24:]; len(p) >= 16; {
		incl := int(binary.LittleEndian.Uint32(p[8:12]))
		if len(p) < 16+incl {
			break
		}
		frame := p[16 : 16+incl]
		p = p[16+incl:]
		if len(frame) < 14+20+8 || frame[12] != 0x08 || frame[13] != 0x00 {
			continue
		}
		ip := frame[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[9] != 17 || len(ip) < ihl+8 {
			continue
		}
		udp := ip[ihl:]
		out = append(out, udpGram{
			from:    netipString(ip[12:16]) + ":" + strconv.Itoa(int(binary.BigEndian.Uint16(udp[0:2]))),
			to:      netipString(ip[16:20]) + ":" + strconv.Itoa(int(binary.BigEndian.Uint16(udp[2:4]))),
			payload: append([]byte(nil), udp[8:]...),
		})
	}
	return out
}

// metrics reads every sample of host h's /metrics at once.
func metrics(t *testing.T, h *testbed.Host) map[string]float64 {
	t.Helper()
	out := inNetns(t, h.Netns, "WEFT_E2E_HELPER=get", "WEFT_E2E_URL=http://127.0.0.1:6782/metrics")
	m := map[string]float64{}
	for _, line := range strings.Split(out, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m
}
