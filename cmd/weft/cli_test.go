package main

// The CLI against real agents (agent/agenttest: whole agents in this
// process, no root): every exit code and every -o json view.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/agent/agenttest"
	"github.com/weftnet/weft/api"
)

type cliResult struct {
	stdout, stderr string
	code           int
}

func runCLI(t *testing.T, args ...string) cliResult {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := run(ctx, append([]string{"weft"}, args...), &out, &errb)
	return cliResult{out.String(), errb.String(), code}
}

// readyAgent is one agent that owns the whole ring and is ready.
func readyAgent(t *testing.T) *agenttest.Node {
	t.Helper()
	c := agenttest.Start(t, agenttest.Options{N: 1, IPAMInit: "consensus=1"})
	c.WaitFormed()
	return c.Nodes[0]
}

// notReadyAgent answers on its socket but waits for a second peer that
// never comes to form the ring (consensus=2).
func notReadyAgent(t *testing.T) *agenttest.Node {
	t.Helper()
	c := agenttest.New(t, agenttest.Options{N: 2})
	n := c.Nodes[0]
	n.Start()
	c.Wait("the agent's API", func() error {
		st, err := n.Status()
		if err == nil && st.IPAM == nil {
			return os.ErrNotExist // answering, but gossip not started
		}
		return err
	})
	return n
}

func TestExitCodes(t *testing.T) {
	ready := readyAgent(t)
	notReady := notReadyAgent(t)
	noAgent := t.TempDir()
	for _, c := range []struct {
		name   string
		args   []string
		code   int
		stderr string // in the error line; "" = no error line
	}{
		{"ready", []string{"status", "--run-dir", ready.Config.RunDir}, exitOK, ""},
		{"ready view", []string{"status", "ipam", "--run-dir", ready.Config.RunDir}, exitOK, ""},
		{"ready report", []string{"report", "--run-dir", ready.Config.RunDir}, exitOK, ""},
		{"not ready", []string{"status", "--run-dir", notReady.Config.RunDir}, exitNotReady, "agent not ready: address ring: "},
		{"not ready view", []string{"status", "peers", "--run-dir", notReady.Config.RunDir}, exitNotReady, "agent not ready"},
		{"not ready json", []string{"status", "-o", "json", "--run-dir", notReady.Config.RunDir}, exitNotReady, "agent not ready"},
		{"no agent", []string{"status", "--run-dir", noAgent}, exitError, "no weft agent answers on " + noAgent},
		{"no agent view", []string{"status", "connections", "--run-dir", noAgent}, exitError, "no weft agent answers"},
		{"no agent ps", []string{"ps", "--run-dir", noAgent}, exitError, "no weft agent answers"},
		{"agent says no", []string{"rmpeer", "--run-dir", ready.Config.RunDir, ready.Name}, exitError, "bad-request"},
		{"unknown command", []string{"stats"}, exitUsage, `unknown command "stats"; did you mean "status"?`},
		{"unknown command far", []string{"xyzzy"}, exitUsage, `unknown command "xyzzy"; commands: launch, status`},
		{"unknown view", []string{"status", "peer"}, exitUsage, `did you mean "peers"?`},
		{"bad flag", []string{"status", "--bogus"}, exitUsage, "flag provided but not defined: -bogus (see `weft status --help`)"},
		{"bad flag top", []string{"--bogus", "status"}, exitUsage, "(see `weft --help`)"},
		{"bad output", []string{"ps", "-o", "yaml", "--run-dir", noAgent}, exitUsage, `-o "yaml": want table or json`},
		{"stray argument", []string{"ps", "extra"}, exitUsage, `ps takes no arguments, got "extra"`},
		{"missing argument", []string{"connect"}, exitUsage, "name at least one PEER"},
		{"no command", nil, exitUsage, "name a command"},
		{"bad shell", []string{"completion", "bsh"}, exitUsage, `did you mean "bash"?`},
		{"version flag", []string{"--version"}, exitOK, ""},
		{"help", []string{"status", "--help"}, exitOK, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := runCLI(t, c.args...)
			if r.code != c.code {
				t.Errorf("weft %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(c.args, " "), r.code, c.code, r.stdout, r.stderr)
			}
			if c.stderr == "" {
				if r.stderr != "" {
					t.Errorf("weft %s: unexpected stderr %q", strings.Join(c.args, " "), r.stderr)
				}
				return
			}
			if !strings.Contains(r.stderr, c.stderr) {
				t.Errorf("weft %s: stderr %q does not contain %q", strings.Join(c.args, " "), r.stderr, c.stderr)
			}
			// One line of error, never the whole help.
			if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); n != 0 {
				t.Errorf("weft %s: %d lines on stderr, want one:\n%s", strings.Join(c.args, " "), n+1, r.stderr)
			}
			if c.code == exitUsage && c.name != "no command" && strings.Contains(r.stdout, "USAGE") {
				t.Errorf("weft %s: a usage error printed the help:\n%s", strings.Join(c.args, " "), r.stdout)
			}
		})
	}
}

