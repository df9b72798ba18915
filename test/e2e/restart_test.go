package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/childproc"
	"github.com/weftnet/weft/test/testbed"
)

// Restart goals of issue 16: the longest silence of any pod pair while one
// agent restarts (SIGTERM + relaunch as systemd does, or a crash: kill -9 +
// relaunch).
const (
	restartGoalPlain     = time.Second
	restartGoalEncrypted = 1500 * time.Millisecond
)

// Pods on three hosts ping each other every 10 ms, both ways, while one
// agent is restarted: first host1 (launched with no PEER arguments: it must
// be rejoined or rejoin by itself) by SIGTERM, then host2 by kill -9. The
// longest silence of any pair, measured from the replies' own timestamps,
// stays within the goal, plaintext and encrypted.
func TestRestartSilence(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra []string
		goal  time.Duration
	}{
		{"plaintext", nil, restartGoalPlain},
		{"encrypted", []string{"--password", "s3cret pass phrase"}, restartGoalEncrypted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bed := threeHosts(t, testbed.Options{}, tc.extra...)
			ps := pods(t, bed, 1)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			for _, src := range ps {
				for _, dst := range ps {
					if src != dst {
						if err := testbed.Eventually(ctx, 10*time.Second, func() error { return testbed.Ping(ctx, src.Netns, dst.Addr, 1) }); err != nil {
							t.Fatalf("before the restarts, %s -> %s: %v", src.Host.Name, dst.Host.Name, err)
						}
					}
				}
			}
			args := append([]string{"--ipalloc-init", "consensus=3"}, tc.extra...)
			var worst time.Duration
			for _, r := range []struct {
				how   string
				host  *testbed.Host
				peers []string
			}{
				{"SIGTERM", bed.Hosts[0], nil},
				{"kill -9", bed.Hosts[1], []string{bed.Hosts[0].Target()}},
			} {
				probes := startProbes(t, ps)
				var err error
				if r.how == "SIGTERM" {
					err = r.host.Stop(10 * time.Second)
				} else {
					err = r.host.Kill()
				}
				if err != nil {
					t.Fatal(err)
				}
				relaunched := time.Now()
				if err := r.host.Launch(args, r.peers...); err != nil {
					t.Fatal(err)
				}
				// Every pair answers again, for a while (so that a silence
				// that starts late is seen too).
				if err := testbed.Eventually(ctx, 30*time.Second, func() error { return probes.answeredSince(relaunched.Add(2*time.Second), 50) }); err != nil {
					probes.stop()
					t.Fatalf("%s restart of %s: pods do not all answer again: %v\n%s", r.how, r.host.Name, err, probes.summary())
				}
				gap, pair := probes.stop()
				worst = max(worst, gap)
				t.Logf("MEASURED %s: %s restart of %s: longest silence of a pod pair %s (%s)", tc.name, r.how, r.host.Name, gap.Round(time.Millisecond), pair)
				if gap > tc.goal {
					t.Errorf("%s %s restart of %s: longest silence %s (%s), goal <= %s\n%s", tc.name, r.how, r.host.Name, gap.Round(time.Millisecond), pair, tc.goal, probes.summary())
				}
			}
			t.Logf("MEASURED %s: longest silence of any pod pair over the restarts: %s (goal %s)", tc.name, worst.Round(time.Millisecond), tc.goal)
		})
	}
}

// pulsePort is where the pulse helper listens and answers in every pod.
const pulsePort = 7411

// pulse is the probe helper (WEFT_E2E_HELPER=pulse) run in a pod: it answers
// every request on pulsePort, sends a request to every target (comma-
// separated addresses) every 10 ms, and prints "<target> <unix nanoseconds>"
// for each answer as it arrives. Send errors (no route while an agent is
// down) are ignored: the probe must outlive them. It stops after two
// minutes at most, or when its parent dies.
func pulse(targets string) error {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: pulsePort})
	if err != nil {
		return err
	}
	defer c.Close()
	var dsts []*net.UDPAddr
	for _, a := range strings.Split(targets, ",") {
		ip := net.ParseIP(a)
		if ip == nil {
			return fmt.Errorf("pulse: bad target %q", a)
		}
		dsts = append(dsts, &net.UDPAddr{IP: ip, Port: pulsePort})
	}
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for range tick.C {
			for _, d := range dsts {
				_, _ = c.WriteToUDP([]byte("?"), d)
			}
		}
	}()
	out := bufio.NewWriter(os.Stdout)
	buf := make([]byte, 64)
	until := time.Now().Add(2 * time.Minute)
	_ = c.SetReadDeadline(until)
	for {
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			if time.Now().After(until) {
				return nil
			}
			continue // e.g. ICMP errors reported on the socket
		}
		switch {
		case n == 1 && buf[0] == '?':
			_, _ = c.WriteToUDP([]byte("!"), from)
		case n == 1 && buf[0] == '!':
			fmt.Fprintf(out, "%s %d\n", from.IP, time.Now().UnixNano())
			_ = out.Flush()
		}
	}
}

