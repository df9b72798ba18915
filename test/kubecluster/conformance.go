package kubecluster

import (
	"bufio"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Image names the e2e suite of k8s.io/kubernetes v1.36.3 asks for
// (test/utils/image/manifest.go), built here offline.
const (
	AgnhostImage  = "registry.k8s.io/e2e-test-images/agnhost:2.63.0"
	BusyboxImage  = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"
	E2EPauseImage = "registry.k8s.io/pause:3.10.2"
	// GlibcDNSImage is the DNS tests' second prober ("jessie"): dig and
	// getent over glibc's resolver, beside agnhost's.
	GlibcDNSImage = "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.0.0"
)

// ConformanceFocus selects Kubernetes' network tests (issue 18).
const ConformanceFocus = `\[sig-network\].*(\[Conformance\]|HostPort|Granular Checks)`

// NetpolFocus selects Kubernetes' NetworkPolicy tests (issue 19).
const NetpolFocus = `\[sig-network\] Netpol`

// ConformanceSelection is one focus of `make conformance`, counted on its own
// in the summary.
type ConformanceSelection struct {
	Name, Focus string
}

// ConformanceSelections are what `make conformance` runs: one ginkgo run over
// their union, counted per selection.
var ConformanceSelections = []ConformanceSelection{
	{"network", ConformanceFocus},
	{"netpol", NetpolFocus},
}

// ConformanceSkip is one pattern of --ginkgo.skip with why the test cannot
// run on these machines; site/conformance.md lists the same table.
type ConformanceSkip struct {
	Pattern, Reason string
}

// ConformanceSkips are the only skips: what this machine kind cannot run.
// SCTP is skipped by its feature tag, not by the word: the Netpol tests that
// only write "protocol: SCTP" into a policy and probe TCP need no SCTP in the
// kernel and run.
var ConformanceSkips = []ConformanceSkip{
	{`LoadBalancer`, "needs a cloud load balancer; the test bed has none"},
	{`IPv6|[Dd]ual[- ]?[Ss]tack|Secondary IP Family`, "IPv4-only cluster: weft's range, the Service range and the test bed are IPv4"},
	{`\[Feature:SCTPConnectivity\]`, "the machine's kernel has no SCTP (no /proc/sys/net/sctp), and a network namespace cannot load the module"},
}

// toolbox are the host programs copied into the agnhost and busybox images,
// with their shared libraries: the e2e tests exec them in test pods (the
// upstream agnhost image installs them from Alpine).
var toolbox = []struct{ path, as string }{
	{"/usr/bin/curl", "usr/bin/curl"},
	{"/usr/bin/dig", "usr/bin/dig"},
	{"/bin/nc.openbsd", "usr/bin/nc"},
	// The DNS tests check /etc/hosts entries with getent (glibc's,
	// whose files and dns lookups live in libc.so.6 since 2.34).
	{"/usr/bin/getent", "usr/bin/getent"},
	// The shell of the agnhost and glibc-dns-testing images (see
	// bashShell); the upstream agnhost image has bash too.
	{"/bin/bash", "bin/bash"},
}

// bashShell returns files with /bin/sh pointing to bash instead of busybox.
// Debian's busybox-static is built with FEATURE_SH_STANDALONE: its sh runs
// its own applet for any command it has one for, before looking at PATH, so
// `sh -c "nc -v -u ..."` ran busybox's nc (no -v, -u, -z) and never the
// OpenBSD nc at /usr/bin/nc. Every test that execs nc in an agnhost pod
// failed that way: NodePort udp, session affinity, Service reachability.
// The busybox image keeps busybox's sh and applets, as upstream.
func bashShell(files []imageFile) []imageFile {
	out := make([]imageFile, 0, len(files))
	for _, f := range files {
		if f.path == "bin/sh" {
			f = imageFile{path: "bin/sh", link: "/bin/bash"}
		}
		out = append(out, f)
	}
	return out
}

// conformanceImages writes the agnhost image (also named glibc-dns-testing)
// and the busybox image (agnhost from k8sBin/agnhost, busybox-static for the
// shell and its applets, plus the toolbox) and returns their tarballs.
// Without the glibc-dns-testing name the DNS tests' prober pod never starts
// (the image cannot be pulled here) and every DNS test that probes with it
// fails.
func conformanceImages(dir, k8sBin string) ([]string, error) {
	agn, err := os.ReadFile(filepath.Join(k8sBin, "agnhost"))
	if err != nil {
		return nil, fmt.Errorf("agnhost (CMDS=agnhost test/kubeapi/k8s/build.sh): %w", err)
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return nil, fmt.Errorf("busybox (apt-get install -y busybox-static): %w", err)
	}
	bbData, err := os.ReadFile(bb)
	if err != nil {
		return nil, err
	}
	files := []imageFile{{path: "bin/busybox", data: bbData, mode: 0o755}}
	have := map[string]bool{"bin/busybox": true}
	for _, t := range toolbox {
		fs, err := withLibraries(t.path, t.as)
		if err != nil {
			return nil, fmt.Errorf("%s (apt-get install -y curl bind9-dnsutils netcat-openbsd libc-bin): %w", t.path, err)
		}
		for _, f := range fs {
			if !have[f.path] {
				have[f.path] = true
				files = append(files, f)
			}
		}
	}
	applets, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	for a := range strings.FieldsSeq(string(applets)) {
		p := "bin/" + a
		if !have[p] && !have["usr/bin/"+a] {
			have[p] = true
			files = append(files, imageFile{path: p, link: "/bin/busybox"})
		}
	}
	files = append(files, imageFile{path: "etc/nsswitch.conf", data: []byte("hosts: files dns\n"), mode: 0o644})

	agnFiles := append([]imageFile{{path: "agnhost", data: agn, mode: 0o755}, {path: "agnhost-2", link: "agnhost"}}, bashShell(files)...)
	cert, err := porterCert()
	if err != nil {
		return nil, err
	}
	agnFiles = append(agnFiles, cert...)
	agnTar := filepath.Join(dir, "agnhost-image.tar")
	// The glibc-dns-testing image is the agnhost image under a second
	// name: its pods always give their command (sh -c with dig and
	// getent), and one image imports into each node's containerd in half
	// the time of two.
	if err := writeImage(agnTar, []string{AgnhostImage, GlibcDNSImage}, []string{"/agnhost"}, []string{"pause"}, agnFiles); err != nil {
		return nil, err
	}
	bbTar := filepath.Join(dir, "busybox-image.tar")
	if err := writeImage(bbTar, []string{BusyboxImage}, nil, []string{"sh"}, files); err != nil {
		return nil, err
	}
	return []string{agnTar, bbTar}, nil
}

// withLibraries returns the program at path (stored as as) and every shared
// library ldd lists for it, at their own paths.
func withLibraries(path, as string) ([]imageFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := []imageFile{{path: as, data: data, mode: 0o755}}
	ldd, err := exec.Command("ldd", path).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", path, err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(ldd)))
	for sc.Scan() {
		// "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or
		// "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
		f := strings.Fields(sc.Text())
		var lib string
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			lib = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			lib = f[0]
		default:
			continue
		}
		b, err := os.ReadFile(lib) // follows the symlink: the image gets the content under the linked name
		if err != nil {
			return nil, err
		}
		out = append(out, imageFile{path: strings.TrimPrefix(lib, "/"), data: b, mode: 0o755})
	}
	return out, nil
}