func TestVersionFlagAndCommandAgree(t *testing.T) {
	flag, cmd := runCLI(t, "--version"), runCLI(t, "version")
	if flag.stdout != cmd.stdout || !strings.HasPrefix(flag.stdout, "weft "+api.Version) {
		t.Errorf("--version %q, version %q: want both \"weft %s\"", flag.stdout, cmd.stdout, api.Version)
	}
	var v buildVersion
	r := runCLI(t, "version", "-o", "json")
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v.Version != api.Version || v.GoVersion == "" {
		t.Errorf("version -o json: %+v, %v\n%s", v, err, r.stdout)
	}
}

// decodeJSON runs a view with -o json and decodes its stdout strictly into
// a value of the API type: the CLI prints exactly what the API answered.
func decodeJSON[T any](t *testing.T, args ...string) T {
	t.Helper()
	r := runCLI(t, append(args, "-o", "json")...)
	var v T
	if r.code != exitOK {
		t.Fatalf("weft %s -o json: exit %d: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("weft %s -o json: %v\n%s", strings.Join(args, " "), err, r.stdout)
	}
	return v
}

func TestJSONViews(t *testing.T) {
	n := readyAgent(t)
	dir := n.Config.RunDir
	// A pod as the CNI shim attaches it under Kubernetes.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	alloc, err := n.Client.Allocate(ctx, api.AllocateRequest{ContainerID: "0123456789abcdef", IfName: "eth0",
		PodNamespace: "default", PodName: "web-1"})
	if err != nil {
		t.Fatal(err)
	}

	st := decodeJSON[api.Status](t, "status", "--run-dir", dir)
	if st.Name != n.Name || !st.Ready || st.IPAM == nil {
		t.Errorf("status -o json: %+v", st)
	}
	peers := decodeJSON[[]api.Peer](t, "status", "peers", "--run-dir", dir)
	if len(peers) != 1 || !peers[0].Local || peers[0].Name != n.Name {
		t.Errorf("status peers -o json: %+v", peers)
	}
	conns := decodeJSON[[]api.Connection](t, "status", "connections", "--run-dir", dir)
	if conns == nil || len(conns) != 0 {
		t.Errorf("status connections -o json of a lone agent: %+v, want []", conns)
	}
	ip := decodeJSON[api.IPAMStatus](t, "status", "ipam", "--run-dir", dir)
	if ip.Range != n.Config.Range.String() || len(ip.Entries) != 1 || ip.Entries[0].InUse < 2 {
		t.Errorf("status ipam -o json: %+v", ip)
	}
	targets := decodeJSON[[]string](t, "status", "targets", "--run-dir", dir)
	if targets == nil {
		t.Error("status targets -o json: null, want a list")
	}
	ps := decodeJSON[[]api.Container](t, "ps", "--run-dir", dir)
	var found bool
	for _, c := range ps {
		if c.ContainerID == "0123456789abcdef" {
			found = true
			if c.PodNamespace != "default" || c.PodName != "web-1" || !strings.HasPrefix(alloc.Address, c.Address+"/") {
				t.Errorf("ps -o json: %+v, want pod default/web-1 at %s", c, alloc.Address)
			}
		}
	}
	if !found {
		t.Errorf("ps -o json: no container 0123456789abcdef in %+v", ps)
	}
	rep := decodeJSON[api.Report](t, "report", "--run-dir", dir)
	if rep.Status.Name != n.Name || len(rep.Containers) != len(ps) {
		t.Errorf("report -o json: %+v", rep)
	}
	// -o given on the parent command applies to the view.
	if r := runCLI(t, "status", "-o", "json", "peers", "--run-dir", dir); !strings.HasPrefix(r.stdout, "[") {
		t.Errorf("status -o json peers: %q", r.stdout)
	}

	// The tables: ps names the pod.
	r := runCLI(t, "ps", "--run-dir", dir)
	if !strings.Contains(r.stdout, "default/web-1") || !strings.Contains(r.stdout, "0123456789ab ") {
		t.Errorf("ps:\n%s", r.stdout)
	}
	if r := runCLI(t, "report", "-o", "table", "--run-dir", dir); r.code != 0 || !strings.Contains(r.stdout, "default/web-1") ||
		!strings.Contains(r.stdout, "Ready: yes") {
		t.Errorf("report -o table (exit %d):\n%s", r.code, r.stdout)
	}
}

