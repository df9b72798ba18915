package scale_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/weftnet/weft/agent"
	"github.com/weftnet/weft/agent/agenttest"
	"github.com/weftnet/weft/mesh/meshtest"
)

// The floor (issue 21): how long, and how much CPU, hashicorp/memberlist
// alone takes to form a mesh of N members in this process, over the same
// in-memory transport and with the same settings as the simulated agents,
// but without anything of weft (no delegates' work, no IPAM, no rejoin or
// follow-up push/pulls). Whatever weft's simulation costs beyond this is
// weft's; a goal below this is below the library on this machine.

// floorMetaSize is the size of the dummy node metadata: about what weft's
// Meta encodes to (keys, addresses, versions), so that alive messages and
// push/pulls are as big as weft's apart from the IPAM state.
const floorMetaSize = 100

// floorOptions shape one run.
type floorOptions struct {
	N        int
	Deadline time.Duration // of formation; past it the run is reported as not formed
	// RetransmitMult is memberlist's; 0 keeps DefaultLANConfig's (4),
	// which is what weft's memberlistConfig keeps too.
	RetransmitMult int
}

// floorResult is one row of the floor's table.
type floorResult struct {
	N          int
	Mult       int
	Formation  time.Duration // zero: not formed within the deadline
	FormCPU    time.Duration // process CPU until formation (or the deadline), per member
	FormBytes  float64       // bytes sent (packets and streams) until then, per member
	Joins      int           // Join calls made, retries included
	JoinErr    string        // the first failed join's error, if any
	Goroutines int           // at formation
	Note       string        // why not formed: the spread of what members saw
}

// floorMember is one bare memberlist with what the formation check needs:
// the peers its own probes found unanswered and not yet heard from since,
// as weft's mesh counts suspects (memberlist tells no delegate about
// suspicion; its log is the only trace, and Members does not carry it).
type floorMember struct {
	name string
	addr netip.AddrPort
	tr   *meshtest.Transport
	ml   *memberlist.Memberlist
	meta []byte

	mu      sync.Mutex
	suspect map[string]bool
}

// NodeMeta implements memberlist.Delegate.
func (m *floorMember) NodeMeta(limit int) []byte { return m.meta[:min(len(m.meta), limit)] }

// NotifyMsg, GetBroadcasts, LocalState and MergeRemoteState implement
// memberlist.Delegate: no user messages and no state in push/pulls.
func (m *floorMember) NotifyMsg([]byte)                           {}
func (m *floorMember) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (m *floorMember) LocalState(join bool) []byte                { return nil }
func (m *floorMember) MergeRemoteState(buf []byte, join bool)     {}

// NotifyAlive implements memberlist.AliveDelegate: an alive message about a
// suspect is most often its refutation.
func (m *floorMember) NotifyAlive(n *memberlist.Node) error {
	m.unsuspect(n.Name)
	return nil
}

// AckPayload and NotifyPingComplete implement memberlist.PingDelegate: an
// answered probe clears suspicion.
func (m *floorMember) AckPayload() []byte { return nil }
func (m *floorMember) NotifyPingComplete(other *memberlist.Node, _ time.Duration, _ []byte) {
	m.unsuspect(other.Name)
}

func (m *floorMember) unsuspect(name string) {
	m.mu.Lock()
	delete(m.suspect, name)
	m.mu.Unlock()
}

func (m *floorMember) suspects() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.suspect)
}

// suspectLine is how memberlist logs a probe of this member's that no one
// answered (state.go, probeNode).
var suspectLine = []byte("memberlist: Suspect ")

// Write is the member's memberlist log: each call is one line (log.Logger
// writes a line at once). Only suspicions are kept.
func (m *floorMember) Write(p []byte) (int, error) {
	i := bytes.Index(p, suspectLine)
	if i < 0 {
		return len(p), nil
	}
	rest := p[i+len(suspectLine):]
	if j := bytes.Index(rest, []byte(" has failed")); j > 0 {
		m.mu.Lock()
		m.suspect[string(rest[:j])] = true
		m.mu.Unlock()
	}
	return len(p), nil
}

