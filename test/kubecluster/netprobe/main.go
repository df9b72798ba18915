// Command netprobe is the workload of the Kubernetes test cluster, built into
// two tiny images (it needs no libc, no shell):
//
//	netprobe pause                 the pod sandbox ("pause") image: waits for SIGTERM
//	netprobe probe [flags]         a test pod: serves TCP and probes its peers
//	netprobe latency [flags]       times N requests to each target once, writes the percentiles, serves until SIGTERM
//
// A probing pod answers every TCP connection on --listen with one line
// "NAME\n" and, every --interval, connects to each peer named in the peers
// file (lines "NAME HOST:PORT", rewritten by the test as pods come and go)
// and in --peer flags. It keeps per-peer results (first success, last
// success, longest gap between successes, failures) and writes them as JSON to
// --results-dir/NAME.json atomically after every round, so the test can read
// them from the node's filesystem without `kubectl exec` or `kubectl logs`.
// Changes (first reach, lost, back) also go to stdout, for /var/log/pods.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/weftnet/weft/internal/atomicfile"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: netprobe pause | netprobe probe [flags] | netprobe latency [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	switch os.Args[1] {
	case "pause":
		<-ctx.Done()
	case "probe":
		err = probeMain(ctx, os.Args[2:])
	case "latency":
		err = latencyMain(ctx, os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "netprobe:", err)
		os.Exit(1)
	}
}

// PeerResult is what one pod knows about reaching one peer. The test decodes
// the same JSON (kubecluster.ProbeReport).
type PeerResult struct {
	Addr   string `json:"addr"`
	Answer string `json:"answer,omitempty"` // name the peer answered with
	// Answers counts every name answered: a Service spreads requests over
	// its endpoints, and the test checks which ones answered.
	Answers  map[string]int `json:"answers,omitempty"`
	FirstOK  time.Time      `json:"first_ok,omitzero"`
	LastOK   time.Time      `json:"last_ok,omitzero"`
	MaxGap   float64        `json:"max_gap_seconds"` // longest time between two successes
	Fails    int            `json:"fails"`
	LastErr  string         `json:"last_err,omitempty"`
	Attempts int            `json:"attempts"`
}

// Report is the results file of one pod.
type Report struct {
	Name    string                 `json:"name"`
	Started time.Time              `json:"started"`
	Updated time.Time              `json:"updated"`
	Rounds  int                    `json:"rounds"`
	Peers   map[string]*PeerResult `json:"peers"`
	// UDP is the fine-grained view (--udp-interval): per peer, when its
	// echoes came and every silence between two of them.
	UDP map[string]*UDPResult `json:"udp,omitempty"`
}

// UDPResult is one peer's echoes of the datagrams sent every --udp-interval.
type UDPResult struct {
	Addr   string    `json:"addr"`
	Echoes int       `json:"echoes"`
	LastOK time.Time `json:"last_ok,omitzero"`
	MaxGap float64   `json:"max_gap_seconds"`
	// Gaps are the silences longer than gapRecord, oldest first (the last
	// maxGaps), so a test can take the longest one within a time window.
	Gaps []Gap `json:"gaps,omitempty"`
}

// Gap is a silence between two echoes.
type Gap struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
}

const (
	gapRecord = 50 * time.Millisecond
	maxGaps   = 256
)

type probeConfig struct {
	name       string
	listen     string
	peersFile  string
	peers      []string // NAME=HOST:PORT
	resultsDir string
	interval   time.Duration
	timeout    time.Duration
	udpEvery   time.Duration // 0: no UDP probing
}

