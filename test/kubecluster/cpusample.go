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
// keyed "node/pod-UID".
type cpuSample struct {
	at  time.Time
	use map[string]time.Duration
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

// podCommand names a pod by the command of one of its containers' processes
// other than the sandbox's pause ("" while only the sandbox runs).
func podCommand(usagePath string) string {
	dir := filepath.Dir(usagePath)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return ""
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
			return strings.Join(args, " ")
		}
	}
	return ""
}

func (s *cpuSampler) sample() {
	now := time.Now()
	use := map[string]time.Duration{}
	var unnamed []string
	paths := map[string]string{}
	for _, n := range s.nodes {
		for key, path := range podCgroups(n) {
			if d, ok := readCPU(path); ok {
				use[key] = d
				paths[key] = path
			}
		}
	}
	s.mu.Lock()
	for key := range use {
		if s.names[key] == "" {
			unnamed = append(unnamed, key)
		}
	}
	s.mu.Unlock()
	// Naming reads /proc; only for pods not named yet.
	named := map[string]string{}
	for _, key := range unnamed {
		if cmd := podCommand(paths[key]); cmd != "" {
			named[key] = cmd
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples = append(s.samples, cpuSample{at: now, use: use})
	for k, v := range named {
		s.names[k] = v
	}
}

// cpuUse is one pod's CPU time within a window.
type cpuUse struct {
	Key, Command string
	CPU          time.Duration
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
		out = append(out, cpuUse{Key: key, Command: name, CPU: d})
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
		parts = append(parts, fmt.Sprintf("%s %s (pod %s)", u.Command, u.CPU.Round(time.Millisecond), uid))
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
