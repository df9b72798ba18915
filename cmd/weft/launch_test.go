package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

// In a Kubernetes pod, no password means plaintext only when WEFT_PLAINTEXT
// says so; elsewhere no password is plaintext as before.
func TestCheckEncryptionChoice(t *testing.T) {
	for _, c := range []struct {
		password, plaintext, inCluster bool
		want                           string // "" = accepted
	}{
		{false, false, false, ""},
		{true, false, false, ""},
		{false, true, false, ""},
		{true, false, true, ""},
		{false, true, true, ""},
		{false, false, true, "WEFT_PLAINTEXT=true"},
		{true, true, false, "give only one"},
		{true, true, true, "give only one"},
	} {
		err := checkEncryptionChoice(c.password, c.plaintext, c.inCluster)
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("password=%v plaintext=%v in-cluster=%v: %v, want %q", c.password, c.plaintext, c.inCluster, err, c.want)
		}
	}
}

// With --log-format json, client-go's klog lines are JSON too.
func TestKlogThroughSlog(t *testing.T) {
	var buf bytes.Buffer
	log, err := newLogger(&buf, "json", "info")
	if err != nil {
		t.Fatal(err)
	}
	bridgeKlog(log)
	t.Cleanup(klog.ClearLogger)
	klog.Info("from client-go")
	klog.ErrorS(errors.New("boom"), "watch failed", "resource", "nodes")
	klog.Flush()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines, got:\n%s", buf.String())
	}
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Errorf("not JSON: %q: %v", l, err)
			continue
		}
		if m["component"] != "client-go" {
			t.Errorf("no component=client-go: %q", l)
		}
	}
	if !strings.Contains(lines[0], `"msg":"from client-go"`) || !strings.Contains(lines[1], `"resource":"nodes"`) {
		t.Errorf("unexpected lines:\n%s", buf.String())
	}
}
