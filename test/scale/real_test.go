package scale_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/test/testbed"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat
// (100 on every Linux architecture Go supports).
const clockTicks = 100

// procSample is what one agent process used up to a moment.
type procSample struct {
	cpu      time.Duration // user + system
	rss      uint64        // bytes
	rx, tx   uint64        // bytes on the underlay interface of its namespace
	observed time.Time
}

// agentPid finds the weft process in h's namespace: `ip netns exec` execs
// weft in place, so it is the only process there.
func agentPid(ctx context.Context, h *testbed.Host) (int, error) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", h.Netns).Output()
	if err != nil {
		return 0, fmt.Errorf("%s: ip netns pids: %w", h.Name, err)
	}
	fields := strings.Fields(string(out))
	if len(fields) != 1 {
		return 0, fmt.Errorf("%s: %d processes in the namespace, want the agent only", h.Name, len(fields))
	}
	return strconv.Atoi(fields[0])
}

func sampleProc(pid int) (procSample, error) {
	s := procSample{observed: time.Now()}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	rest := string(stat[strings.LastIndexByte(string(stat), ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		return s, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, _ := strconv.ParseUint(f[11], 10, 64) // utime is field 14, 12th after the name
	st, _ := strconv.ParseUint(f[12], 10, 64)
	s.cpu = time.Duration(ut+st) * time.Second / clockTicks
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			s.rss = kb << 10
		}
	}
	// /proc/PID/net/dev is the table of the process's own namespace.
	dev, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/dev", pid))
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(dev), "\n") {
		name, v, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) != "eth0" {
			continue
		}
		f := strings.Fields(v)
		if len(f) >= 9 {
			s.rx, _ = strconv.ParseUint(f[0], 10, 64)
			s.tx, _ = strconv.ParseUint(f[8], 10, 64)
		}
	}
	return s, nil
}

// waitHosts is waitEach for real agents.
func waitHosts(hosts []*testbed.Host, deadline time.Duration, ok func(*testbed.Host) error) (time.Duration, error) {
	return waitEach(hosts, func(h *testbed.Host) string { return h.Name }, deadline, ok)
}

func statusOf(h *testbed.Host) (api.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return h.Client().Status(ctx)
}

func realFormed(want int) func(*testbed.Host) error {
	return func(h *testbed.Host) error {
		if !h.Running() {
			return errors.New("agent exited")
		}
		st, err := statusOf(h)
		if err != nil {
			return err
		}
		if st.Alive != want || !st.Ready {
			return fmt.Errorf("sees %d alive, want %d; ready %v", st.Alive, want, st.Ready)
		}
		return nil
	}
}

// seesDead: every victim is dead (not alive, not suspect) in h's view.
func seesDead(victims []string) func(*testbed.Host) error {
	return func(h *testbed.Host) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		peers, err := h.Client().Peers(ctx)
		if err != nil {
			return err
		}
		for _, p := range peers {
			if slices.Contains(victims, p.Name) && p.State != "dead" {
				return fmt.Errorf("sees %s %s", p.Name, p.State)
			}
		}
		return nil
	}
}

