package agent_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/weftnet/weft/agent"
	"github.com/weftnet/weft/agent/agenttest"
	"github.com/weftnet/weft/api"
)

// scrape reads a running agent's /metrics.
func scrape(t *testing.T, n *agenttest.Node) map[string]*dto.MetricFamily {
	t.Helper()
	a := n.Agent()
	if a == nil {
		t.Fatalf("%s is not running", n.Name)
	}
	rec := httptest.NewRecorder()
	a.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("%s /metrics: %v", n.Name, err)
	}
	return mfs
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func TestBuildInfoAndLatencyHistograms(t *testing.T) {
	c := agenttest.Start(t, agenttest.Options{N: 1, IPAMInit: "consensus=1"})
	c.WaitFormed()
	n := c.Nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 3 {
		if _, err := n.Client.Allocate(ctx, api.AllocateRequest{ContainerID: fmt.Sprint("c", i), IfName: "eth0"}); err != nil {
			t.Fatal(err)
		}
	}
	// What the CNI shim reports after each ADD.
	if err := n.Client.ReportCNITiming(ctx, api.CNITiming{Op: api.CNIOpAdd, Seconds: 0.012}); err != nil {
		t.Fatal(err)
	}
	mfs := scrape(t, n)

	bi := mfs["weft_build_info"].GetMetric()
	if len(bi) != 1 || bi[0].GetGauge().GetValue() != 1 || label(bi[0], "version") != api.Version ||
		label(bi[0], "goversion") != runtime.Version() || label(bi[0], "datapath") == "" {
		t.Errorf("weft_build_info: %v", bi)
	}
	// The host's own address is allocated too, by the agent itself; the
	// histogram counts the pods' allocations through the API.
	if h := mfs["weft_ipam_allocate_seconds"].GetMetric(); len(h) != 1 || h[0].GetHistogram().GetSampleCount() != 3 {
		t.Errorf("weft_ipam_allocate_seconds: %v, want 3 samples", h)
	}
	h := mfs["weft_cni_add_seconds"].GetMetric()
	if len(h) != 1 || h[0].GetHistogram().GetSampleCount() != 1 || h[0].GetHistogram().GetSampleSum() != 0.012 {
		t.Errorf("weft_cni_add_seconds: %v, want one sample of 0.012", h)
	}
}

func TestConnectionTerminationsAndPerPeerSwitch(t *testing.T) {
	c := agenttest.Start(t, agenttest.Options{N: 3, Configure: func(i int, cfg *agent.Config) {
		cfg.NoPerPeerMetrics = i == 1 // host2 runs with --metrics-per-peer=false
	}})
	c.WaitFormed()
	terminations := func(n *agenttest.Node) map[string]float64 {
		out := map[string]float64{}
		for _, m := range scrape(t, n)["weft_connection_terminations_total"].GetMetric() {
			out[label(m, "reason")] = m.GetCounter().GetValue()
		}
		return out
	}
	if got := terminations(c.Nodes[0]); len(got) != 3 || got["peer-left"] != 0 || got["peer-failed"] != 0 {
		t.Errorf("before any flap: %v, want three reasons at 0", got)
	}

	// Per peer: one series per owner of the ring; summed: one per reachability.
	owners := func(n *agenttest.Node) (peers map[string]bool) {
		peers = map[string]bool{}
		for _, m := range scrape(t, n)["weft_ipam_addresses_owned"].GetMetric() {
			peers[label(m, "peer")] = true
		}
		return peers
	}
	if got := owners(c.Nodes[0]); len(got) != 3 || !got["host1"] || !got["host3"] {
		t.Errorf("host1 (per peer) weft_ipam_addresses_owned peers: %v", got)
	}
	if got := owners(c.Nodes[1]); len(got) != 1 || !got[""] {
		t.Errorf("host2 (--metrics-per-peer=false) weft_ipam_addresses_owned peers: %v, want only the sum", got)
	}

	// host3 leaves cleanly: host1 counts one termination, reason peer-left.
	if err := c.Nodes[2].Stop(); err != nil {
		t.Fatal(err)
	}
	c.Wait("host1 to count host3's leaving", func() error {
		if got := terminations(c.Nodes[0]); got["peer-left"] != 1 || got["peer-failed"] != 0 {
			return fmt.Errorf("terminations %v, want peer-left 1", got)
		}
		return nil
	})
}
