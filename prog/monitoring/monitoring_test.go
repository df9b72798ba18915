package monitoring

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"sigs.k8s.io/yaml"

	"github.com/weftnet/weft/agent"
	"github.com/weftnet/weft/agent/agenttest"
	"github.com/weftnet/weft/api"
)

// object is the part of a Kubernetes object these tests read.
type object struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec json.RawMessage `json:"spec"`
}

// objects parses a multi-document YAML file strictly, document by document.
func objects(t *testing.T, data []byte) []object {
	t.Helper()
	var out []object
	for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var o object
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
			t.Fatalf("document %d: no apiVersion, kind or name: %+v", i, o)
		}
		out = append(out, o)
	}
	return out
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

func read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := Files.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func spec[T any](t *testing.T, o object) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(strings.NewReader(string(o.Spec)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s %s: spec: %v", o.Kind, o.Metadata.Name, err)
	}
	return v
}

type serviceSpec struct {
	ClusterIP string            `json:"clusterIP"`
	Selector  map[string]string `json:"selector"`
	Ports     []struct {
		Name       string `json:"name"`
		Port       int    `json:"port"`
		TargetPort int    `json:"targetPort"`
		Protocol   string `json:"protocol"`
	} `json:"ports"`
}

type serviceMonitorSpec struct {
	Selector struct {
		MatchLabels map[string]string `json:"matchLabels"`
	} `json:"selector"`
	NamespaceSelector struct {
		MatchNames []string `json:"matchNames"`
	} `json:"namespaceSelector"`
	Endpoints []struct {
		Port        string `json:"port"`
		Path        string `json:"path"`
		Interval    string `json:"interval"`
		Relabelings []struct {
			SourceLabels []string `json:"sourceLabels"`
			TargetLabel  string   `json:"targetLabel"`
		} `json:"relabelings"`
	} `json:"endpoints"`
}