// config is mesh.memberlistConfig's settings with simTiming, without
// encryption (the simulation has none either).
func (m *floorMember) config(mult int) *memberlist.Config {
	tm := simTiming()
	mc := memberlist.DefaultLANConfig()
	mc.Name = m.name
	mc.BindAddr = m.addr.Addr().String()
	mc.BindPort = int(m.addr.Port())
	mc.AdvertiseAddr = mc.BindAddr
	mc.AdvertisePort = mc.BindPort
	mc.ProbeInterval = tm.ProbeInterval
	mc.ProbeTimeout = tm.ProbeTimeout
	mc.SuspicionMult = tm.SuspicionMult
	mc.GossipInterval = tm.GossipInterval
	mc.PushPullInterval = tm.PushPullInterval
	mc.TCPTimeout = tm.TCPTimeout
	mc.EnableCompression = false
	if mult > 0 {
		mc.RetransmitMult = mult
	}
	mc.Transport = m.tr
	mc.Delegate = m
	mc.Alive = m
	mc.Ping = m
	mc.Logger = log.New(m, "", 0)
	return mc
}

// floorFormed: the member sees all n (none dead) and suspects none.
func floorFormed(n int) func(*floorMember) error {
	return func(m *floorMember) error {
		if got, s := m.ml.NumMembers(), m.suspects(); got != n || s != 0 {
			return fmt.Errorf("sees %d members, suspects %d, want %d and none", got, s, n)
		}
		return nil
	}
}

// floorWait is waitEach for bare members.
func floorWait(ms []*floorMember, deadline time.Duration, ok func(*floorMember) error) error {
	_, err := waitEach(ms, func(m *floorMember) string { return m.name }, deadline, ok)
	return err
}

// floor forms opts.N bare memberlists as simulate forms agents: all
// created at once, then each joins the first (the first joins the second),
// retrying every RejoinInterval as weft's mesh does, until every member
// sees every other and suspects none; then shuts them all down.
func floor(t *testing.T, opts floorOptions) floorResult {
	t.Helper()
	if opts.Deadline == 0 {
		opts.Deadline = 2 * time.Minute
	}
	r := floorResult{N: opts.N, Mult: opts.RetransmitMult}
	if r.Mult == 0 {
		r.Mult = memberlist.DefaultLANConfig().RetransmitMult
	}
	goroutinesBefore := runtime.NumGoroutine()
	// The simulation's collector settings, so that the two compare.
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(6 << 30))

	var network meshtest.Network
	meta := bytes.Repeat([]byte{'m'}, floorMetaSize)
	ms := make([]*floorMember, opts.N)
	for i := range ms {
		addr := netip.AddrPortFrom(agenttest.HostAddr(i), agent.DefaultPort)
		tr, err := network.Listen(addr)
		if err != nil {
			t.Fatalf("member %d: %v", i+1, err)
		}
		ms[i] = &floorMember{name: fmt.Sprintf("host%d", i+1), addr: addr, tr: tr, meta: meta, suspect: map[string]bool{}}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var joiners sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		shutdownAll(t, ms)
		joiners.Wait()
		checkGoroutinesBack(t, goroutinesBefore, floorLeakGrace())
	})

	start, cpuStart := time.Now(), cpuTime()
	errs := make([]error, opts.N)
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.ml, errs[i] = memberlist.Create(m.config(opts.RetransmitMult))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%s: create: %v", ms[i].name, err)
		}
	}
	var joinsMu sync.Mutex
	var joined atomic.Int64
	for i, m := range ms {
		target := ms[0].addr.String()
		if i == 0 {
			target = ms[min(1, opts.N-1)].addr.String()
		}
		joiners.Add(1)
		go func() {
			defer joiners.Done()
			n, jerr := joinUntil(ctx, m.ml, target, simTiming().RejoinInterval)
			if ctx.Err() == nil {
				joined.Add(1)
			}
			joinsMu.Lock()
			r.Joins += n
			if jerr != nil && r.JoinErr == "" {
				r.JoinErr = jerr.Error()
			}
			joinsMu.Unlock()
		}()
	}

	stopTrace := func() {}
	if opts.N >= 300 {
		stopTrace = floorTrace(t, ms, &joined, start, cpuStart)
	}
	err := floorWait(ms, opts.Deadline, floorFormed(opts.N))
	stopTrace()
	var sent uint64
	for _, m := range ms {
		s := m.tr.Stats()
		sent += s.BytesOut + s.StreamBytesOut
	}
	r.FormCPU = (cpuTime() - cpuStart) / time.Duration(opts.N)
	r.FormBytes = float64(sent) / float64(opts.N)
	r.Goroutines = runtime.NumGoroutine()
	if err != nil {
		seen := make([]int, 0, opts.N)
		suspects := 0
		for _, m := range ms {
			seen = append(seen, m.ml.NumMembers())
			suspects += m.suspects()
		}
		slices.Sort(seen)
		r.Note = fmt.Sprintf("not formed within %s (%v); members seen min/median/max %d/%d/%d, %d suspicions open",
			opts.Deadline, err, seen[0], seen[len(seen)/2], seen[len(seen)-1], suspects)
	} else {
		r.Formation = time.Since(start)
	}
	// Every member has joined (or the run is over): the retries are done.
	cancel()
	joiners.Wait()
	t.Logf("memberlist alone, %d members, RetransmitMult %d: formed in %s, %s CPU and %.1f kB sent per member, %d joins, %d goroutines; load %s",
		opts.N, r.Mult, dur(r.Formation), r.FormCPU.Round(time.Millisecond), r.FormBytes/1e3, r.Joins, r.Goroutines, loadAvg())
	if r.JoinErr != "" {
		t.Logf("first failed join: %s", r.JoinErr)
	}
	return r
}

