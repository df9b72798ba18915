package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as a tiny TCP server and client that run inside
// namespaces (ip netns exec <ns> <test binary>), so transfers need no tools
// beyond the test itself. The helper is selected by WEFT_E2E_HELPER.
func TestMain(m *testing.M) {
	switch os.Getenv("WEFT_E2E_HELPER") {
	case "":
		os.Exit(m.Run())
	case "server":
		exit(serveOnce(os.Getenv("WEFT_E2E_ADDR")))
	case "client":
		n, _ := strconv.ParseInt(os.Getenv("WEFT_E2E_BYTES"), 10, 64)
		exit(sendOnce(os.Getenv("WEFT_E2E_ADDR"), n, os.Getenv("WEFT_E2E_PATTERN")))
	case "get":
		exit(get(os.Getenv("WEFT_E2E_URL")))
	case "probe":
		exit(probeTCP(os.Getenv("WEFT_E2E_TARGETS")))
	case "udp":
		exit(sendUDP(os.Getenv("WEFT_E2E_SRC"), os.Getenv("WEFT_E2E_TARGETS"), os.Getenv("WEFT_E2E_PAYLOAD")))
	case "pulse":
		exit(pulse(os.Getenv("WEFT_E2E_TARGETS")))
	case "inject":
		exit(inject(os.Getenv("WEFT_E2E_SRC"), os.Getenv("WEFT_E2E_DST"), os.Getenv("WEFT_E2E_PAYLOAD")))
	case "flood":
		rate, _ := strconv.Atoi(os.Getenv("WEFT_E2E_RATE"))
		count, _ := strconv.Atoi(os.Getenv("WEFT_E2E_COUNT"))
		secs, _ := strconv.Atoi(os.Getenv("WEFT_E2E_SECONDS"))
		exit(flood(os.Getenv("WEFT_E2E_DST"), os.Getenv("WEFT_E2E_PAYLOAD"), rate, count, time.Duration(secs)*time.Second))
	}
}

func exit(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// serveOnce accepts one connection (within 60 s), tells the client which
// address it sees, hashes everything it receives and answers the digest.
func serveOnce(addr string) error {
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Println("listening") // the parent waits for this line
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(60 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(120 * time.Second))
	remote := c.RemoteAddr().(*net.TCPAddr).IP.String()
	if _, err := fmt.Fprintf(c, "%s\n", remote); err != nil {
		return err
	}
	h := sha256.New()
	if _, err := io.Copy(h, c); err != nil {
		return err
	}
	_, err = fmt.Fprintf(c, "%s\n", hex.EncodeToString(h.Sum(nil)))
	return err
}

// sendOnce sends n deterministic pseudo-random bytes (or pattern repeated)
// and prints what the server saw: "seen=<client address> match=<true|false>".
func sendOnce(addr string, n int64, pattern string) error {
	c, err := net.DialTimeout("tcp4", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(120 * time.Second))
	r := bufio.NewReader(c)
	seen, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("read the address the server sees: %w", err)
	}
	h := sha256.New()
	var src io.Reader = io.LimitReader(rand.NewChaCha8([32]byte{'w', 'e', 'f', 't'}), n)
	if pattern != "" {
		src = io.LimitReader(repeat(pattern), n)
	}
	if secs, _ := strconv.Atoi(os.Getenv("WEFT_E2E_SECONDS")); secs > 0 {
		src = &paced{r: src, until: time.Now().Add(time.Duration(secs) * time.Second)}
	}
	sent, err := io.Copy(io.MultiWriter(c, h), src)
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	digest, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("read digest: %w", err)
	}
	fmt.Printf("seen=%s match=%v bytes=%d\n", strings.TrimSpace(seen), strings.TrimSpace(digest) == hex.EncodeToString(h.Sum(nil)), sent)
	return nil
}

// repeat is an endless reader of one string.
type repeat string

func (r repeat) Read(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		n += copy(b[n:], r)
	}
	return n, nil
}

// paced spreads a transfer over a duration: 64 KiB every 10 ms until then.
type paced struct {
	r     io.Reader
	until time.Time
}

func (p *paced) Read(b []byte) (int, error) {
	if time.Now().After(p.until) {
		return 0, io.EOF
	}
	time.Sleep(10 * time.Millisecond)
	return p.r.Read(b[:min(len(b), 64<<10)])
}

// get prints the body of an HTTP GET (for servers inside a namespace).
func get(url string) error {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(os.Stdout, resp.Body)
	return err
}

// inject sends one UDP datagram with a forged source through a raw socket,
// as an attacker on the underlay could.
func inject(src, dst, payloadHex string) error {
	s, err := netip.ParseAddrPort(src)
	if err != nil {
		return err
	}
	d, err := netip.ParseAddrPort(dst)
	if err != nil {
		return err
	}
	payload, err := hex.DecodeString(payloadHex)
	if err != nil {
		return err
	}
	pkt := make([]byte, 28+len(payload))
	pkt[0], pkt[8], pkt[9] = 0x45, 64, 17 // IPv4, TTL, UDP
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	copy(pkt[12:16], s.Addr().AsSlice())
	copy(pkt[16:20], d.Addr().AsSlice())
	binary.BigEndian.PutUint16(pkt[10:], ipChecksum(pkt[:20]))
	binary.BigEndian.PutUint16(pkt[20:], s.Port())
	binary.BigEndian.PutUint16(pkt[22:], d.Port())
	binary.BigEndian.PutUint16(pkt[24:], uint16(8+len(payload))) // checksum 0: none, allowed for IPv4
	copy(pkt[28:], payload)
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	return syscall.Sendto(fd, pkt, 0, &syscall.SockaddrInet4{Addr: d.Addr().As4()})
}