// measureReal launches n `weft launch` processes in test-bed namespaces at
// once, each given one peer (host1, and host1 is given host2), and measures
// them as simulate does.
func measureReal(t *testing.T, n int) result {
	r := result{Kind: "real", N: n}
	// WEFT_SCALE_DIR keeps the agents' state and logs there (the default, a
	// test temporary directory, goes with the test).
	bed := testbed.Start(t, testbed.Options{Hosts: n, Prefix: "wsc", Dir: os.Getenv("WEFT_SCALE_DIR"),
		// 50 hosts on one kernel share its ARP table: see StaticNeighbours.
		StaticNeighbours: true})
	deadline := 60 * time.Second
	launch := func(h *testbed.Host) error {
		peer := bed.Hosts[0]
		if h == peer {
			peer = bed.Hosts[1]
		}
		return h.Launch(nil, peer.Target())
	}
	start := time.Now()
	for _, h := range bed.Hosts {
		if err := launch(h); err != nil {
			t.Fatal(err)
		}
	}
	if os.Getenv("WEFT_SCALE_TRACE") != "" {
		stop := traceReal(t, bed.Hosts, start)
		defer stop()
	}
	_, err := waitHosts(bed.Hosts, deadline, realFormed(n))
	ctx := context.Background()
	pids := make([]int, n)
	// The CPU the agents spent until formation (or the deadline): a figure
	// of the start's work that does not depend on the machine's load.
	var formCPU time.Duration
	for i, h := range bed.Hosts {
		pid, perr := agentPid(ctx, h)
		if perr != nil {
			if err == nil {
				t.Fatal(perr)
			}
			continue // an agent that exited: the note says so
		}
		pids[i] = pid
		if s, serr := sampleProc(pid); serr == nil {
			formCPU += s.cpu
		}
	}
	r.FormCPU = formCPU / time.Duration(n)
	if err != nil {
		r.miss("no formation within %s (%v; %s CPU per agent)", deadline, err, r.FormCPU.Round(time.Millisecond))
		logTails(t, bed.Hosts)
		return r
	}
	r.Formation = time.Since(start)
	t.Logf("%d real agents: formed in %s, %s CPU per agent", n, r.Formation, r.FormCPU.Round(time.Millisecond))

	time.Sleep(3 * time.Second) // let the burst of formation pass
	before := make([]procSample, n)
	for i, pid := range pids {
		s, err := sampleProc(pid)
		if err != nil {
			t.Fatal(err)
		}
		before[i] = s
	}
	time.Sleep(10 * time.Second)
	var rx, tx, cpu float64
	var rss uint64
	for i, pid := range pids {
		s, err := sampleProc(pid)
		if err != nil {
			t.Fatal(err)
		}
		d := s.observed.Sub(before[i].observed).Seconds()
		rx += float64(s.rx-before[i].rx) / d
		tx += float64(s.tx-before[i].tx) / d
		cpu += (s.cpu - before[i].cpu).Seconds() / d
		rss += s.rss
	}
	r.GossipIn, r.GossipOut = rx/float64(n), tx/float64(n)
	r.CPUPerAgt = cpu / float64(n)
	r.MemPerAgt = rss / uint64(n)
	logMemSplit(t, pids)

	victims := bed.Hosts[n-5:]
	rest := bed.Hosts[:n-5]
	var names []string
	var wg sync.WaitGroup
	for _, v := range victims {
		names = append(names, v.Name)
		wg.Add(1)
		go func() { defer wg.Done(); _ = v.Kill() }()
	}
	wg.Wait()
	if r.Dead, err = waitHosts(rest, deadline, seesDead(names)); err != nil {
		r.Dead = 0
		r.miss("killed agents not all dead within %s (%v)", deadline, err)
		return r
	}
	start = time.Now()
	for _, v := range victims {
		if err := launch(v); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := waitHosts(bed.Hosts, deadline, realFormed(n)); err != nil {
		r.miss("not whole after relaunch within %s (%v)", deadline, err)
		logTails(t, bed.Hosts)
		return r
	}
	r.Whole = time.Since(start)
	return r
}

// logTails logs the last lines of the agents that are not formed, to say
// why a phase was missed.
func logTails(t *testing.T, hosts []*testbed.Host) {
	shown := 0
	for _, h := range hosts {
		if realFormed(len(hosts))(h) == nil || shown == 3 {
			continue
		}
		shown++
		log := strings.TrimRight(h.Log(), "\n")
		lines := strings.Split(log, "\n")
		t.Logf("---- last lines of %s ----\n%s", h.Name, strings.Join(lines[max(0, len(lines)-15):], "\n"))
	}
}

// traceReal logs, every second until stop, how the real agents' start goes
// (WEFT_SCALE_TRACE=1): the machine's load, the CPU the agents used, the
// spread of their alive counts, and how often an agent declared a peer
// unreachable (its log's "peer unreachable"), the flapping of issue 21.
func traceReal(t *testing.T, hosts []*testbed.Host, start time.Time) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		pids := make([]int, len(hosts))
		read := make([]int64, len(hosts)) // bytes of each log already counted
		unreachable := 0
		victims := map[string]int{}
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			var cpu time.Duration
			alive := make([]int, 0, len(hosts))
			formed := 0
			for i, h := range hosts {
				if pids[i] == 0 {
					pids[i], _ = agentPid(context.Background(), h)
				}
				if pids[i] != 0 {
					if s, err := sampleProc(pids[i]); err == nil {
						cpu += s.cpu
					}
				}
				if st, err := statusOf(h); err == nil {
					alive = append(alive, st.Alive)
					if st.Alive == len(hosts) && st.Ready {
						formed++
					}
				}
				for _, line := range newLines(h.LogPath, &read[i]) {
					if strings.Contains(line, `msg="peer unreachable"`) {
						unreachable++
						if _, rest, ok := strings.Cut(line, " peer="); ok {
							name, _, _ := strings.Cut(rest, " ")
							victims[name]++
						}
					}
				}
			}
			slices.Sort(alive)
			spread := "-"
			if len(alive) > 0 {
				spread = fmt.Sprintf("%d/%d/%d", alive[0], alive[len(alive)/2], alive[len(alive)-1])
			}
			var most []string
			for name, c := range victims {
				most = append(most, fmt.Sprintf("%s×%d", name, c))
			}
			slices.Sort(most)
			t.Logf("trace t=%s load=%s agents' cpu=%s answering=%d formed=%d alive min/med/max=%s unreachable=%d %v",
				time.Since(start).Round(100*time.Millisecond), loadAvg(), cpu.Round(10*time.Millisecond),
				len(alive), formed, spread, unreachable, most)
		}
	}()
	return func() { close(done); wg.Wait() }
}

// newLines returns the whole lines of the file at path past *off, and moves
// *off past them: logs grow by megabytes at debug level, and the trace must
// not read them again every second.
func newLines(path string, off *int64) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, *off, 1<<40))
	if err != nil {
		return nil
	}
	end := bytes.LastIndexByte(b, '\n')
	if end < 0 {
		return nil
	}
	*off += int64(end + 1)
	return strings.Split(string(b[:end]), "\n")
}

// logMemSplit logs what the agents' RSS is made of (/proc/PID/smaps_rollup):
// pages of the weft binary, shared by every agent on a host, and their own
// anonymous memory; PSS charges the shared pages to each process in part.
func logMemSplit(t *testing.T, pids []int) {
	var rss, pss, anon float64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		if err != nil {
			t.Logf("memory split: %v", err)
			return
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			kb, _ := strconv.ParseFloat(f[1], 64)
			switch f[0] {
			case "Rss:":
				rss += kb
			case "Pss:":
				pss += kb
			case "Anonymous:":
				anon += kb
			}
		}
	}
	n := float64(len(pids)) * 1024
	t.Logf("memory per agent: RSS %.1f MiB = binary and other file pages %.1f MiB + anonymous %.1f MiB; PSS %.1f MiB",
		rss/n, (rss-anon)/n, anon/n, pss/n)
}