type ruleSpec struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Expr        string            `json:"expr"`
			For         string            `json:"for"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

// daemonSetLabels are the pod labels of the weft DaemonSet in prog/kube.
func daemonSetLabels(t *testing.T) map[string]string {
	t.Helper()
	data, err := readRepo("../kube/weft.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objects(t, data) {
		if o.Kind != "DaemonSet" {
			continue
		}
		var s struct {
			Template struct {
				Metadata struct {
					Labels map[string]string `json:"labels"`
				} `json:"metadata"`
			} `json:"template"`
		}
		if err := json.Unmarshal(o.Spec, &s); err != nil {
			t.Fatal(err)
		}
		return s.Template.Metadata.Labels
	}
	t.Fatal("prog/kube/weft.yaml has no DaemonSet")
	return nil
}

func TestMetricsServiceAndMonitor(t *testing.T) {
	objs := objects(t, read(t, "weft-metrics.yaml"))
	if len(objs) != 2 || objs[0].Kind != "Service" || objs[1].Kind != "ServiceMonitor" {
		t.Fatalf("weft-metrics.yaml: want a Service and a ServiceMonitor, got %d objects", len(objs))
	}
	svc, mon := objs[0], objs[1]
	ss := spec[serviceSpec](t, svc)
	_, port, _ := net.SplitHostPort(agent.DefaultMetricsAddr)
	if len(ss.Ports) != 1 || strconv.Itoa(ss.Ports[0].TargetPort) != port || ss.ClusterIP != "None" {
		t.Errorf("Service: %+v, want one headless port %s (--metrics-addr)", ss, port)
	}
	pods := daemonSetLabels(t)
	for k, v := range ss.Selector {
		if pods[k] != v {
			t.Errorf("Service selector %s=%s does not select the DaemonSet's pods %v", k, v, pods)
		}
	}
	ms := spec[serviceMonitorSpec](t, mon)
	for k, v := range ms.Selector.MatchLabels {
		if svc.Metadata.Labels[k] != v {
			t.Errorf("ServiceMonitor selector %s=%s does not select the Service %v", k, v, svc.Metadata.Labels)
		}
	}
	if !slices.Contains(ms.NamespaceSelector.MatchNames, svc.Metadata.Namespace) {
		t.Errorf("ServiceMonitor namespaces %v miss %s", ms.NamespaceSelector.MatchNames, svc.Metadata.Namespace)
	}
	if len(ms.Endpoints) != 1 || ms.Endpoints[0].Port != ss.Ports[0].Name || ms.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints %+v: want the Service's port %q at /metrics", ms.Endpoints, ss.Ports[0].Name)
	}
}

// alertExprs returns every alert's expression, checking each rule's form.
func alertExprs(t *testing.T) map[string]string {
	t.Helper()
	objs := objects(t, read(t, "weft-alerts.yaml"))
	if len(objs) != 1 || objs[0].Kind != "PrometheusRule" {
		t.Fatalf("weft-alerts.yaml: want one PrometheusRule")
	}
	out := map[string]string{}
	for _, g := range spec[ruleSpec](t, objs[0]).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || r.Annotations["summary"] == "" {
				t.Errorf("rule %+v: want alert, expr and a summary", r)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: severity %q", r.Alert, s)
			}
			if r.For != "" {
				if _, err := model.ParseDuration(r.For); err != nil {
					t.Errorf("%s: for %q: %v", r.Alert, r.For, err)
				}
			}
			if _, dup := out[r.Alert]; dup {
				t.Errorf("alert %s twice", r.Alert)
			}
			out[r.Alert] = r.Expr
		}
	}
	// What the issue asks alerts for.
	for _, want := range []string{"WeftAgentNotReady", "WeftPeerUnreachable", "WeftIPAMExhausted",
		"WeftIPAMUnreachableSpace", "WeftDropsRising", "WeftHandshakeFailures"} {
		if out[want] == "" {
			t.Errorf("no alert %s", want)
		}
	}
	return out
}

// dashboardExprs returns every panel query of the dashboard.
func dashboardExprs(t *testing.T) map[string]string {
	t.Helper()
	var d struct {
		UID    string `json:"uid"`
		Title  string `json:"title"`
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(read(t, "weft-dashboard.json"), &d); err != nil {
		t.Fatalf("weft-dashboard.json: %v", err)
	}
	if d.UID == "" || d.Title == "" || len(d.Panels) < 8 {
		t.Fatalf("dashboard: uid %q title %q, %d panels", d.UID, d.Title, len(d.Panels))
	}
	out := map[string]string{}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] || p.Title == "" || p.Type == "" || len(p.Targets) == 0 {
			t.Errorf("panel %d %q: duplicate id, no title, type or query", p.ID, p.Title)
		}
		ids[p.ID] = true
		for _, tg := range p.Targets {
			out[p.Title+"/"+tg.RefID] = tg.Expr
		}
	}
	return out
}

// selector is one metric in an expression with the labels it matches on.
type selector struct {
	metric string
	labels []string
}

var (
	metricRef = regexp.MustCompile(`\b(weft_[a-z0-9_]+)(\{[^}]*\})?`)
	labelRef  = regexp.MustCompile(`([a-z_]+)\s*(?:=~|!~|!=|=)`)
)

// selectors finds the weft metrics of a PromQL expression; a histogram's
// _bucket, _sum and _count series count as the histogram.
func selectors(t *testing.T, where, expr string) []selector {
	t.Helper()
	if strings.Count(expr, "(") != strings.Count(expr, ")") || strings.Count(expr, "{") != strings.Count(expr, "}") ||
		strings.Count(expr, "[") != strings.Count(expr, "]") {
		t.Errorf("%s: unbalanced brackets in %q", where, expr)
	}
	var out []selector
	for _, m := range metricRef.FindAllStringSubmatch(expr, -1) {
		s := selector{metric: m[1]}
		for _, l := range labelRef.FindAllStringSubmatch(m[2], -1) {
			s.labels = append(s.labels, l[1])
		}
		out = append(out, s)
	}
	return out
}

// liveMetrics scrapes an agent of a running two-host mesh, encrypted, with
// traffic between pods, so that every series weft has exists.
func liveMetrics(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	c := agenttest.Start(t, agenttest.Options{N: 2, Password: []byte("monitoring-test-password")})
	c.WaitFormed()
	a, b := c.Nodes[0], c.Nodes[1]
	src, dst := a.AttachPod("pod-a"), b.AttachPod("pod-b")
	pkt := agenttest.IPv4UDP(src, dst, 4000, 5000, []byte("hello"))
	a.TUN().Inject(pkt)
	b.ExpectPacket(pkt)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// What weft-cni reports after an ADD.
	if err := a.Client.ReportCNITiming(ctx, cniTiming()); err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	a.Agent().MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

func TestEveryMetricNamedExists(t *testing.T) {
	exprs := alertExprs(t)
	for k, v := range dashboardExprs(t) {
		exprs["dashboard "+k] = v
	}
	mfs := liveMetrics(t)
	checked := 0
	for where, expr := range exprs {
		for _, s := range selectors(t, where, expr) {
			name := s.metric
			mf := mfs[name]
			if mf == nil {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if h := mfs[strings.TrimSuffix(name, suffix)]; h != nil && h.GetType() == dto.MetricType_HISTOGRAM && strings.HasSuffix(name, suffix) {
						mf = h
					}
				}
			}
			if mf == nil {
				t.Errorf("%s: %s is not served by a live agent", where, name)
				continue
			}
			checked++
			for _, l := range s.labels {
				if !hasLabel(mf, l) {
					t.Errorf("%s: %s has no label %q", where, name, l)
				}
			}
		}
	}
	if checked < 20 {
		t.Errorf("only %d metric references checked; is the pattern broken?", checked)
	}
}

func hasLabel(mf *dto.MetricFamily, name string) bool {
	for _, m := range mf.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == name {
				return true
			}
		}
	}
	return false
}

func TestSelectors(t *testing.T) {
	got := selectors(t, "x", `sum by (node) (rate(weft_crypto_events_total{event=~"handshake_failed_.*", x!="y"}[5m])) / weft_ready`)
	if len(got) != 2 || got[0].metric != "weft_crypto_events_total" || !slices.Equal(got[0].labels, []string{"event", "x"}) ||
		got[1].metric != "weft_ready" || len(got[1].labels) != 0 {
		t.Errorf("selectors: %+v", got)
	}
}

func readRepo(path string) ([]byte, error) { return os.ReadFile(path) }

func cniTiming() api.CNITiming { return api.CNITiming{Op: api.CNIOpAdd, Seconds: 0.02} }
