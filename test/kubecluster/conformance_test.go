package kubecluster

import (
	"archive/tar"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/weftnet/weft/test/kubeapi"
)

// The counts come from the tests the focus selects; the rest of the suite,
// listed as skipped in the JUnit report, is not counted. Each selection is
// counted on its own.
func TestReadJUnitCountsTheSelection(t *testing.T) {
	dir := t.TempDir()
	xml := `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="6" disabled="2" errors="0" failures="1" time="10">
  <testsuite name="Kubernetes e2e suite" package="/" tests="6" disabled="2" skipped="0" errors="0" failures="1" time="10">
    <testcase name="[sig-network] Services should serve a basic endpoint from pods  [Conformance]" classname="Kubernetes e2e suite" status="passed" time="3"></testcase>
    <testcase name="[sig-network] HostPort validates that there is no conflict between pods with same hostPort but different hostIP and protocol [LinuxOnly] [Conformance]" classname="Kubernetes e2e suite" status="failed" time="5"><failure message="timed out" type="failed">boom</failure></testcase>
    <testcase name="[sig-network] Services should have session affinity work for LoadBalancer service with ESIPP on [Slow] [LinuxOnly]" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http [NodeConformance] [Conformance]" classname="Kubernetes e2e suite" status="passed" time="2"></testcase>
    <testcase name="[sig-network] Netpol NetworkPolicy between server and client should support a 'default-deny-ingress' policy [Feature:NetworkPolicy]" classname="Kubernetes e2e suite" status="failed" time="2"><failure message="x" type="failed">y</failure></testcase>
    <testcase name="[sig-storage] Volumes should store data" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
  </testsuite>
</testsuites>`
	if err := os.WriteFile(filepath.Join(dir, "junit_01.xml"), []byte(xml), 0o644); err != nil {
		t.Fatal(err)
	}
	cs, err := readJUnit(dir, ConformanceSelections)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 || cs[0].Name != "network" || cs[1].Name != "netpol" {
		t.Fatalf("selections %+v", cs)
	}
	// The LoadBalancer test does not match the focus (no [Conformance],
	// HostPort or Granular Checks): not selected.
	if c := cs[0]; c.Selected != 3 || c.Passed != 2 || c.Failed != 1 || c.Skipped != 0 || len(c.Failures) != 1 || !strings.Contains(c.Failures[0], "HostPort") {
		t.Errorf("network counts %+v", c)
	}
	if c := cs[1]; c.Selected != 1 || c.Failed != 1 || !strings.Contains(c.Failures[0], "default-deny-ingress") {
		t.Errorf("netpol counts %+v", c)
	}
	if _, err := readJUnit(t.TempDir(), ConformanceSelections); err == nil {
		t.Error("no junit file: no error")
	}
}

