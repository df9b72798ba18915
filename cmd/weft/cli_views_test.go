package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/weftnet/weft/agent"
)

// typedJSONViews are the views whose -o json a test decodes strictly into
// the API type (TestJSONViews, TestStatusMesh, TestStatusPolicy,
// TestVersionFlagAndCommandAgree). A new view must join them.
var typedJSONViews = []string{
	"ps", "report", "status", "status connections", "status ipam", "status mesh",
	"status peers", "status policy", "status targets", "version",
}

// viewCommands walks the command tree for every command with -o.
func viewCommands(prefix []string, cmds []*cli.Command, out map[string]*cli.Command) {
	for _, c := range cmds {
		path := append(slices.Clone(prefix), c.Name)
		for _, f := range c.Flags {
			if slices.Contains(f.Names(), "output") {
				out[strings.Join(path, " ")] = c
			}
		}
		viewCommands(path, c.Subcommands, out)
	}
}

func hasFlag(c *cli.Command, name string) bool {
	for _, f := range c.Flags {
		if slices.Contains(f.Names(), name) {
			return true
		}
	}
	return false
}

// TestEveryViewHasJSONAndTable finds every command with -o in the command
// tree and runs it both ways against a ready agent: exit 0, JSON that
// parses, a table that is not JSON. And each is one of typedJSONViews.
func TestEveryViewHasJSONAndTable(t *testing.T) {
	views := map[string]*cli.Command{}
	viewCommands(nil, newApp().Commands, views)
	var names []string
	for name := range views {
		names = append(names, name)
	}
	slices.Sort(names)
	if !slices.Equal(names, typedJSONViews) {
		t.Errorf("views with -o %v; the typed -o json tests cover %v", names, typedJSONViews)
	}
	n := readyAgent(t)
	for _, name := range names {
		args := strings.Fields(name)
		if hasFlag(views[name], "run-dir") {
			args = append(args, "--run-dir", n.Config.RunDir)
		}
		r := runCLI(t, append(args, "-o", "json")...)
		if r.code != exitOK || !json.Valid([]byte(r.stdout)) || !strings.ContainsAny(r.stdout[:1], "[{") {
			t.Errorf("weft %s -o json: exit %d, stdout %q, stderr %q", name, r.code, r.stdout, r.stderr)
		}
		r = runCLI(t, append(args, "-o", "table")...)
		if r.code != exitOK || r.stderr != "" || json.Valid([]byte(r.stdout)) && strings.TrimSpace(r.stdout) != "" {
			t.Errorf("weft %s -o table: exit %d, stdout %q, stderr %q", name, r.code, r.stdout, r.stderr)
		}
	}
}

// launchConfigOf parses a launch command line (flags and environment)
// into the agent's Config without starting it.
func launchConfigOf(t *testing.T, args ...string) agent.Config {
	t.Helper()
	app := newApp()
	var cfg agent.Config
	for _, c := range app.Commands {
		if c.Name == "launch" {
			c.Action = func(c *cli.Context) error {
				var err error
				cfg, err = launchConfig(c)
				return err
			}
		}
	}
	base := []string{"weft", "launch", "--host", "198.18.0.1", "--plaintext", "--state-dir", t.TempDir(), "--run-dir", t.TempDir()}
	if err := app.Run(append(base, args...)); err != nil {
		t.Fatalf("weft launch %v: %v", args, err)
	}
	return cfg
}

// --metrics-per-peer=false (or WEFT_METRICS_PER_PEER=false, as the
// DaemonSet sets it) turns the per-peer series into sums.
func TestMetricsPerPeerFlag(t *testing.T) {
	if cfg := launchConfigOf(t); cfg.NoPerPeerMetrics {
		t.Error("per-peer metrics off by default")
	}
	if cfg := launchConfigOf(t, "--metrics-per-peer=false"); !cfg.NoPerPeerMetrics {
		t.Error("--metrics-per-peer=false: per-peer metrics still on")
	}
	t.Setenv("WEFT_METRICS_PER_PEER", "false")
	if cfg := launchConfigOf(t); !cfg.NoPerPeerMetrics {
		t.Error("WEFT_METRICS_PER_PEER=false: per-peer metrics still on")
	}
	if cfg := launchConfigOf(t, "--metrics-per-peer=true"); cfg.NoPerPeerMetrics {
		t.Error("the flag does not win over the environment")
	}
}

// `weft help [COMMAND [VIEW]]` is `weft COMMAND [VIEW] --help`, exit 0; an
// unknown word is a usage error with a suggestion.
func TestHelpCommand(t *testing.T) {
	for _, c := range []struct {
		args       []string
		code       int
		out, error string
	}{
		{[]string{"help"}, exitOK, "weft - an overlay network", ""},
		{[]string{"help", "status"}, exitOK, "weft status - show the agent's view", ""},
		{[]string{"help", "status", "peers"}, exitOK, "weft status peers - one line per peer", ""},
		{[]string{"help", "stauts"}, exitUsage, "", `unknown command "stauts"; did you mean "status"?`},
		{[]string{"help", "status", "peer"}, exitUsage, "", `did you mean "peers"?`},
	} {
		r := runCLI(t, c.args...)
		if r.code != c.code || !strings.Contains(r.stdout, c.out) || !strings.Contains(r.stderr, c.error) || (c.error == "") != (r.stderr == "") {
			t.Errorf("weft %s: exit %d (want %d)\nstdout: %s\nstderr: %s", strings.Join(c.args, " "), r.code, c.code, r.stdout, r.stderr)
		}
	}
}