// floorTrace logs, every 5 s until stopped, how far formation is: members
// whose join succeeded, the spread of members seen, open suspicions, and
// the process's CPU so far (which a loaded machine does not stretch).
func floorTrace(t *testing.T, ms []*floorMember, joined *atomic.Int64, start time.Time, cpuStart time.Duration) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		seen := make([]int, len(ms))
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			suspects := 0
			for i, m := range ms {
				seen[i] = m.ml.NumMembers()
				suspects += m.suspects()
			}
			slices.Sort(seen)
			t.Logf("trace t=%s cpu=%s joined=%d seen min/med/max=%d/%d/%d suspicions=%d",
				time.Since(start).Round(100*time.Millisecond), (cpuTime() - cpuStart).Round(10*time.Millisecond),
				joined.Load(), seen[0], seen[len(seen)/2], seen[len(seen)-1], suspects)
		}
	}()
	return func() { close(done); wg.Wait() }
}

// floorLeakGrace is how long a member's goroutines may outlive its
// Shutdown: a probe under way finishes its timeouts (direct, indirect,
// the TCP fallback) before it looks at the shutdown, as agenttest's
// check allows for the simulated agents.
func floorLeakGrace() time.Duration {
	tm := simTiming()
	return max(10*time.Second, 8*tm.ProbeTimeout+2*tm.ProbeInterval)
}

// checkGoroutinesBack waits up to grace for the process to be back to
// at most before goroutines, and fails t with their profile if it is not.
func checkGoroutinesBack(t *testing.T, before int, grace time.Duration) {
	deadline := time.Now().Add(grace)
	for {
		now := runtime.NumGoroutine()
		if now <= before {
			return
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
			prof := b.String()
			if len(prof) > 16<<10 {
				prof = prof[:16<<10] + "\n..."
			}
			t.Errorf("%d goroutines %s after shutdown, %d before the members started:\n%s", now, grace, before, prof)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// joinUntil joins target until memberlist reports a node joined, retrying
// every interval; it returns the calls made and the first failure's error.
func joinUntil(ctx context.Context, ml *memberlist.Memberlist, target string, interval time.Duration) (int, error) {
	calls := 0
	var first error
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return calls, first
		case <-timer.C:
		}
		calls++
		n, err := ml.Join([]string{target})
		if err == nil && n > 0 {
			return calls, first
		}
		if first == nil {
			if err == nil {
				err = fmt.Errorf("join %s: no node joined", target)
			}
			first = err
		}
		timer.Reset(interval)
	}
}

// shutdownAll stops every member created, 64 at a time (as the
// simulation stops its agents).
func shutdownAll(t *testing.T, ms []*floorMember) {
	work := make(chan *floorMember)
	var wg sync.WaitGroup
	for range min(64, len(ms)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range work {
				if m.ml == nil {
					_ = m.tr.Shutdown()
					continue
				}
				if err := m.ml.Shutdown(); err != nil {
					t.Errorf("%s: shutdown: %v", m.name, err)
				}
			}
		}()
	}
	for _, m := range ms {
		work <- m
	}
	close(work)
	wg.Wait()
}

func formatFloor(rows []floorResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "load average at the end: %s; GOMAXPROCS %d\n\n", loadAvg(), runtime.GOMAXPROCS(0))
	fmt.Fprintf(&b, "| members | RetransmitMult | formation | CPU per member until formed | sent per member until formed | joins | goroutines at formation |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %d | %d | %s | %.3f s | %s | %d | %d |\n",
			r.N, r.Mult, dur(r.Formation), r.FormCPU.Seconds(), size(r.FormBytes), r.Joins, r.Goroutines)
	}
	for _, r := range rows {
		if r.Note != "" {
			fmt.Fprintf(&b, "\n%d members, RetransmitMult %d: %s", r.N, r.Mult, r.Note)
		}
		if r.JoinErr != "" {
			fmt.Fprintf(&b, "\n%d members, RetransmitMult %d: first failed join: %s", r.N, r.Mult, r.JoinErr)
		}
	}
	b.WriteString("\n")
	return b.String()
}