// The parallel and the serial pass each write a report listing every test;
// the tests of the other pass appear there as skipped. A test counts with
// the outcome of the pass that ran it, and a test skipped by both (the
// suite skipped it at run time) stays skipped.
func TestReadJUnitMergesPasses(t *testing.T) {
	dir := t.TempDir()
	report := func(file string, cases ...string) {
		t.Helper()
		x := `<testsuites><testsuite name="Kubernetes e2e suite">` + strings.Join(cases, "") + `</testsuite></testsuites>`
		if err := os.WriteFile(filepath.Join(dir, file), []byte(x), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const (
		par  = "[sig-network] Services should serve multiport endpoints from pods  [Conformance]"
		ser  = "[sig-network] Services should work after restarting kube-proxy [Disruptive] [Serial] [Conformance]"
		fail = "[sig-network] Networking Granular Checks: Services should update nodePort: udp [Slow]"
		skip = "[sig-network] Networking Granular Checks: Services should function for node-Service: sctp [Feature:SCTPConnectivity]"
	)
	passed := func(n string) string { return `<testcase name="` + n + `" status="passed"></testcase>` }
	skipped := func(n string) string {
		return `<testcase name="` + n + `" status="skipped"><skipped message="x"></skipped></testcase>`
	}
	failed := func(n string) string {
		return `<testcase name="` + n + `" status="failed"><failure message="x">y</failure></testcase>`
	}
	report("junit_parallel_01.xml", passed(par), skipped(ser), failed(fail), skipped(skip))
	report("junit_serial_01.xml", skipped(par), passed(ser), skipped(fail), skipped(skip))
	cs, err := readJUnit(dir, []ConformanceSelection{{"network", ConformanceFocus}})
	if err != nil {
		t.Fatal(err)
	}
	c := cs[0]
	if c.Selected != 4 || c.Passed != 2 || c.Failed != 1 || c.Skipped != 1 || c.Failures[0] != fail || c.SkippedNames[0] != skip {
		t.Errorf("merged counts %+v", c)
	}
}

// The passes: everything but Serial in parallel, then Serial alone; the
// skips by feature tag leave the Netpol tests that only name SCTP in a
// policy selected.
func TestConformancePassesAndSkips(t *testing.T) {
	ps := conformancePasses(4)
	if len(ps) != 2 || ps[0].labelFilter != "!Serial" || ps[0].procs != 4 || ps[1].labelFilter != "Serial" || ps[1].procs != 1 {
		t.Fatalf("passes %+v", ps)
	}
	var pats []string
	for _, s := range ConformanceSkips {
		pats = append(pats, s.Pattern)
	}
	skip := regexp.MustCompile(strings.Join(pats, "|"))
	for name, want := range map[string]bool{
		"[sig-network] Netpol NetworkPolicy between server and client should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP [Feature:NetworkPolicy]": false,
		"[sig-network] Networking Granular Checks: Services should function for pod-Service: sctp [Feature:SCTPConnectivity]":                                                                           true,
		"[sig-network] Netpol [Feature:SCTPConnectivity] [LinuxOnly] NetworkPolicy between server and client using SCTP should support a 'default-deny-ingress' policy [Feature:NetworkPolicy]":         true,
		"[sig-network] Services should be able to create a functioning NodePort service [Conformance]":                                                                                                  false,
	} {
		if skip.MatchString(name) != want {
			t.Errorf("skip(%q) = %v, want %v", name, !want, want)
		}
	}
}

// The agnhost image holds what the e2e tests exec in its pods: a shell and
// its applets, curl, dig, nc and getent with their libraries; the
// glibc-dns-testing image the DNS tests' second prober needs is there too.
func TestConformanceImages(t *testing.T) {
	bin := filepath.Join(kubeapi.K8SDir(), "bin")
	if _, err := os.Stat(filepath.Join(bin, "agnhost")); err != nil {
		t.Skipf("agnhost not built (CMDS=agnhost test/kubeapi/k8s/build.sh): %v", err)
	}
	for _, p := range []string{"busybox", "curl", "dig", "nc.openbsd", "ldd"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s missing (apt-get install -y busybox-static curl bind9-dnsutils netcat-openbsd)", p)
		}
	}
	dir := t.TempDir()
	tars, err := conformanceImages(dir, bin)
	if err != nil {
		t.Fatal(err)
	}
	if len(tars) != 2 {
		t.Fatalf("images %v", tars)
	}
	if tags := repoTags(t, tars[0]); !slices.Contains(tags, AgnhostImage) || !slices.Contains(tags, GlibcDNSImage) {
		t.Errorf("agnhost image tags %v, want %s and %s", tags, AgnhostImage, GlibcDNSImage)
	}
	names := layerNames(t, tars[0])
	for _, want := range []string{"agnhost", "agnhost-2", "bin/sh", "bin/busybox", "usr/bin/curl", "usr/bin/dig", "usr/bin/nc", "usr/bin/getent", "lib64/ld-linux-x86-64.so.2"} {
		if !slices.Contains(names, want) {
			t.Errorf("agnhost image lacks %s", want)
		}
	}
	if slices.Contains(names, "bin/nc") {
		t.Error("busybox nc shadows the OpenBSD nc the tests' flags need")
	}
	// agnhost porter serves its TLS ports with /localhost.crt and
	// /localhost.key; without them the Proxy conformance test's https
	// cases are refused.
	files := layerFiles(t, tars[0])
	pair, err := tls.X509KeyPair(files["localhost.crt"], files["localhost.key"])
	if err != nil {
		t.Fatalf("agnhost image's porter certificate: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.VerifyHostname("127.0.0.1"); err != nil {
		t.Errorf("porter certificate: %v", err)
	}
}

// repoTags reads the RepoTags of a docker-save tarball's manifest.json.
func repoTags(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := tar.NewReader(f)
	for {
		h, err := r.Next()
		if err != nil {
			t.Fatalf("no manifest.json in %s: %v", path, err)
		}
		if h.Name != "manifest.json" {
			continue
		}
		var m []struct{ RepoTags []string }
		if err := json.NewDecoder(r).Decode(&m); err != nil {
			t.Fatal(err)
		}
		var tags []string
		for _, e := range m {
			tags = append(tags, e.RepoTags...)
		}
		return tags
	}
}

// In the agnhost and glibc-dns-testing images `sh -c` finds nc, curl and
// getent through PATH, as the e2e tests' commands expect: busybox-static's
// sh ran its own nc applet (no -u, -v, -z) instead of /usr/bin/nc. The
// images' files run in a chroot.
func TestConformanceImagesShellFindsTools(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for chroot")
	}
	bin := filepath.Join(kubeapi.K8SDir(), "bin")
	if _, err := os.Stat(filepath.Join(bin, "agnhost")); err != nil {
		t.Skipf("agnhost not built (CMDS=agnhost test/kubeapi/k8s/build.sh): %v", err)
	}
	for _, p := range []string{"busybox", "curl", "dig", "nc.openbsd", "ldd", "bash", "getent"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s missing (apt-get install -y busybox-static curl bind9-dnsutils netcat-openbsd)", p)
		}
	}
	tars, err := conformanceImages(t.TempDir(), bin)
	if err != nil {
		t.Fatal(err)
	}
	{
		const name = "agnhost"
		root := t.TempDir()
		extractLayer(t, tars[0], root)
		cmd := exec.Command("/bin/sh", "-c", "command -v nc; command -v curl; command -v getent; nc -h 2>&1 | head -1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
		cmd.Dir = "/"
		cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: sh -c: %v\n%s", name, err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) < 4 || lines[0] != "/usr/bin/nc" || lines[1] != "/usr/bin/curl" || lines[2] != "/usr/bin/getent" || strings.Contains(lines[3], "BusyBox") {
			t.Errorf("%s: the shell finds the wrong tools:\n%s", name, out)
		}
	}
}

