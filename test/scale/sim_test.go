package scale_test

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/agent/agenttest"
	"github.com/weftnet/weft/mesh"
	"github.com/weftnet/weft/mesh/meshtest"
)

// simOptions shape one simulated run.
type simOptions struct {
	N         int
	Partition bool          // also measure a 50/50 partition and its heal
	Steady    time.Duration // window of the steady-state figures
	Deadline  time.Duration // of each phase; past it the phase is reported as not reached
	Timing    mesh.Timing   // zero: simTiming
	// Unsettled opens the steady window 3 s after formation, while the
	// follow-up push/pulls of the joins still run: a stricter bound on
	// traffic, and half a minute shorter (the 100-agent test of make test).
	Unsettled bool
}

// result is one row of the table; a zero duration is a phase not reached
// within its deadline (or not run).
type result struct {
	Kind      string // "real" or "simulated"
	N         int
	Formation time.Duration
	// FormCPU is the CPU time spent until formation, per agent (the
	// process's for simulated agents, each agent process's for real ones),
	// and FormBytes the gossip bytes each agent sent until then (simulated
	// only): figures of the work formation takes that do not depend on how
	// loaded the machine is.
	FormCPU   time.Duration
	FormBytes float64
	GossipIn  float64 // bytes/s per agent, packets and streams, steady state
	GossipOut float64
	MemPerAgt uint64  // bytes: RSS of the agent (real); live heap / N (simulated)
	CPUPerAgt float64 // fraction of one core per agent, idle
	Dead      time.Duration
	Whole     time.Duration
	Heal      time.Duration // simulated only
	RingKeys  int
	StateSize int     // bytes of the IPAM state in a push/pull (simulated)
	PushPull  float64 // bytes per gossip stream (join, push/pull), both ways (simulated)
	Note      string  // what was not reached, and why
}

func (r *result) miss(format string, args ...any) {
	if r.Note != "" {
		r.Note += "; "
	}
	r.Note += fmt.Sprintf(format, args...)
}