// TestMemberlistFloor measures the floor: WEFT_SCALE=1 turns it on,
// WEFT_SCALE_SIZES are the sizes (default 100,300,1000), and
// WEFT_FLOOR_MULTS the RetransmitMults to run each size with (default 0:
// memberlist's, which weft keeps; e.g. "0,1" adds a run with 1). The table
// goes to WEFT_SCALE_OUT when set, else to the log.
func TestMemberlistFloor(t *testing.T) {
	if os.Getenv("WEFT_SCALE") != "1" {
		t.Skip("set WEFT_SCALE=1 to measure; it takes minutes")
	}
	sizes, err := intList(os.Getenv("WEFT_SCALE_SIZES"), []int{100, 300, 1000}, 10)
	if err != nil {
		t.Fatalf("WEFT_SCALE_SIZES: %v", err)
	}
	mults, err := intList(os.Getenv("WEFT_FLOOR_MULTS"), []int{0}, 0)
	if err != nil {
		t.Fatalf("WEFT_FLOOR_MULTS: %v", err)
	}
	var rows []floorResult
	for _, n := range sizes {
		for _, mult := range mults {
			t.Run(fmt.Sprintf("members%d_mult%d", n, mult), func(t *testing.T) {
				rows = append(rows, floor(t, floorOptions{N: n, RetransmitMult: mult}))
			})
		}
	}
	table := formatFloor(rows)
	if out := os.Getenv("WEFT_SCALE_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(table), 0o644); err != nil {
			t.Errorf("write %s: %v", out, err)
		}
	}
	t.Log("\n" + table)
}

// intList parses "a,b,c" (empty: def) into numbers of at least least.
func intList(s string, def []int, least int) ([]int, error) {
	if strings.TrimSpace(s) == "" {
		return def, nil
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < least {
			return nil, fmt.Errorf("%q: want numbers of %d or more", s, least)
		}
		out = append(out, n)
	}
	return out, nil
}

// TestMemberlistFloorSmall is the floor at 20 members, run by every
// `go test`: the harness forms a mesh, counts what it should, and leaves
// nothing running.
func TestMemberlistFloorSmall(t *testing.T) {
	r := floor(t, floorOptions{N: 20, Deadline: time.Minute})
	if r.Note != "" {
		t.Fatal(r.Note)
	}
	if r.Formation <= 0 || r.FormCPU <= 0 || r.FormBytes <= 0 {
		t.Errorf("formation not measured: %+v", r)
	}
	if r.Joins < 20 {
		t.Errorf("%d joins for 20 members: each joins at least once", r.Joins)
	}
	// A bare member has a handful of goroutines (packet, stream, probe,
	// gossip, push/pull loops); a hundred each would be a runaway.
	if r.Goroutines > 20*100 {
		t.Errorf("%d goroutines for 20 members", r.Goroutines)
	}
}

// TestFloorSuspectLog: the log parser finds memberlist's suspicion line and
// an alive message clears it (the formation check relies on both).
func TestFloorSuspectLog(t *testing.T) {
	m := &floorMember{suspect: map[string]bool{}}
	l := log.New(m, "", log.LstdFlags)
	l.Printf("[DEBUG] memberlist: Failed UDP ping: host7 (timeout reached)")
	if m.suspects() != 0 {
		t.Fatal("a failed ping alone is not a suspicion")
	}
	l.Printf("[INFO] memberlist: Suspect %s has failed, no acks received", "host7")
	if m.suspects() != 1 || !m.suspect["host7"] {
		t.Fatalf("suspects %v after the suspect line, want host7", m.suspect)
	}
	if err := m.NotifyAlive(&memberlist.Node{Name: "host7"}); err != nil {
		t.Fatal(err)
	}
	if m.suspects() != 0 {
		t.Fatalf("suspects %v after an alive message", m.suspect)
	}
	if _, err := io.WriteString(m, "memberlist: Suspect  has failed"); err != nil || m.suspects() != 0 {
		t.Fatalf("an empty name was taken as a suspect: %v %v", m.suspect, err)
	}
}