// ConformanceCounts are the JUnit totals of a run over the tests one focus
// selects (the JUnit report also lists every test it did not select, as
// skipped: those are not counted).
type ConformanceCounts struct {
	Name, Focus                       string
	Selected, Passed, Failed, Skipped int
	Failures, SkippedNames            []string
}

// ConformanceRun says how RunConformance runs the suite.
type ConformanceRun struct {
	// Focus, when set, replaces ConformanceSelections with this one
	// regular expression (WEFT_CONFORMANCE_FOCUS: iterate on one test).
	Focus string
	// Procs is the number of ginkgo processes of the parallel pass
	// (WEFT_CONFORMANCE_PROCS); 0 means DefaultConformanceProcs.
	Procs int
	// Timeout bounds each of the two passes; 0 means 100 minutes.
	Timeout time.Duration
}

// DefaultConformanceProcs runs four tests at a time: most of a network test
// is waiting for pods and probes, so four fit the 2-core machine while the
// cluster's own daemons keep up (measured in site/conformance.md).
const DefaultConformanceProcs = 4

// selections are the foci the run counts: the override or the defaults.
func (r ConformanceRun) selections() []ConformanceSelection {
	if r.Focus != "" {
		return []ConformanceSelection{{"focus", r.Focus}}
	}
	return ConformanceSelections
}