func probeMain(ctx context.Context, args []string) error {
	var cfg probeConfig
	var peers string
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	fs.StringVar(&cfg.name, "name", os.Getenv("POD_NAME"), "this pod's name (answered to peers, names the results file)")
	fs.StringVar(&cfg.listen, "listen", ":7777", "TCP address to serve")
	fs.StringVar(&cfg.peersFile, "peers-file", "", "file of lines NAME HOST:PORT to probe (re-read every round)")
	fs.StringVar(&peers, "peers", "", "comma-separated NAME=HOST:PORT to probe as well")
	fs.StringVar(&cfg.resultsDir, "results-dir", "", "write NAME.json here after every round")
	fs.DurationVar(&cfg.interval, "interval", 500*time.Millisecond, "time between probe rounds")
	fs.DurationVar(&cfg.timeout, "timeout", time.Second, "connect+answer timeout per peer")
	fs.DurationVar(&cfg.udpEvery, "udp-interval", 0, "also send each peer a UDP datagram this often and time the echoes (0: off)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.name == "" {
		return errors.New("--name (or POD_NAME) is required")
	}
	if peers != "" {
		cfg.peers = strings.Split(peers, ",")
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	go serve(ctx, ln, cfg.name)
	// Every probe echoes UDP on the same port, for the peers' UDP probing.
	pc, err := net.ListenPacket("udp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listen udp: %w", err)
	}
	go echo(ctx, pc)
	fmt.Printf("%s serving on %s (tcp, udp echo)\n", cfg.name, ln.Addr())
	probeLoop(ctx, cfg)
	return nil
}

// echo sends every datagram back where it came from.
func echo(ctx context.Context, pc net.PacketConn) {
	go func() { <-ctx.Done(); pc.Close() }()
	buf := make([]byte, 512)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			continue
		}
		_, _ = pc.WriteTo(buf[:n], from)
	}
}

// udpProber sends "NAME" to every peer each interval from one socket and
// records, per peer, when the echoes come back: the silence of a pair is
// measured to within the interval, as the test bed's restart test does.
type udpProber struct {
	mu      sync.Mutex
	results map[string]*UDPResult
	addrs   map[string]*net.UDPAddr // resolved peer -> its name, by address
}

func (u *udpProber) run(ctx context.Context, cfg probeConfig) {
	pc, err := net.ListenPacket("udp", ":0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "netprobe: udp:", err)
		return
	}
	go func() { <-ctx.Done(); pc.Close() }()
	go u.receive(ctx, pc)
	tick := time.NewTicker(cfg.udpEvery)
	defer tick.Stop()
	for {
		targets := readPeers(cfg)
		u.mu.Lock()
		for name, addr := range targets {
			if name == cfg.name {
				// Its own echo server over loopback, which no network
				// carries: a silence there is this pod (or its node)
				// not running, so the test can tell that from the
				// network's silences (see kubecluster's gapIn).
				_, port, err := net.SplitHostPort(addr)
				if err != nil {
					continue
				}
				addr = net.JoinHostPort("127.0.0.1", port)
			}
			r := u.results[name]
			if r == nil || r.Addr != addr {
				ua, err := net.ResolveUDPAddr("udp", addr)
				if err != nil {
					continue
				}
				u.results[name] = &UDPResult{Addr: addr}
				u.addrs[name] = ua
			}
		}
		addrs := make(map[string]*net.UDPAddr, len(u.addrs))
		for name, a := range u.addrs {
			addrs[name] = a
		}
		u.mu.Unlock()
		for name, a := range addrs {
			_, _ = pc.WriteTo([]byte(name), a)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (u *udpProber) receive(ctx context.Context, pc net.PacketConn) {
	buf := make([]byte, 512)
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			continue
		}
		now := time.Now()
		name := string(buf[:n])
		u.mu.Lock()
		if r := u.results[name]; r != nil {
			if !r.LastOK.IsZero() {
				gap := now.Sub(r.LastOK)
				r.MaxGap = max(r.MaxGap, gap.Seconds())
				if gap > gapRecord {
					r.Gaps = append(r.Gaps, Gap{From: r.LastOK, To: now})
					if len(r.Gaps) > maxGaps {
						r.Gaps = r.Gaps[len(r.Gaps)-maxGaps:]
					}
				}
			}
			r.LastOK = now
			r.Echoes++
		}
		u.mu.Unlock()
	}
}

// snapshot copies the results for the report.
func (u *udpProber) snapshot() map[string]*UDPResult {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make(map[string]*UDPResult, len(u.results))
	for name, r := range u.results {
		c := *r
		c.Gaps = append([]Gap(nil), r.Gaps...)
		out[name] = &c
	}
	return out
}

// serve answers every connection with this pod's name.
func serve(ctx context.Context, ln net.Listener, name string) {
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			continue
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			_, _ = io.WriteString(c, name+"\n")
		}()
	}
}