// probeSet is one pulse helper per pod; it follows every ordered pair.
type probeSet struct {
	t      *testing.T
	cmds   []*exec.Cmd
	done   []chan struct{}
	probes map[string]*probe // by "src->dst" host names
}

// probe follows one pair's answers by the receive times the helper
// stamped, so a loaded machine that runs the test slowly does not stretch
// the figure.
type probe struct {
	name string

	mu      sync.Mutex
	last    time.Time // latest answer
	maxGap  time.Duration
	replies []time.Time // bounded
}

func startProbes(t *testing.T, ps []*testbed.Pod) *probeSet {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s := &probeSet{t: t, probes: map[string]*probe{}}
	hostOf := map[string]string{}
	for _, p := range ps {
		hostOf[p.Addr.String()] = p.Host.Name
	}
	for _, src := range ps {
		var targets []string
		for _, dst := range ps {
			if src != dst {
				targets = append(targets, dst.Addr.String())
				name := src.Host.Name + "->" + dst.Host.Name
				s.probes[src.Host.Name+" "+dst.Addr.String()] = &probe{name: name}
			}
		}
		cmd := exec.Command("ip", "netns", "exec", src.Netns, self)
		cmd.Env = append(os.Environ(), "WEFT_E2E_HELPER=pulse", "WEFT_E2E_TARGETS="+strings.Join(targets, ","))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := childproc.Start(cmd); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go s.read(src.Host.Name, bufio.NewScanner(out), done)
		s.cmds = append(s.cmds, cmd)
		s.done = append(s.done, done)
	}
	t.Cleanup(func() { s.stop() })
	// The probes are running once every pair has answered a few times.
	if err := testbed.Eventually(context.Background(), 10*time.Second, func() error { return s.answeredSince(time.Time{}, 5) }); err != nil {
		s.stop()
		t.Fatalf("probes do not start: %v", err)
	}
	return s
}

// read records the answers to the pod on host src.
func (s *probeSet) read(src string, sc *bufio.Scanner, done chan struct{}) {
	defer close(done)
	for sc.Scan() {
		from, nanos, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		ns, err := strconv.ParseInt(nanos, 10, 64)
		p := s.probes[src+" "+from]
		if err != nil || p == nil {
			continue
		}
		at := time.Unix(0, ns)
		p.mu.Lock()
		if !p.last.IsZero() {
			p.maxGap = max(p.maxGap, at.Sub(p.last))
		}
		p.last = at
		if len(p.replies) < 20000 {
			p.replies = append(p.replies, at)
		}
		p.mu.Unlock()
	}
}

// answeredSince reports nil once every pair has n answers after t.
func (s *probeSet) answeredSince(t time.Time, n int) error {
	for _, p := range s.sorted() {
		p.mu.Lock()
		count := 0
		for i := len(p.replies) - 1; i >= 0 && p.replies[i].After(t); i-- {
			count++
		}
		p.mu.Unlock()
		if count < n {
			return fmt.Errorf("%s: %d answers since %s, want %d", p.name, count, t.Format("15:04:05.000"), n)
		}
	}
	return nil
}

func (s *probeSet) sorted() []*probe {
	out := make([]*probe, 0, len(s.probes))
	for _, p := range s.probes {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// stop ends the helpers and returns the longest silence and its pair.
func (s *probeSet) stop() (time.Duration, string) {
	for i, cmd := range s.cmds {
		if cmd.Process == nil {
			continue
		}
		_ = cmd.Process.Kill()
		<-s.done[i]
		_ = cmd.Wait()
		cmd.Process = nil
	}
	var worst time.Duration
	pair := ""
	for _, p := range s.sorted() {
		p.mu.Lock()
		if p.maxGap > worst {
			worst, pair = p.maxGap, p.name
		}
		p.mu.Unlock()
	}
	return worst, pair
}

func (s *probeSet) summary() string {
	var b strings.Builder
	for _, p := range s.sorted() {
		p.mu.Lock()
		fmt.Fprintf(&b, "  %s: %d answers, longest silence %s, last answer %s\n", p.name, len(p.replies),
			p.maxGap.Round(time.Millisecond), p.last.Format("15:04:05.000"))
		p.mu.Unlock()
	}
	return b.String()
}
