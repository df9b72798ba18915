package agenttest

import (
	"bytes"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/mesh"
)

// goroutineHeader is the first line of each goroutine in runtime.Stack.
var goroutineHeader = regexp.MustCompile(`^goroutine (\d+) \[`)

// notOurs are goroutines the runtime or the testing package may start during
// a test; they are not the agent's to stop.
var notOurs = []string{
	"testing.tRunner",
	"testing.(*T).Run",
	"testing.runFuzzing",
	"os/signal.signal_recv",
	"runtime.ensureSigM",
	"runtime/trace.Start",
	"runtime.ReadTrace",
}

// goroutines returns the stack of every goroutine, by id.
func goroutines() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[string]string{}
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		m := goroutineHeader.FindSubmatch(g)
		if m == nil {
			continue
		}
		out[string(m[1])] = string(g)
	}
	return out
}

// CheckGoroutines records the goroutines running now and, when the test
// ends, fails it if any goroutine started since is still running after a
// grace period: every goroutine an agent starts must end when it stops. Call
// it before anything of the test starts goroutines, and without
// t.Parallel (other tests' goroutines would count).
//
// Cleanups run last-registered first, so the check runs after the cleanups
// registered later, such as stopping the agents.
func CheckGoroutines(t testing.TB) { checkGoroutinesWithin(t, 10*time.Second) }

// checkGoroutinesWithin is CheckGoroutines with another grace period.
func checkGoroutinesWithin(t testing.TB, grace time.Duration) {
	t.Helper()
	before := goroutines()
	t.Cleanup(func() {
		if leaked := leakedSince(before, grace); len(leaked) > 0 {
			t.Errorf("%d goroutines started during the test still run %s after it ended:\n\n%s",
				len(leaked), grace, strings.Join(leaked, "\n\n"))
		}
	})
}

// leakGrace is how long the agents' goroutines may take to end after they
// stop: 10 s, or longer than a memberlist probe under way can still wait
// (its timeout stretched up to eight times on a member that missed acks,
// then a probe interval for the indirect probes). A probe of a simulation's
// patient timing on a loaded machine outlived 10 s.
func leakGrace(t mesh.Timing) time.Duration {
	return max(10*time.Second, 8*t.ProbeTimeout+2*t.ProbeInterval)
}

// leakedSince waits up to grace for every goroutine not in before to end,
// and returns the stacks of those that did not.
func leakedSince(before map[string]string, grace time.Duration) []string {
	deadline := time.Now().Add(grace)
	for {
		var leaked []string
		for id, stack := range goroutines() {
			if _, old := before[id]; old || ignorable(stack) {
				continue
			}
			leaked = append(leaked, stack)
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return leaked
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ignorable(stack string) bool {
	for _, s := range notOurs {
		if strings.Contains(stack, s) {
			return true
		}
	}
	return false
}
