package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/api"
)

func TestStatusWithoutAgentNamesTheSocket(t *testing.T) {
	dir := t.TempDir()
	app := newApp()
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	err := app.Run([]string{"weft", "status", "--run-dir", dir})
	if err == nil {
		t.Fatal("weft status succeeded with no agent")
	}
	if !strings.Contains(err.Error(), dir+"/weft.sock") {
		t.Errorf("error does not name the socket: %v", err)
	}
}

func TestRunDirAnywhereOnTheCommandLine(t *testing.T) {
	for _, args := range [][]string{
		{"weft", "--run-dir", "/x/y", "status", "peers"},
		{"weft", "status", "peers", "--run-dir", "/x/y"},
		{"weft", "status", "--run-dir", "/x/y", "peers"},
	} {
		app := newApp()
		var out bytes.Buffer
		app.Writer, app.ErrWriter = &out, &out
		err := app.Run(args)
		if err == nil || !strings.Contains(err.Error(), "/x/y/weft.sock") {
			t.Errorf("%v: error %v does not name /x/y/weft.sock", args, err)
		}
	}
}

func TestPeersViewAligned(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	var b bytes.Buffer
	writePeers(&b, []api.Peer{
		{Name: "a", Address: "198.18.0.1:6783", State: "alive", Local: true, Version: "1.0", Since: now.Add(-time.Minute)},
		{Name: "a-much-longer-name", Address: "198.18.0.22:6783", State: "dead", Version: "1.0", Since: now.Add(-2 * time.Second)},
	}, now)
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("want header and 2 lines:\n%s", b.String())
	}
	col := strings.Index(lines[0], "ADDRESS")
	for _, l := range lines[1:] {
		if !strings.HasPrefix(l[col:], "198.18.0.") {
			t.Errorf("ADDRESS column not aligned: %q", l)
		}
	}
	if !strings.Contains(lines[1], "a (self)") || !strings.Contains(lines[2], "2s ago") {
		t.Errorf("unexpected view:\n%s", b.String())
	}
}

func TestBytesHuman(t *testing.T) {
	for n, want := range map[uint64]string{0: "0B", 1023: "1023B", 1024: "1.0KiB", 5 << 20: "5.0MiB", 3 << 30: "3.0GiB"} {
		if got := bytesHuman(n); got != want {
			t.Errorf("bytesHuman(%d) = %q, want %q", n, got, want)
		}
	}
}