// extractLayer unpacks the single layer of a docker-save tarball into root.
func extractLayer(t *testing.T, path, root string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	outer := tar.NewReader(f)
	for {
		h, err := outer.Next()
		if err != nil {
			t.Fatalf("no layer in %s: %v", path, err)
		}
		if strings.HasSuffix(h.Name, "/layer.tar") {
			break
		}
	}
	inner := tar.NewReader(outer)
	for {
		h, err := inner.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(root, h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(dst, 0o755)
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, dst)
		case tar.TypeReg:
			var b []byte
			if b, err = io.ReadAll(inner); err == nil {
				err = os.WriteFile(dst, b, os.FileMode(h.Mode))
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// layerNames lists the files of the single layer of a docker-save tarball.
func layerNames(t *testing.T, path string) []string {
	t.Helper()
	var names []string
	for name := range layerFiles(t, path) {
		names = append(names, name)
	}
	return names
}

// layerFiles reads the single layer of a docker-save tarball: each entry's
// name (without a trailing slash) and its contents.
func layerFiles(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	outer := tar.NewReader(f)
	for {
		h, err := outer.Next()
		if err != nil {
			t.Fatalf("no layer in %s: %v", path, err)
		}
		if !strings.HasSuffix(h.Name, "/layer.tar") {
			continue
		}
		b, err := io.ReadAll(outer)
		if err != nil {
			t.Fatal(err)
		}
		files := map[string][]byte{}
		inner := tar.NewReader(bytes.NewReader(b))
		for {
			h, err := inner.Next()
			if err == io.EOF {
				return files
			}
			if err != nil {
				t.Fatal(err)
			}
			data, err := io.ReadAll(inner)
			if err != nil {
				t.Fatal(err)
			}
			files[strings.TrimSuffix(h.Name, "/")] = data
		}
	}
}