// TestPodNamesSurviveRestart: the POD column comes back after the agent
// restarts from its state directory.
func TestPodNamesSurviveRestart(t *testing.T) {
	c := agenttest.Start(t, agenttest.Options{N: 1, IPAMInit: "consensus=1"})
	c.WaitFormed()
	n := c.Nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := n.Client.Allocate(ctx, api.AllocateRequest{ContainerID: "c1", IfName: "eth0", PodNamespace: "kube-system", PodName: "coredns-x"}); err != nil {
		t.Fatal(err)
	}
	n.Stop()
	n.Start()
	c.WaitFormed()
	ps := decodeJSON[[]api.Container](t, "ps", "--run-dir", n.Config.RunDir)
	for _, ct := range ps {
		if ct.ContainerID == "c1" && ct.PodName == "coredns-x" && ct.PodNamespace == "kube-system" {
			return
		}
	}
	t.Errorf("after a restart, ps -o json: %+v", ps)
}

func TestNearest(t *testing.T) {
	names := []string{"launch", "status", "report", "ps", "connect", "forget", "rmpeer", "reset", "version"}
	for word, want := range map[string]string{
		"stauts": "status", "stat": "status", "rest": "reset", "verison": "version", "p": "ps",
		"conect": "connect", "lunch": "launch", "kubernetes": "",
	} {
		if got := nearest(word, names); got != want {
			t.Errorf("nearest(%q) = %q, want %q", word, got, want)
		}
	}
}

