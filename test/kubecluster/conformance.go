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
)

// ConformanceFocus selects Kubernetes' network tests (issue 18).
const ConformanceFocus = `\[sig-network\].*(\[Conformance\]|HostPort|Granular Checks)`

// ConformanceSkip is one pattern of --ginkgo.skip with why the test cannot
// run on these machines; site/conformance.md lists the same table.
type ConformanceSkip struct {
	Pattern, Reason string
}

// ConformanceSkips are the only skips: what this machine kind cannot run.
var ConformanceSkips = []ConformanceSkip{
	{`LoadBalancer`, "needs a cloud load balancer; the test bed has none"},
	{`IPv6|[Dd]ual[- ]?[Ss]tack|Secondary IP Family`, "IPv4-only cluster: weft's range, the Service range and the test bed are IPv4"},
	{`SCTP`, "the machine's kernel has no SCTP module loaded, and a network namespace cannot load one"},
}

// toolbox are the host programs copied into the agnhost and busybox images,
// with their shared libraries: the e2e tests exec them in test pods (the
// upstream agnhost image installs them from Alpine).
var toolbox = []struct{ path, as string }{
	{"/usr/bin/curl", "usr/bin/curl"},
	{"/usr/bin/dig", "usr/bin/dig"},
	{"/bin/nc.openbsd", "usr/bin/nc"},
}

// conformanceImages writes the agnhost and busybox images (agnhost from
// k8sBin/agnhost, busybox-static for the shell and its applets, plus the
// toolbox) and returns their tarballs.
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
			return nil, fmt.Errorf("%s (apt-get install -y curl bind9-dnsutils netcat-openbsd): %w", t.path, err)
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

	agnFiles := append([]imageFile{{path: "agnhost", data: agn, mode: 0o755}, {path: "agnhost-2", link: "agnhost"}}, files...)
	agnTar := filepath.Join(dir, "agnhost-image.tar")
	if err := writeImage(agnTar, []string{AgnhostImage}, []string{"/agnhost"}, []string{"pause"}, agnFiles); err != nil {
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

// ConformanceCounts are the JUnit totals of a run, over the tests the focus
// selects (the JUnit report also lists every test it did not select, as
// skipped: those are not counted).
type ConformanceCounts struct {
	Selected, Passed, Failed, Skipped int
	Failures, SkippedNames            []string
}

// RunConformance runs e2e.test (from $K8S_DIR/bin) against the cluster from
// the Outside namespace with ConformanceFocus and ConformanceSkips, writing
// JUnit and the log into reportDir, and returns the counts.
func (c *Cluster) RunConformance(ctx context.Context, reportDir string, logf func(string, ...any)) (*ConformanceCounts, error) {
	if err := os.MkdirAll(reportDir, 0o755); err != nil {
		return nil, err
	}
	var skips []string
	for _, s := range ConformanceSkips {
		skips = append(skips, s.Pattern)
	}
	logPath := filepath.Join(reportDir, "e2e.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	args := []string{"--net=" + netnsPath(c.Bed.Outside), "--", filepath.Join(c.k8sBin, "e2e.test"),
		"--kubeconfig=" + c.Kubeconfig, "--provider=skeleton", "--report-dir=" + reportDir,
		"--kubectl-path=" + filepath.Join(c.k8sBin, "kubectl"),
		"--ginkgo.focus=" + ConformanceFocus, "--ginkgo.skip=" + strings.Join(skips, "|"),
		"--ginkgo.no-color", "--ginkgo.timeout=110m", "--ginkgo.v",
		"--num-nodes=" + fmt.Sprint(len(c.Nodes)), "--disable-log-dump", "--dump-logs-on-failure=false",
	}
	logf("running: nsenter %s", strings.Join(args, " "))
	start := time.Now()
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), "PATH="+c.k8sBin+":"+os.Getenv("PATH"))
	runErr := cmd.Run()
	logf("e2e.test finished after %s (%v); log in %s", time.Since(start).Round(time.Second), runErr, logPath)
	counts, err := readJUnit(reportDir)
	if err != nil {
		return nil, fmt.Errorf("conformance: %w (e2e.test: %v; log %s:\n%s)", err, runErr, logPath, tailFile(logPath, 30))
	}
	return counts, nil
}

// readJUnit sums every junit*.xml in dir.
func readJUnit(dir string) (*ConformanceCounts, error) {
	files, _ := filepath.Glob(filepath.Join(dir, "junit*.xml"))
	if len(files) == 0 {
		return nil, errors.New("no junit*.xml written")
	}
	focus := regexp.MustCompile(ConformanceFocus)
	var c ConformanceCounts
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
				if !focus.MatchString(tc.Name) {
					continue
				}
				c.Selected++
				switch {
				case tc.Failure != nil || tc.Error != nil:
					c.Failed++
					c.Failures = append(c.Failures, tc.Name)
				case tc.Skipped != nil:
					c.Skipped++
					c.SkippedNames = append(c.SkippedNames, tc.Name)
				default:
					c.Passed++
				}
			}
		}
	}
	return &c, nil
}
