package main

// Docs tests of the pages about releases, exit codes, metrics and
// migration: they keep site/ true to the Makefile, the CLI and the agent.

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/weftnet/weft/agent/agenttest"
)

// TestIndexLinksEveryPage: a page no one links to is a page no one reads.
func TestIndexLinksEveryPage(t *testing.T) {
	index := readFile(t, filepath.Join(repoRoot, "site", "index.md"))
	pages, err := filepath.Glob(filepath.Join(repoRoot, "site", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pages {
		name := filepath.Base(p)
		if name != "index.md" && !strings.Contains(index, "]("+name+")") {
			t.Errorf("site/index.md does not link %s", name)
		}
	}
}

// TestOperationsDocumentsExitCodes checks the exit code table against the
// CLI's constants, and that configuration.md points to it.
func TestOperationsDocumentsExitCodes(t *testing.T) {
	doc := readFile(t, filepath.Join(repoRoot, "site", "operations.md"))
	rows := map[int]string{}
	row := regexp.MustCompile(`^\| ([0-9]) \| (.+) \|$`)
	for _, l := range strings.Split(doc, "\n") {
		if m := row.FindStringSubmatch(l); m != nil {
			n, _ := strconv.Atoi(m[1])
			rows[n] = m[2]
		}
	}
	for code, words := range map[int][]string{
		exitOK: {"ready"}, exitError: {"no agent"}, exitUsage: {"unknown command", "flag"}, exitNotReady: {"not ready"},
	} {
		r, ok := rows[code]
		if !ok {
			t.Errorf("operations.md: no row for exit code %d", code)
			continue
		}
		for _, w := range words {
			if !strings.Contains(r, w) {
				t.Errorf("operations.md: exit code %d row does not say %q: %s", code, w, r)
			}
		}
	}
	if len(rows) != 4 {
		t.Errorf("operations.md: %d exit code rows, want 4", len(rows))
	}
	if !strings.Contains(readFile(t, filepath.Join(repoRoot, "site", "configuration.md")), "operations.md#exit-codes") {
		t.Error("configuration.md does not link the exit codes")
	}
}

// TestOperationsDocumentsEveryMetric scrapes a live agent (two hosts,
// encrypted, so every family exists) and checks that operations.md names
// each weft_ metric, and names none that does not exist.
func TestOperationsDocumentsEveryMetric(t *testing.T) {
	c := agenttest.Start(t, agenttest.Options{N: 2, Password: []byte("docs-test-password")})
	c.WaitFormed()
	rec := httptest.NewRecorder()
	c.Nodes[0].Agent().MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	doc := readFile(t, filepath.Join(repoRoot, "site", "operations.md"))
	documented := map[string]bool{}
	row := regexp.MustCompile("^\\| `(weft_[a-z0-9_]+)` \\|")
	for _, l := range strings.Split(doc, "\n") {
		if m := row.FindStringSubmatch(l); m != nil {
			documented[m[1]] = true
		}
	}
	var served []string
	for name := range mfs {
		if strings.HasPrefix(name, "weft_") {
			served = append(served, name)
			if !documented[name] {
				t.Errorf("operations.md: no table row for the metric %s", name)
			}
		}
	}
	for name := range documented {
		if !slices.Contains(served, name) {
			t.Errorf("operations.md documents %s, which the agent does not serve", name)
		}
	}
	if len(served) < 20 {
		t.Errorf("only %d weft metrics served; is the scrape broken?", len(served))
	}
}

// TestInstallDocumentsRelease checks site/install-kubernetes.md against
// the Makefile's release target and the layout of dist/VERSION.
func TestInstallDocumentsRelease(t *testing.T) {
	mk := readFile(t, filepath.Join(repoRoot, "Makefile"))
	if !regexp.MustCompile(`(?m)^release:`).MatchString(mk) || !regexp.MustCompile(`(?m)^IMAGE \?= `).MatchString(mk) {
		t.Fatal("Makefile: no release target with IMAGE ?=")
	}
	doc := readFile(t, filepath.Join(repoRoot, "site", "install-kubernetes.md"))
	for _, want := range []string{
		"make release VERSION=", "IMAGE=",
		"`weft.yaml`", "`image.tar`", "`weft-linux-amd64`", "`weft-linux-arm64`",
		"`weft-cni-linux-amd64`", "`weft-cni-linux-arm64`", "`SHA256SUMS`",
		"crane push", "ctr -n k8s.io images import", "kubernetes.io/os: linux",
		"modprobe tun", "## Supported versions", "prog/monitoring/weft-metrics.yaml",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("install-kubernetes.md does not mention %s", want)
		}
	}
	manifest := readFile(t, filepath.Join(repoRoot, "prog", "kube", "weft.yaml"))
	if !strings.Contains(manifest, "kubernetes.io/os: linux") {
		t.Error("prog/kube/weft.yaml: the DaemonSet does not select kubernetes.io/os: linux")
	}
}

// TestMigrationGuide checks that the Weave Net guide covers what the issue
// asks: ports and range conflicts, the order of steps, rollback.
func TestMigrationGuide(t *testing.T) {
	doc := readFile(t, filepath.Join(repoRoot, "site", "migrate-from-weave.md"))
	a := anchors(doc)
	for _, h := range []string{"port-and-range-conflicts", "order-of-steps-kubernetes", "rollback"} {
		if !a[h] {
			t.Errorf("migrate-from-weave.md: no section #%s", h)
		}
	}
	for _, w := range []string{"6783", "6784", "6782", "10.32.0.0/12", "IPALLOC_RANGE", "/var/lib/weave"} {
		if !strings.Contains(doc, w) {
			t.Errorf("migrate-from-weave.md does not mention %s", w)
		}
	}
}

// TestChangelog: a changelog that starts now, newest first.
func TestChangelog(t *testing.T) {
	doc := readFile(t, filepath.Join(repoRoot, "CHANGELOG.md"))
	heads := regexp.MustCompile(`(?m)^## (.+)$`).FindAllStringSubmatch(doc, -1)
	if len(heads) == 0 {
		t.Fatal("CHANGELOG.md has no release sections")
	}
	version := regexp.MustCompile(`^(Unreleased|v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)? \([0-9]{4}-[0-9]{2}-[0-9]{2}\))$`)
	for i, h := range heads {
		if !version.MatchString(h[1]) {
			t.Errorf("CHANGELOG.md: section %q: want Unreleased or vX.Y.Z (YYYY-MM-DD)", h[1])
		}
		if h[1] == "Unreleased" && i != 0 {
			t.Error("CHANGELOG.md: Unreleased must come first")
		}
	}
}