// ginkgoPass is one invocation of the ginkgo CLI over e2e.test.
type ginkgoPass struct {
	name        string // also the JUnit prefix: junit_<name>_01.xml
	labelFilter string
	procs       int
}

// conformancePasses splits the run as Kubernetes' CI does: the tests labelled
// Serial (they change the whole cluster, e.g. restart kube-proxy) run alone,
// after every other test ran in parallel.
func conformancePasses(procs int) []ginkgoPass {
	return []ginkgoPass{
		{name: "parallel", labelFilter: "!Serial", procs: procs},
		{name: "serial", labelFilter: "Serial", procs: 1},
	}
}

// ginkgoArgs is the command line of one pass: ginkgo's own flags, the
// binary, and after "--" e2e.test's flags.
func (c *Cluster) ginkgoArgs(p ginkgoPass, focus, skip, reportDir string, timeout time.Duration) []string {
	args := []string{filepath.Join(c.k8sBin, "ginkgo"),
		"--focus=" + focus, "--skip=" + skip, "--label-filter=" + p.labelFilter,
		"--no-color", "--timeout=" + timeout.String(), "-v",
	}
	if p.procs > 1 {
		args = append(args, "-p", fmt.Sprintf("--procs=%d", p.procs))
	}
	return append(args, filepath.Join(c.k8sBin, "e2e.test"), "--",
		"--kubeconfig="+c.Kubeconfig, "--provider=skeleton", "--report-dir="+reportDir,
		"--report-prefix="+p.name+"_",
		"--kubectl-path="+filepath.Join(c.k8sBin, "kubectl"),
		"--num-nodes="+fmt.Sprint(len(c.Nodes)), "--disable-log-dump", "--dump-logs-on-failure=false")
}