// waitEach polls ok for every item until all pass at once, or the
// deadline. It returns the time taken and, on a miss, the first item (by
// name) that still failed and why.
func waitEach[T any](items []T, name func(T) string, deadline time.Duration, ok func(T) error) (time.Duration, error) {
	start := time.Now()
	i := 0
	var last error
	for {
		// A cursor: items passed stay passed until a full sweep, which then
		// confirms all of them at once (one could have regressed).
		for i < len(items) {
			if last = ok(items[i]); last != nil {
				break
			}
			i++
		}
		if i == len(items) {
			for j, it := range items {
				if last = ok(it); last != nil {
					i = j
					break
				}
			}
			if last == nil {
				return time.Since(start), nil
			}
		}
		if time.Since(start) > deadline {
			return time.Since(start), fmt.Errorf("%s: %w", name(items[i]), last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitAll is waitEach for simulated agents.
func waitAll(nodes []*agenttest.Node, deadline time.Duration, ok func(*agenttest.Node) error) (time.Duration, error) {
	return waitEach(nodes, func(n *agenttest.Node) string { return n.Name }, deadline, ok)
}

// formed: ready, and sees exactly want alive and none suspect.
func formed(want int) func(*agenttest.Node) error {
	return func(n *agenttest.Node) error {
		a := n.Agent()
		if a == nil {
			return fmt.Errorf("not running")
		}
		v := a.MeshView()
		if v.Alive != want || v.Suspect != 0 {
			return fmt.Errorf("sees %d alive, %d suspect, want %d alive", v.Alive, v.Suspect, want)
		}
		if !a.Ready() {
			why := "?"
			if st, err := n.Status(); err == nil && st.IPAM != nil {
				why = st.IPAM.State
			}
			return fmt.Errorf("not ready (IPAM: %s)", why)
		}
		return nil
	}
}

// followUpsDone: no follow-up push/pull of a join is still to come.
func followUpsDone(n *agenttest.Node) error {
	a := n.Agent()
	if a == nil {
		return fmt.Errorf("not running")
	}
	if f := a.MeshView().FollowUps; f > 0 {
		return fmt.Errorf("%d follow-up push/pulls to come", f)
	}
	return nil
}

// sees: exactly want alive and none suspect (the others declared dead).
func sees(want int) func(*agenttest.Node) error {
	return func(n *agenttest.Node) error {
		a := n.Agent()
		if a == nil {
			return fmt.Errorf("not running")
		}
		v := a.MeshView()
		if v.Alive != want || v.Suspect != 0 {
			return fmt.Errorf("sees %d alive, %d suspect, %d dead, want %d alive", v.Alive, v.Suspect, v.Dead, want)
		}
		return nil
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func gossipTotals(nodes []*agenttest.Node) (s meshtest.Stats) {
	for _, n := range nodes {
		g := n.GossipStats()
		s.BytesIn += g.BytesIn
		s.BytesOut += g.BytesOut
		s.StreamBytesIn += g.StreamBytesIn
		s.StreamBytesOut += g.StreamBytesOut
		s.StreamsOut += g.StreamsOut
	}
	return s
}

// simTiming is mesh.DefaultTiming with failure detection made patient: a
// thousand agents share this machine's two cores (with whatever else runs
// on it), so an agent is often not scheduled within DefaultTiming's
// 500 ms probe timeout, and would be declared dead though it is not; on
// real hosts each agent has a CPU of its own. Gossip and push/pull
// intervals, which set the traffic measured, are DefaultTiming's.
func simTiming() mesh.Timing {
	t := mesh.DefaultTiming()
	t.ProbeInterval = 2 * time.Second
	t.ProbeTimeout = 1500 * time.Millisecond
	t.SuspicionMult = 6
	t.TCPTimeout = 10 * time.Second
	return t
}

// simulate runs opts.N agents in this process (real memberlist over the
// in-memory transport, real IPAM, no data plane) through formation, a
// steady window, a crash of five agents and their relaunch, and optionally
// a 50/50 partition and its heal.
func simulate(t *testing.T, opts simOptions) result {
	t.Helper()
	if opts.Timing == (mesh.Timing{}) {
		opts.Timing = simTiming()
	}
	if opts.Steady == 0 {
		opts.Steady = 10 * time.Second
	}
	if opts.Deadline == 0 {
		opts.Deadline = 90 * time.Second
	}
	r := result{Kind: "simulated", N: opts.N}
	// Hundreds of agents in one process churn a big heap: collect less
	// often, so the agents, not the collector, get the CPU they share.
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	// ... but within bounds: at 1,000 agents a live heap of 2 GB grew to a
	// resident 11 GB at 400 %. Past the limit the collector runs as needed.
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(6 << 30))
	heapBefore := liveHeap()
	// The ring is seeded with every agent, as Kubernetes bootstraps it
	// (the Nodes recorded at the start): each owns a range from the start,
	// so the ring has the N keys of a mesh in use. Consensus among
	// hundreds of peers is a bootstrap for small bare-metal meshes.
	names := make([]string, opts.N)
	for i := range names {
		names[i] = fmt.Sprintf("host%d", i+1)
	}
	c := agenttest.New(t, agenttest.Options{
		N: opts.N, NoDataplane: true, Timing: opts.Timing,
		IPAMInit: "seed=" + strings.Join(names, ","),
		LogLevel: slog.LevelWarn, StopWorkers: 64,
		// The last warnings of each agent are enough to tell why a run
		// failed; a thousand logs of 4 MiB each are not.
		LogKeep: 64 << 10,
	})
	start, cpuStart := time.Now(), cpuTime()
	c.StartAll()
	all := c.Nodes
	if os.Getenv("WEFT_SCALE_TRACE") != "" {
		stop := traceMesh(t, all, start, cpuStart)
		defer stop()
	}

	_, err := waitAll(all, opts.Deadline, formed(opts.N))
	g := gossipTotals(all)
	r.FormCPU = (cpuTime() - cpuStart) / time.Duration(opts.N)
	r.FormBytes = float64(g.BytesOut+g.StreamBytesOut) / float64(opts.N)
	if err != nil {
		r.miss("no formation within %s (%v)", opts.Deadline, err)
		return r
	}
	r.Formation = time.Since(start)
	t.Logf("%d agents: formed in %s, %s CPU and %.0f kB sent per agent", opts.N, r.Formation, r.FormCPU, r.FormBytes/1e3)

	// Steady state: after the follow-up push/pulls of every join (the last
	// comes 14 rejoin intervals after the last join: 28 s with the default
	// timing), each as big as a join; then let the burst pass.
	if opts.Unsettled {
		t.Logf("%d agents: steady window opened before the follow-ups end", opts.N)
	} else if settled, err := waitAll(all, opts.Deadline, followUpsDone); err != nil {
		r.miss("follow-ups not over within %s (%v)", opts.Deadline, err)
	} else {
		t.Logf("%d agents: follow-up push/pulls over %s after formation", opts.N, settled)
	}
	time.Sleep(3 * time.Second)
	g0, cpu0, t0 := gossipTotals(all), cpuTime(), time.Now()
	time.Sleep(opts.Steady)
	g1, cpu1, el := gossipTotals(all), cpuTime(), time.Since(t0).Seconds()
	n := float64(opts.N)
	r.GossipIn = float64(g1.BytesIn+g1.StreamBytesIn-g0.BytesIn-g0.StreamBytesIn) / el / n
	r.GossipOut = float64(g1.BytesOut+g1.StreamBytesOut-g0.BytesOut-g0.StreamBytesOut) / el / n
	r.CPUPerAgt = (cpu1 - cpu0).Seconds() / el / n
	if streams := g1.StreamsOut - g0.StreamsOut; streams > 0 {
		r.PushPull = float64(g1.StreamBytesOut+g1.StreamBytesIn-g0.StreamBytesOut-g0.StreamBytesIn) / 2 / float64(streams)
	}
	if h := liveHeap(); h > heapBefore {
		r.MemPerAgt = (h - heapBefore) / uint64(opts.N)
	}
	r.StateSize, r.RingKeys = all[0].Agent().GossipStateSize()

	// kill -9 of five agents (not the first: everyone was given it as peer).
	victims := all[len(all)-5:]
	rest := all[:len(all)-5]
	var wg sync.WaitGroup
	for _, v := range victims {
		wg.Add(1)
		go func() { defer wg.Done(); v.Crash() }()
	}
	wg.Wait()
	if r.Dead, err = waitAll(rest, opts.Deadline, sees(opts.N-5)); err != nil {
		r.Dead = 0
		r.miss("crashed agents not all dead within %s (%v)", opts.Deadline, err)
		return r
	}
	t.Logf("%d agents: 5 crashed found dead in %s", opts.N, r.Dead)
	for _, v := range victims {
		v.Start()
	}
	if r.Whole, err = waitAll(all, opts.Deadline, formed(opts.N)); err != nil {
		r.Whole = 0
		r.miss("not whole after relaunch within %s (%v)", opts.Deadline, err)
		return r
	}
	t.Logf("%d agents: whole again %s after the relaunch", opts.N, r.Whole)

	if opts.Partition {
		half := opts.N / 2
		var a, b []int
		for i := range opts.N {
			if i < half {
				a = append(a, i)
			} else {
				b = append(b, i)
			}
		}
		c.Partition(a, b)
		_, errA := waitAll(all[:half], opts.Deadline, sees(half))
		_, errB := waitAll(all[half:], opts.Deadline, sees(opts.N-half))
		if errA != nil || errB != nil {
			c.Heal()
			r.miss("partition not seen within %s (%v %v)", opts.Deadline, errA, errB)
			return r
		}
		t.Logf("%d agents: partition seen on both sides", opts.N)
		c.Heal()
		if r.Heal, err = waitAll(all, opts.Deadline, formed(opts.N)); err != nil {
			r.Heal = 0
			r.miss("not whole after the partition healed within %s (%v)", opts.Deadline, err)
		}
	}
	return r
}

// TestSimulated100 is the simulation at 100 agents that runs with every
// `go test`: the mesh forms, finds crashed agents dead, takes them back,
// and stays within bounds of time, traffic and memory.
func TestSimulated100(t *testing.T) {
	if testing.Short() {
		t.Skip("100 agents take about a minute")
	}
	// Deadlines with room for a loaded machine (the test shares two cores
	// with whatever else runs); the bounds checked below are the goals.
	// The partition and its heal are measured by make scale only: at 100
	// agents on this machine the heal did not always complete within the
	// deadline (see site/benchmarks.md).
	r := simulate(t, simOptions{N: 100, Steady: 5 * time.Second, Deadline: 150 * time.Second, Unsettled: true})
	t.Logf("%+v", r)
	if r.Note != "" {
		t.Fatal(r.Note)
	}
	// Convergence is checked by the deadlines above, not by the time goals
	// (site/benchmarks.md): on a shared two-core machine formation took
	// from 29 s to two minutes. Traffic and memory are per agent and do
	// not depend on the load.
	if r.Dead <= 0 || r.Whole <= 0 {
		t.Errorf("crash and relaunch not measured: %+v", r)
	}
	if r.GossipIn > 10e3 || r.GossipOut > 10e3 {
		t.Errorf("steady gossip %.0f B/s in, %.0f B/s out per agent, want <= 10 kB/s", r.GossipIn, r.GossipOut)
	}
	// The heap per agent includes the harness's buffer of the agent's log
	// (up to 8 MiB when probes time out and warnings pile up): the bound
	// catches leaks and per-peer state of more than about 200 kB a peer.
	if r.MemPerAgt > 24<<20 {
		t.Errorf("live heap %d bytes per agent, want <= 24 MiB", r.MemPerAgt)
	}
	if r.RingKeys > 4*100 {
		t.Errorf("ring of %d keys for 100 agents", r.RingKeys)
	}
}

// traceMesh logs, every second until stopped, how far the mesh is: the
// agents formed, the spread of alive counts, suspect flags, and the
// transport's counters, against the process's CPU time (which, unlike the
// wall clock, a loaded machine does not stretch).
func traceMesh(t *testing.T, all []*agenttest.Node, start time.Time, cpuStart time.Duration) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			alive := make([]int, 0, len(all))
			suspects, withSuspect, ok := 0, 0, 0
			for _, n := range all {
				a := n.Agent()
				if a == nil {
					continue
				}
				v := a.MeshView()
				alive = append(alive, v.Alive)
				suspects += v.Suspect
				if v.Suspect > 0 {
					withSuspect++
				}
				// Not formed(): its reason for a node not ready is a
				// status call through the local API, which for a
				// thousand nodes a second held up this trace for a minute.
				if v.Alive == len(all) && v.Suspect == 0 && a.Ready() {
					ok++
				}
			}
			slices.Sort(alive)
			var dropped, streams, refused, blocked uint64
			for _, n := range all {
				g := n.GossipStats()
				dropped += g.PacketsDropped
				streams += g.StreamsOut
				refused += g.StreamsRefused
				blocked += g.Blocked
			}
			if len(alive) == 0 {
				continue
			}
			t.Logf("trace t=%s cpu=%s formed=%d alive min/med/max=%d/%d/%d suspect=%d on %d dropped=%d streams=%d refused=%d blocked=%d",
				time.Since(start).Round(100*time.Millisecond), (cpuTime() - cpuStart).Round(10*time.Millisecond), ok,
				alive[0], alive[len(alive)/2], alive[len(alive)-1], suspects, withSuspect, dropped, streams, refused, blocked)
		}
	}()
	return func() { close(done); wg.Wait() }
}
