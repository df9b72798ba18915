// Package scale_test measures weft as the mesh grows (issue 21): real agents
// in network namespaces, and hundreds to a thousand simulated agents in one
// process. `make scale` runs TestScaleTable and prints its table;
// TestSimulated100 runs with every `go test`.
package scale_test

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestScaleTable is `make scale`: WEFT_SCALE=1 turns it on,
// WEFT_SCALE_REAL is the number of real agents (default 50, 0 for none, else 10 or more),
// WEFT_SCALE_SIZES the simulated sizes (default 100,300,1000; 0 for none), and the
// table goes to WEFT_SCALE_OUT (default: the test log).
func TestScaleTable(t *testing.T) {
	if os.Getenv("WEFT_SCALE") != "1" {
		t.Skip("set WEFT_SCALE=1 (make scale) to measure; it takes several minutes")
	}
	realN := 50
	if s := os.Getenv("WEFT_SCALE_REAL"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n != 0 && n < 10 {
			// Five of them are killed and relaunched: fewer than ten
			// leaves too few to watch them.
			t.Fatalf("WEFT_SCALE_REAL=%q: want 0 (none) or 10 or more", s)
		}
		realN = n
	}
	sizes := []int{100, 300, 1000}
	if s := os.Getenv("WEFT_SCALE_SIZES"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			if f == "0" {
				continue // none
			}
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 10 {
				t.Fatalf("WEFT_SCALE_SIZES=%q: want sizes of 10 or more", s)
			}
			sizes = append(sizes, n)
		}
	}
	var rows []result
	report := func() {
		table := formatTable(rows)
		if out := os.Getenv("WEFT_SCALE_OUT"); out != "" {
			if err := os.WriteFile(out, []byte(table), 0o644); err != nil {
				t.Errorf("write %s: %v", out, err)
			}
		}
		t.Log("\n" + table)
	}
	if realN > 0 {
		t.Run(fmt.Sprintf("real%d", realN), func(t *testing.T) {
			r := measureReal(t, realN)
			rows = append(rows, r)
			report()
		})
	}
	for _, n := range sizes {
		t.Run(fmt.Sprintf("simulated%d", n), func(t *testing.T) {
			deadline := 60*time.Second + time.Duration(n)*60*time.Millisecond
			r := simulate(t, simOptions{N: n, Partition: true, Steady: 10 * time.Second, Deadline: deadline})
			rows = append(rows, r)
			report()
		})
	}
}

func formatTable(rows []result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "load average at the end: %s\n\n", loadAvg())
	fmt.Fprintf(&b, "| agents | formation + ready ring | formation CPU / sent per agent | gossip in / out per agent | memory per agent | idle CPU per agent | kill -9 of 5 → all see dead | relaunch → whole | 50/50 partition heal | ring keys | IPAM state in a join | bytes per gossip stream |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		mem := "—"
		if r.MemPerAgt > 0 {
			what := "heap"
			if r.Kind == "real" {
				what = "RSS"
			}
			mem = fmt.Sprintf("%.1f MiB %s", float64(r.MemPerAgt)/(1<<20), what)
		}
		form := "—"
		if r.FormCPU > 0 {
			form = fmt.Sprintf("%.2f s / %s", r.FormCPU.Seconds(), size(r.FormBytes))
		}
		fmt.Fprintf(&b, "| %d %s | %s | %s | %s / %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			r.N, r.Kind, dur(r.Formation), form, rate(r.GossipIn), rate(r.GossipOut), mem,
			pctCore(r.CPUPerAgt), dur(r.Dead), dur(r.Whole), dur(r.Heal),
			count(r.RingKeys), size(float64(r.StateSize)), size(r.PushPull))
	}
	for _, r := range rows {
		if r.Note != "" {
			fmt.Fprintf(&b, "\n%d %s: %s", r.N, r.Kind, r.Note)
		}
	}
	b.WriteString("\n")
	return b.String()
}

// loadAvg is /proc/loadavg's three averages: the machine is shared, and
// wall-clock figures mean little without them.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func dur(d time.Duration) string {
	if d <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

func rate(bps float64) string {
	if bps <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f kB/s", bps/1e3)
}

func size(n float64) string {
	if n <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f kB", n/1e3)
}

func count(n int) string {
	if n <= 0 {
		return "—"
	}
	return strconv.Itoa(n)
}

func pctCore(f float64) string {
	if f <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f %%", 100*f)
}