// RunConformance runs e2e.test (from $K8S_DIR/bin) with the ginkgo CLI
// against the cluster from the Outside namespace: the union of the
// selections' foci minus ConformanceSkips, a parallel pass and then a serial
// one. JUnit and logs go to reportDir; it returns the counts per selection.
func (c *Cluster) RunConformance(ctx context.Context, reportDir string, run ConformanceRun, logf func(string, ...any)) ([]*ConformanceCounts, error) {
	if err := os.MkdirAll(reportDir, 0o755); err != nil {
		return nil, err
	}
	for _, bin := range []string{"ginkgo", "e2e.test"} {
		if _, err := os.Stat(filepath.Join(c.k8sBin, bin)); err != nil {
			return nil, fmt.Errorf("conformance: %s (CMDS=\"e2e.test agnhost ginkgo\" test/kubeapi/k8s/build.sh): %w", bin, err)
		}
	}
	var skips, foci []string
	for _, s := range ConformanceSkips {
		skips = append(skips, s.Pattern)
	}
	sels := run.selections()
	for _, s := range sels {
		foci = append(foci, s.Focus)
	}
	procs := run.Procs
	if procs <= 0 {
		procs = DefaultConformanceProcs
	}
	timeout := run.Timeout
	if timeout <= 0 {
		timeout = 100 * time.Minute
	}
	var runErrs []error
	for _, p := range conformancePasses(procs) {
		logPath := filepath.Join(reportDir, "e2e-"+p.name+".log")
		logFile, err := os.Create(logPath)
		if err != nil {
			return nil, err
		}
		args := append([]string{"--net=" + netnsPath(c.Bed.Outside), "--"},
			c.ginkgoArgs(p, strings.Join(foci, "|"), strings.Join(skips, "|"), reportDir, timeout)...)
		logf("running %s pass: nsenter %s", p.name, strings.Join(args, " "))
		start := time.Now()
		cmd := exec.CommandContext(ctx, "nsenter", args...)
		cmd.Stdout, cmd.Stderr = logFile, logFile
		cmd.Env = append(os.Environ(), "PATH="+c.k8sBin+":"+os.Getenv("PATH"))
		runErr := cmd.Run()
		logFile.Close()
		logf("%s pass finished after %s (%v); log in %s", p.name, time.Since(start).Round(time.Second), runErr, logPath)
		if runErr != nil {
			// A failed test also exits non-zero: the JUnit counts say
			// which; the error matters only when no report was written.
			runErrs = append(runErrs, fmt.Errorf("%s pass: %w (log %s:\n%s)", p.name, runErr, logPath, tailFile(logPath, 30)))
		}
		if ctx.Err() != nil {
			break
		}
	}
	counts, err := readJUnit(reportDir, sels)
	if err != nil {
		return nil, fmt.Errorf("conformance: %w %v", err, errors.Join(runErrs...))
	}
	return counts, nil
}

// outcome ranks a test's results across the passes' reports: each report
// lists every test, those of the other pass as skipped, so a test's outcome
// is the strongest one any report gives it.
type outcome int

const (
	outcomeSkipped outcome = iota
	outcomePassed
	outcomeFailed
)

// readJUnit merges every junit*.xml in dir (a test's outcome is the strongest
// any file gives it) and counts it for each selection whose focus it matches.
func readJUnit(dir string, sels []ConformanceSelection) ([]*ConformanceCounts, error) {
	files, _ := filepath.Glob(filepath.Join(dir, "junit*.xml"))
	if len(files) == 0 {
		return nil, errors.New("no junit*.xml written")
	}
	results := map[string]outcome{}
	var order []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var doc struct {
			Suites []struct {
				Cases []struct {
					Name    string    `xml:"name,attr"`
					Skipped *struct{} `xml:"skipped"`
					Failure *struct{} `xml:"failure"`
					Error   *struct{} `xml:"error"`
				} `xml:"testcase"`
			} `xml:"testsuite"`
		}
		if err := xml.Unmarshal(b, &doc); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		for _, s := range doc.Suites {
			for _, tc := range s.Cases {
				o := outcomePassed
				switch {
				case tc.Failure != nil || tc.Error != nil:
					o = outcomeFailed
				case tc.Skipped != nil:
					o = outcomeSkipped
				}
				prev, seen := results[tc.Name]
				if !seen {
					order = append(order, tc.Name)
				}
				if !seen || o > prev {
					results[tc.Name] = o
				}
			}
		}
	}
	var out []*ConformanceCounts
	for _, sel := range sels {
		focus, err := regexp.Compile(sel.Focus)
		if err != nil {
			return nil, fmt.Errorf("focus %q: %w", sel.Focus, err)
		}
		c := &ConformanceCounts{Name: sel.Name, Focus: sel.Focus}
		for _, name := range order {
			if !focus.MatchString(name) {
				continue
			}
			c.Selected++
			switch results[name] {
			case outcomeFailed:
				c.Failed++
				c.Failures = append(c.Failures, name)
			case outcomeSkipped:
				c.Skipped++
				c.SkippedNames = append(c.SkippedNames, name)
			default:
				c.Passed++
			}
		}
		out = append(out, c)
	}
	return out, nil
}