// Bounds of the flood helper, whatever its caller asks: it stops by itself.
const (
	floodMaxCount = 300_000
	floodMaxTime  = 35 * time.Second
)

// testNet is the only range the flood helper sends to or from (RFC 2544
// benchmarking addresses, which the test bed uses).
var testNet = netip.MustParsePrefix("198.18.0.0/15")

// flood sends one UDP payload to dst about rate times a second for d (at
// most count datagrams, floodMaxCount and floodMaxTime), each from another
// spoofed source address in 198.19.0.0/16 and port, through a raw socket:
// an attacker replaying a captured datagram from the underlay. It prints
// "sent=N failed=N seconds=S".
func flood(dst, payloadHex string, rate, count int, d time.Duration) error {
	to, err := netip.ParseAddrPort(dst)
	if err != nil {
		return err
	}
	if !to.Addr().Is4() || !testNet.Contains(to.Addr()) {
		return fmt.Errorf("flood: %s is outside the test range %s", to, testNet)
	}
	payload, err := hex.DecodeString(payloadHex)
	if err != nil {
		return err
	}
	if rate <= 0 {
		return fmt.Errorf("flood: rate %d", rate)
	}
	count = min(max(count, 0), floodMaxCount)
	d = min(d, floodMaxTime)
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("flood: raw socket: %w", err)
	}
	defer syscall.Close(fd)
	sa := &syscall.SockaddrInet4{Addr: to.Addr().As4()}
	pkt := make([]byte, 28+len(payload))
	pkt[0], pkt[8], pkt[9] = 0x45, 64, 17 // IPv4, TTL, UDP
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	copy(pkt[16:20], sa.Addr[:])
	binary.BigEndian.PutUint16(pkt[22:], to.Port())
	binary.BigEndian.PutUint16(pkt[24:], uint16(8+len(payload))) // UDP checksum 0: none
	copy(pkt[28:], payload)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0x77656674))
	start := time.Now()
	sent, failed := 0, 0
	for sent+failed < count {
		elapsed := time.Since(start)
		if elapsed >= d {
			break
		}
		// Catch up with the schedule, then yield a millisecond: about rate
		// datagrams a second without a timer per datagram.
		due := min(count, int(elapsed.Seconds()*float64(rate))+1)
		for sent+failed < due {
			r := rng.Uint64()
			pkt[12], pkt[13], pkt[14], pkt[15] = 198, 19, byte(r), byte(r>>8)|1
			binary.BigEndian.PutUint16(pkt[20:], 1024+uint16(r>>16)%64512)
			pkt[10], pkt[11] = 0, 0
			binary.BigEndian.PutUint16(pkt[10:], ipChecksum(pkt[:20]))
			if err := syscall.Sendto(fd, pkt, 0, sa); err != nil {
				failed++ // ENOBUFS when the queue is full: counted, not sent
				continue
			}
			sent++
		}
		time.Sleep(time.Millisecond)
	}
	fmt.Printf("sent=%d failed=%d seconds=%.1f\n", sent, failed, time.Since(start).Seconds())
	return nil
}

// ipChecksum is the IPv4 header checksum of hdr (its checksum field zero).
func ipChecksum(hdr []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(hdr); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(hdr[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// inNetns runs the test binary as a helper inside namespace ns.
func inNetns(t *testing.T, ns string, env ...string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, self)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper %v in %s: %v: %s", env, ns, err, out)
	}
	return string(out)
}

// transfer sends n bytes over TCP from namespace clientNS to a server in
// serverNS listening on addr:port and returns the client address the server
// saw; it fails the test unless the bytes arrived identical.
func transfer(t *testing.T, clientNS, serverNS, addr string, n int64) string {
	t.Helper()
	return transferPattern(t, clientNS, serverNS, addr, n, "")
}

// transferPattern is transfer of a repeated pattern ("" = random bytes).
func transferPattern(t *testing.T, clientNS, serverNS, addr string, n int64, pattern string, env ...string) string {
	t.Helper()
	return transferFields(t, clientNS, serverNS, addr, n, pattern, env...)["seen"]
}

// transferFields is transferPattern returning what the client reported:
// "seen" (the client address the server saw), "match" and "bytes" (sent).
func transferFields(t *testing.T, clientNS, serverNS, addr string, n int64, pattern string, env ...string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", serverNS, self)
	srv.Env = append(os.Environ(), "WEFT_E2E_HELPER=server", "WEFT_E2E_ADDR="+addr)
	stdout, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var serr strings.Builder
	srv.Stderr = &serr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "listening" {
		t.Fatalf("server in %s did not start: %v %s", serverNS, err, serr.String())
	}
	cl := exec.CommandContext(ctx, "ip", "netns", "exec", clientNS, self)
	cl.Env = append(os.Environ(), "WEFT_E2E_HELPER=client", "WEFT_E2E_ADDR="+addr, fmt.Sprintf("WEFT_E2E_BYTES=%d", n),
		"WEFT_E2E_PATTERN="+pattern)
	cl.Env = append(cl.Env, env...)
	out, err := cl.CombinedOutput()
	if err != nil {
		t.Fatalf("transfer %s -> %s: %v: %s (server: %s)", clientNS, addr, err, out, serr.String())
	}
	fields := map[string]string{}
	for _, f := range strings.Fields(string(out)) {
		if k, v, ok := strings.Cut(f, "="); ok {
			fields[k] = v
		}
	}
	if fields["match"] != "true" {
		t.Fatalf("transfer %s -> %s: data arrived altered: %s", clientNS, addr, out)
	}
	return fields
}
