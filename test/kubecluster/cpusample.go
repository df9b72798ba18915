package kubecluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// cpuSampleEvery is how often cpuSampler reads the pods' CPU time: well
// below the silences it explains (the restart goals are 1 s and more).
const cpuSampleEvery = 50 * time.Millisecond

// cpuSampler records the CPU time every pod of every node has used (its
// cgroup's usage) while a restart runs, so that a silence of the pods on a
// node can be laid beside what ran there during it: a pod silent even to
// itself over loopback was not running, and the pods that did run in that
// time (on a cgroup v1 machine a BestEffort pod has cpu.shares 2 against
// the Burstable pods' requests) are the candidates.
type cpuSampler struct {
	nodes []*Node

	mu      sync.Mutex
	samples []cpuSample
	names   map[string]string // key -> the pod's main command, as far as known
}

// cpuSample is one reading: the CPU time used so far by each pod cgroup,
// keyed "node/pod-UID", and by the weft agent's process in it, if any.
type cpuSample struct {
	at    time.Time
	use   map[string]time.Duration
	agent map[string]time.Duration
}

func newCPUSampler(nodes []*Node) *cpuSampler {
	return &cpuSampler{nodes: nodes, names: map[string]string{}}
}

// run samples until ctx ends.
func (s *cpuSampler) run(ctx context.Context) {
	tick := time.NewTicker(cpuSampleEvery)
	defer tick.Stop()
	for {
		s.sample()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// podCgroups lists the pod cgroups of node n (Guaranteed pods sit directly
// in kubepods, the others in its besteffort and burstable children), with
// the file that holds each one's CPU time.
func podCgroups(n *Node) map[string]string {
	out := map[string]string{}
	v2 := false
	if _, err := os.Stat(filepath.Join(cgroupFS, "cgroup.controllers")); err == nil {
		v2 = true
	}
	base := filepath.Join(cgroupFS, "cpuacct", n.Cgroup, "kubepods")
	file := "cpuacct.usage"
	if v2 {
		base, file = filepath.Join(cgroupFS, n.Cgroup, "kubepods"), "cpu.stat"
	}
	for _, qos := range []string{"", "besteffort", "burstable"} {
		ents, err := os.ReadDir(filepath.Join(base, qos))
		if err != nil {
			continue
		}
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), "pod") {
				out[n.Name+"/"+strings.TrimPrefix(e.Name(), "pod")] = filepath.Join(base, qos, e.Name(), file)
			}
		}
	}
	return out
}

// readCPU reads a cgroup's CPU time: cpuacct.usage (v1, nanoseconds) or
// the usage_usec line of cpu.stat (v2).
func readCPU(path string) (time.Duration, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	if filepath.Base(path) == "cpu.stat" {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
				us, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				return time.Duration(us) * time.Microsecond, err == nil
			}
		}
		return 0, false
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return time.Duration(ns), err == nil
}

// podProcs looks at the processes of a pod's containers: it names the pod
// by its main command (the first long-lived one other than the sandbox's
// pause: exec probes, runc and init containers come and go) and returns the
// CPU time the weft agent's process ("weft launch") has used so far, to
// tell it from the rest of its pod (exec probes, runc, the init container).
func podProcs(usagePath string) (name string, agent time.Duration) {
	dir := filepath.Dir(usagePath)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", 0
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		procs, err := os.ReadFile(filepath.Join(dir, e.Name(), "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, pid := range strings.Fields(string(procs)) {
			cmd, err := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
			if err != nil || len(cmd) == 0 {
				continue
			}
			args := strings.Fields(string(bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))
			if len(args) == 0 || args[len(args)-1] == "pause" || filepath.Base(args[0]) == "pause" {
				continue
			}
			if len(args) > 2 {
				args = args[:2]
			}
			args[0] = filepath.Base(args[0])
			cmdName := strings.Join(args, " ")
			if cmdName == "weft launch" {
				agent += procCPU(pid)
			}
			if name == "" && !transient(cmdName) {
				name = cmdName
			}
		}
	}
	return name, agent
}

// transient commands do not name a pod: they run for a moment in it.
func transient(cmd string) bool {
	first, _, _ := strings.Cut(cmd, " ")
	return first == "runc" || first == "weft-cni" || cmd == "weft probe" || cmd == "weft install-cni"
}

// procCPU is a process's CPU time (user and system) from /proc/PID/stat.
func procCPU(pid string) time.Duration {
	b, err := os.ReadFile(filepath.Join("/proc", pid, "stat"))
	if err != nil {
		return 0
	}
	// The command (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(ut+st) * (time.Second / 100) // USER_HZ
}

func (s *cpuSampler) sample() {
	now := time.Now()
	use := map[string]time.Duration{}
	agent := map[string]time.Duration{}
	named := map[string]string{}
	for _, n := range s.nodes {
		for key, path := range podCgroups(n) {
			d, ok := readCPU(path)
			if !ok {
				continue
			}
			use[key] = d
			name, a := podProcs(path)
			if a > 0 {
				agent[key] = a
			}
			if name != "" {
				named[key] = name
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples = append(s.samples, cpuSample{at: now, use: use, agent: agent})
	for k, v := range named {
		if s.names[k] == "" {
			s.names[k] = v
		}
	}
}

// cpuUse is one pod's CPU time within a window, and its weft agent's.
type cpuUse struct {
	Key, Command string
	CPU, Agent   time.Duration
}

// usedIn gives the CPU time each pod of node used within [from, to] (from
// the last sample at or before from to the first at or after to, so the
// window is widened by up to one sample period at each end), most first.
func (s *cpuSampler) usedIn(node string, from, to time.Time) []cpuUse {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.samples) == 0 {
		return nil
	}
	i := sort.Search(len(s.samples), func(i int) bool { return s.samples[i].at.After(from) })
	if i > 0 {
		i--
	}
	j := sort.Search(len(s.samples), func(j int) bool { return !s.samples[j].at.Before(to) })
	if j == len(s.samples) {
		j--
	}
	a, b := s.samples[i], s.samples[j]
	var out []cpuUse
	for key, end := range b.use {
		if !strings.HasPrefix(key, node+"/") {
			continue
		}
		d := end - a.use[key] // a pod started in the window counts from 0
		if d <= 0 {
			continue
		}
		name := s.names[key]
		if name == "" {
			name = "(sandbox only)"
		}
		var agent time.Duration
		if ae, ok := b.agent[key]; ok {
			agent = ae - a.agent[key] // a process started in the window counts from 0
		}
		out = append(out, cpuUse{Key: key, Command: name, CPU: d, Agent: max(agent, 0)})
	}
	sort.Slice(out, func(x, y int) bool { return out[x].CPU > out[y].CPU })
	return out
}

// formatUse is "weft launch 412ms (pod 1a2b3c4d), netprobe probe 3ms, ...".
func formatUse(us []cpuUse) string {
	if len(us) == 0 {
		return "nothing sampled"
	}
	var parts []string
	for _, u := range us {
		uid := u.Key[strings.IndexByte(u.Key, '/')+1:]
		if len(uid) > 8 {
			uid = uid[:8]
		}
		p := fmt.Sprintf("%s %s (pod %s", u.Command, u.CPU.Round(time.Millisecond), uid)
		if u.Agent > 0 {
			p += fmt.Sprintf("; agent process %s, the rest probes, runc, init", u.Agent.Round(time.Millisecond))
		}
		parts = append(parts, p+")")
	}
	return strings.Join(parts, ", ")
}

// loadAvg is the machine's 1-minute load average, as /proc/loadavg gives it.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}
