package kubecluster

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/weftnet/weft/test/kubeapi"
)

// The counts come from the tests the focus selects; the rest of the suite,
// listed as skipped in the JUnit report, is not counted.
func TestReadJUnitCountsTheSelection(t *testing.T) {
	dir := t.TempDir()
	xml := `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="5" disabled="2" errors="0" failures="1" time="10">
  <testsuite name="Kubernetes e2e suite" package="/" tests="5" disabled="2" skipped="0" errors="0" failures="1" time="10">
    <testcase name="[sig-network] Services should serve a basic endpoint from pods  [Conformance]" classname="Kubernetes e2e suite" status="passed" time="3"></testcase>
    <testcase name="[sig-network] HostPort validates that there is no conflict between pods with same hostPort but different hostIP and protocol [LinuxOnly] [Conformance]" classname="Kubernetes e2e suite" status="failed" time="5"><failure message="timed out" type="failed">boom</failure></testcase>
    <testcase name="[sig-network] Services should have session affinity work for LoadBalancer service with ESIPP on [Slow] [LinuxOnly]" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http [NodeConformance] [Conformance]" classname="Kubernetes e2e suite" status="passed" time="2"></testcase>
    <testcase name="[sig-storage] Volumes should store data" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
  </testsuite>
</testsuites>`
	if err := os.WriteFile(filepath.Join(dir, "junit_01.xml"), []byte(xml), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := readJUnit(dir)
	if err != nil {
		t.Fatal(err)
	}
	// The LoadBalancer test does not match the focus (no [Conformance],
	// HostPort or Granular Checks): not selected.
	if c.Selected != 3 || c.Passed != 2 || c.Failed != 1 || c.Skipped != 0 || len(c.Failures) != 1 || !strings.Contains(c.Failures[0], "HostPort") {
		t.Errorf("counts %+v", c)
	}
	if _, err := readJUnit(t.TempDir()); err == nil {
		t.Error("no junit file: no error")
	}
}

// The agnhost image holds what the e2e tests exec in its pods: a shell and
// its applets, curl, dig and nc with their libraries.
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
	names := layerNames(t, tars[0])
	for _, want := range []string{"agnhost", "agnhost-2", "bin/sh", "bin/busybox", "usr/bin/curl", "usr/bin/dig", "usr/bin/nc", "lib64/ld-linux-x86-64.so.2"} {
		if !slices.Contains(names, want) {
			t.Errorf("agnhost image lacks %s", want)
		}
	}
	if slices.Contains(names, "bin/nc") {
		t.Error("busybox nc shadows the OpenBSD nc the tests' flags need")
	}
}

// layerNames lists the files of the single layer of a docker-save tarball.
func layerNames(t *testing.T, path string) []string {
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
		var names []string
		inner := tar.NewReader(bytes.NewReader(b))
		for {
			h, err := inner.Next()
			if err == io.EOF {
				return names
			}
			if err != nil {
				t.Fatal(err)
			}
			names = append(names, strings.TrimSuffix(h.Name, "/"))
		}
	}
}
