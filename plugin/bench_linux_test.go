package plugin

import (
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/weftnet/weft/test/cnitest"
)

// BenchmarkADDDEL prints ADD and DEL latency p50/p99 of weft-cni (with the
// fake agent) beside the reference bridge plugin with host-local IPAM
// (Debian's containernetworking-plugins in /usr/lib/cni), interleaved in one
// run inside one simulated host. One benchmark iteration is the whole
// comparison; run it with -benchtime 1x. WEFT_CNI_BENCH_CYCLES sets the
// cycles (default 100).
//
//	go test ./plugin -run '^$' -bench ADDDEL -benchtime 1x
func BenchmarkADDDEL(b *testing.B) {
	const refPlugins = "/usr/lib/cni"
	if _, err := os.Stat(refPlugins + "/bridge"); err != nil {
		b.Skipf("SKIPPED: reference plugins missing (apt-get install -y containernetworking-plugins): %v", err)
	}
	cycles := 100
	if s := os.Getenv("WEFT_CNI_BENCH_CYCLES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("WEFT_CNI_BENCH_CYCLES=%q", s)
		}
		cycles = n
	}
	h := newE2EHost(b)
	ctx := ctxT(b, 5*time.Minute)

	// The reference network lives in the same host namespace on its own
	// bridge and range; host-local keeps its state in a temp dir.
	refConf := b.TempDir()
	ref := "ref-bridge"
	if err := cnitest.WriteConflist(refConf, ref, "1.0.0", map[string]any{
		"type": "bridge", "bridge": "wcnibr0", "isGateway": true,
		"ipam": map[string]any{"type": "host-local", "subnet": "10.47.255.0/24", "dataDir": b.TempDir()},
	}); err != nil {
		b.Fatal(err)
	}
	weftPod := h.pod(b, 0)
	refPod := h.pod(b, 1)
	for range b.N {
		ls, err := cnitest.BenchCompare(ctx, cycles, []cnitest.Bench{
			{Runtime: h.rt, Network: h.network, Netns: weftPod},
			{Runtime: cnitest.Runtime{CNIPath: refPlugins, NetconfDir: refConf, HostNetns: h.nsPath}, Network: ref, Netns: refPod},
		})
		if err != nil {
			b.Fatal(err)
		}
		ls[0].Network = "weft-cni (fake agent)"
		ls[1].Network = "bridge + host-local"
		for _, l := range ls {
			b.Log(l.String())
		}
		b.ReportMetric(float64(ls[0].Add.P50.Microseconds())/1000, "weft-add-p50-ms")
		b.ReportMetric(float64(ls[0].Add.P99.Microseconds())/1000, "weft-add-p99-ms")
		b.ReportMetric(float64(ls[0].Del.P50.Microseconds())/1000, "weft-del-p50-ms")
		b.ReportMetric(float64(ls[0].Del.P99.Microseconds())/1000, "weft-del-p99-ms")
		b.ReportMetric(float64(ls[1].Add.P50.Microseconds())/1000, "ref-add-p50-ms")
		b.ReportMetric(float64(ls[1].Add.P99.Microseconds())/1000, "ref-add-p99-ms")
		b.ReportMetric(float64(ls[1].Del.P50.Microseconds())/1000, "ref-del-p50-ms")
		b.ReportMetric(float64(ls[1].Del.P99.Microseconds())/1000, "ref-del-p99-ms")
	}
	if held := h.agent.Held(); len(held) != 0 {
		b.Fatalf("allocations left after the bench: %v", held)
	}
}