func TestCompletionScripts(t *testing.T) {
	// The scripts ask the binary; the binary answers with commands, views
	// and flags. urfave/cli reads the word being completed from os.Args.
	saved := os.Args
	defer func() { os.Args = saved }()
	os.Args = []string{"weft", "--generate-bash-completion"}
	if r := runCLI(t, "--generate-bash-completion"); !strings.Contains(r.stdout, "status\n") || !strings.Contains(r.stdout, "completion\n") {
		t.Errorf("weft --generate-bash-completion:\n%s", r.stdout)
	}
	os.Args = []string{"weft", "status", "--generate-bash-completion"}
	if r := runCLI(t, "status", "--generate-bash-completion"); !strings.Contains(r.stdout, "connections\n") {
		t.Errorf("weft status --generate-bash-completion:\n%s", r.stdout)
	}
	os.Args = []string{"weft", "status", "--ru", "--generate-bash-completion"}
	if r := runCLI(t, "status", "--ru", "--generate-bash-completion"); !strings.Contains(r.stdout, "--run-dir") {
		t.Errorf("weft status --ru --generate-bash-completion:\n%s", r.stdout)
	}
	os.Args = saved
	for _, sh := range []string{"bash", "zsh", "fish"} {
		r := runCLI(t, "completion", sh)
		if r.code != 0 || !strings.Contains(r.stdout, "weft") {
			t.Fatalf("completion %s: exit %d\n%s%s", sh, r.code, r.stdout, r.stderr)
		}
		if sh == "fish" && !strings.Contains(r.stdout, "complete -c weft") {
			t.Errorf("fish completion names no command:\n%s", r.stdout)
		}
		shell, err := exec.LookPath(sh)
		if err != nil {
			t.Logf("%s not installed: syntax of its script not checked", sh)
			continue
		}
		path := filepath.Join(t.TempDir(), "weft."+sh)
		if err := os.WriteFile(path, []byte(r.stdout), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(shell, "-n", path).CombinedOutput(); err != nil {
			t.Errorf("%s -n on the %s completion: %v\n%s", sh, sh, err, out)
		}
	}
}

// TestStatusMesh: three agents; from any one of them, `weft status mesh`
// shows all three with every connection established.
func TestStatusMesh(t *testing.T) {
	c := agenttest.Start(t, agenttest.Options{N: 3})
	c.WaitFormed()
	dir := c.Nodes[1].Config.RunDir
	c.Wait("every summary with two established connections", func() error {
		r := runCLI(t, "status", "mesh", "-o", "json", "--run-dir", dir)
		var m api.MeshHealth
		if err := json.Unmarshal([]byte(r.stdout), &m); err != nil {
			return err
		}
		if len(m.Peers) != 3 {
			return fmt.Errorf("%d peers in %s", len(m.Peers), r.stdout)
		}
		for _, p := range m.Peers {
			est := 0
			for _, l := range p.Connections {
				if l.State == "established" {
					est++
				}
			}
			if !p.Ready || est != 2 || p.Version != api.Version {
				return fmt.Errorf("%s: ready %v, %d established", p.Name, p.Ready, est)
			}
		}
		return nil
	})
	r := runCLI(t, "status", "mesh", "--run-dir", dir)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != exitOK || len(lines) != 4 || !strings.Contains(lines[0], "host1") || strings.Count(r.stdout, " ok ")+strings.Count(r.stdout, " ok\n") != 6 {
		t.Errorf("status mesh (exit %d):\n%s", r.code, r.stdout)
	}
	if rep := decodeJSON[api.Report](t, "report", "--run-dir", dir); rep.Mesh == nil || len(rep.Mesh.Peers) != 3 {
		t.Errorf("report has no mesh of 3: %+v", rep.Mesh)
	}
}

// TestMeshMatrixOutliersFirst: the peer that others cannot reach, and that
// is not ready, sorts first in rows and columns.
func TestMeshMatrixOutliersFirst(t *testing.T) {
	var b bytes.Buffer
	writeMesh(&b, api.MeshHealth{Peers: []api.PeerHealth{
		{Name: "a", Ready: true, Version: "1", Connections: []api.PeerLink{{Peer: "b", State: "established"}, {Peer: "z", State: "down"}}},
		{Name: "b", Ready: true, Version: "1", Connections: []api.PeerLink{{Peer: "a", State: "established"}, {Peer: "z", State: "connecting"}}},
		{Name: "z", Ready: false, Version: "0.9", Connections: []api.PeerLink{{Peer: "a", State: "down"}, {Peer: "b", State: "down"}}},
	}})
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("want header and 3 rows:\n%s", b.String())
	}
	if !strings.HasPrefix(lines[1], "z ") || !strings.Contains(lines[1], "NO") || !strings.Contains(lines[1], "DOWN") {
		t.Errorf("the outlier z is not first:\n%s", b.String())
	}
	if f := strings.Fields(lines[0]); len(f) < 8 || f[5] != "z" {
		t.Errorf("columns not outliers first: %q", lines[0])
	}
	if !strings.Contains(lines[2], "CONNECTING") && !strings.Contains(lines[3], "CONNECTING") {
		t.Errorf("b's connecting link to z not shown:\n%s", b.String())
	}
}