func probeLoop(ctx context.Context, cfg probeConfig) {
	rep := &Report{Name: cfg.name, Started: time.Now(), Peers: map[string]*PeerResult{}}
	var udp *udpProber
	if cfg.udpEvery > 0 {
		udp = &udpProber{results: map[string]*UDPResult{}, addrs: map[string]*net.UDPAddr{}}
		go udp.run(ctx, cfg)
	}
	tick := time.NewTicker(cfg.interval)
	defer tick.Stop()
	for {
		targets := readPeers(cfg)
		var mu sync.Mutex
		var wg sync.WaitGroup
		for name, addr := range targets {
			if name == cfg.name {
				continue
			}
			r := rep.Peers[name]
			if r == nil || r.Addr != addr {
				r = &PeerResult{Addr: addr}
				rep.Peers[name] = r
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				answer, err := dial(ctx, addr, cfg.timeout)
				now := time.Now()
				mu.Lock()
				defer mu.Unlock()
				record(cfg.name, name, r, answer, err, now)
			}()
		}
		wg.Wait()
		rep.Rounds++
		rep.Updated = time.Now()
		if udp != nil {
			rep.UDP = udp.snapshot()
		}
		if cfg.resultsDir != "" {
			if err := writeReport(cfg.resultsDir, rep); err != nil {
				fmt.Fprintln(os.Stderr, "netprobe: results:", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func record(self, peer string, r *PeerResult, answer string, err error, now time.Time) {
	r.Attempts++
	if err != nil {
		if r.LastErr == "" && !r.LastOK.IsZero() {
			fmt.Printf("%s %s lost %s (%s): %v\n", now.Format(time.RFC3339Nano), self, peer, r.Addr, err)
		}
		r.Fails++
		r.LastErr = err.Error()
		return
	}
	if r.FirstOK.IsZero() {
		r.FirstOK = now
		fmt.Printf("%s %s reached %s (%s) answering %q\n", now.Format(time.RFC3339Nano), self, peer, r.Addr, answer)
	} else if r.LastErr != "" {
		fmt.Printf("%s %s back to %s (%s) after %s\n", now.Format(time.RFC3339Nano), self, peer, r.Addr, now.Sub(r.LastOK).Round(time.Millisecond))
	}
	if !r.LastOK.IsZero() {
		if gap := now.Sub(r.LastOK).Seconds(); gap > r.MaxGap {
			r.MaxGap = gap
		}
	}
	r.LastOK, r.LastErr, r.Answer = now, "", answer
	if r.Answers == nil {
		r.Answers = map[string]int{}
	}
	r.Answers[answer]++
}

// dial connects and reads the peer's one-line answer.
func dial(ctx context.Context, addr string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read answer: %w", err)
	}
	return strings.TrimSpace(line), nil
}

// readPeers merges --peers with the peers file; a missing or unreadable file
// counts as empty (the test writes it once pods have addresses).
func readPeers(cfg probeConfig) map[string]string {
	out := map[string]string{}
	add := func(name, addr string) {
		if name != "" && addr != "" {
			out[name] = addr
		}
	}
	for _, p := range cfg.peers {
		name, addr, _ := strings.Cut(p, "=")
		add(name, addr)
	}
	if cfg.peersFile == "" {
		return out
	}
	b, err := os.ReadFile(cfg.peersFile)
	if err != nil {
		return out
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 {
			add(f[0], f[1])
		}
	}
	return out
}

func writeReport(dir string, rep *Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, rep.Name+".json"), b, 0o644)
}
