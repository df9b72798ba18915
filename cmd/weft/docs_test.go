package main

// Tests that keep the documentation (site/, README.md) and the systemd
// packaging (prog/systemd/) true to the CLI definition. They need no root and
// no network, and run in well under a second.

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/urfave/cli/v2"

	"github.com/weftnet/weft/agent"
	"github.com/weftnet/weft/router/tun"
)

// repoRoot is where go test runs this package from: cmd/weft.
const repoRoot = "../.."

// docFiles are README.md and every Markdown page of site/.
func docFiles(t *testing.T) []string {
	t.Helper()
	pages, err := filepath.Glob(filepath.Join(repoRoot, "site", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	if len(pages) == 0 {
		t.Fatal("no Markdown pages in site/")
	}
	return append([]string{filepath.Join(repoRoot, "README.md"), filepath.Join(repoRoot, "CHANGELOG.md")}, pages...)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func command(t *testing.T, app *cli.App, name string) *cli.Command {
	t.Helper()
	for _, c := range app.Commands {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("newApp() has no %q command", name)
	return nil
}

// flagDoc is what the configuration reference must say about one flag.
type flagDoc struct {
	name    string
	envVars []string
	def     string // the default as the CLI prints it; "" when there is none to check
}

func launchFlags(t *testing.T) []flagDoc {
	t.Helper()
	var out []flagDoc
	for _, f := range command(t, newApp(), "launch").Flags {
		d := flagDoc{name: f.Names()[0]}
		if ev, ok := f.(interface{ GetEnvVars() []string }); ok {
			d.envVars = ev.GetEnvVars()
		}
		if dv, ok := f.(interface{ GetValue() string }); ok {
			switch v := dv.GetValue(); v {
			case "", "0", "false":
			default:
				d.def = v
			}
		}
		out = append(out, d)
	}
	return out
}

// TestConfigurationDocumentsEveryLaunchFlag checks that site/configuration.md
// has, for every flag of `weft launch`, a table row naming the flag, each of
// its environment variables and its default.
func TestConfigurationDocumentsEveryLaunchFlag(t *testing.T) {
	doc := readFile(t, filepath.Join(repoRoot, "site", "configuration.md"))
	rows := map[string]string{} // flag name -> its table row
	rowFlag := regexp.MustCompile("^\\| `--([a-z][a-z0-9-]*)`")
	for _, line := range strings.Split(doc, "\n") {
		if m := rowFlag.FindStringSubmatch(line); m != nil {
			rows[m[1]] = line
		}
	}
	flags := launchFlags(t)
	if len(flags) < 10 {
		t.Fatalf("launch has only %d flags; is this the right command?", len(flags))
	}
	for _, f := range flags {
		row, ok := rows[f.name]
		if !ok {
			t.Errorf("site/configuration.md: no table row starting with `--%s`", f.name)
			continue
		}
		if len(f.envVars) == 0 {
			t.Errorf("flag --%s reads no environment variable; the contract says every flag does", f.name)
		}
		for _, env := range f.envVars {
			if !strings.Contains(row, "`"+env+"`") {
				t.Errorf("site/configuration.md: row of --%s does not name its variable `%s`: %s", f.name, env, row)
			}
		}
		if f.def != "" && !strings.Contains(row, "`"+f.def+"`") {
			t.Errorf("site/configuration.md: row of --%s does not give its default `%s`: %s", f.name, f.def, row)
		}
	}
	// And the other way round: no row for a flag that does not exist.
	for name := range rows {
		if !slices.ContainsFunc(flags, func(f flagDoc) bool { return f.name == name }) {
			t.Errorf("site/configuration.md documents --%s, which `weft launch` does not have", name)
		}
	}
}

// TestConfigurationDocumentsEveryCommand checks that every command of the CLI
// appears in site/configuration.md as `weft NAME`.
func TestConfigurationDocumentsEveryCommand(t *testing.T) {
	doc := readFile(t, filepath.Join(repoRoot, "site", "configuration.md"))
	app := newApp()
	for _, c := range app.Commands {
		if !strings.Contains(doc, "`weft "+c.Name) {
			t.Errorf("site/configuration.md does not mention `weft %s`", c.Name)
		}
		for _, sub := range c.Subcommands {
			if !strings.Contains(doc, "`weft "+c.Name+" "+sub.Name) {
				t.Errorf("site/configuration.md does not mention `weft %s %s`", c.Name, sub.Name)
			}
		}
	}
}

// codeSnippets returns the inline code spans and the lines of shell code
// blocks of a Markdown document: where command lines are written. Fenced
// blocks marked with another language (text, json, ...) hold output, not
// commands; comments after " # " in shell lines are prose.
func codeSnippets(doc string) []string {
	var out []string
	inline := regexp.MustCompile("`([^`\n]+)`")
	comment := regexp.MustCompile(`\s#\s.*$`)
	inFence, shell := false, false
	for _, line := range strings.Split(doc, "\n") {
		if fence, ok := strings.CutPrefix(strings.TrimSpace(line), "```"); ok {
			inFence = !inFence
			shell = slices.Contains([]string{"", "sh", "bash", "console"}, strings.TrimSpace(fence))
			continue
		}
		if inFence {
			if shell {
				out = append(out, comment.ReplaceAllString(line, ""))
			}
			continue
		}
		for _, m := range inline.FindAllStringSubmatch(line, -1) {
			out = append(out, m[1])
		}
	}
	return out
}

// weftInvocation finds "weft WORD [WORD]" where weft is a command (at the
// start, after whitespace, a path or a shell operator), not a name in prose
// or in an interface name such as weft-tun.
var weftInvocation = regexp.MustCompile(`(?:^|[\s/;|&(])weft[ \t]+([a-z][a-z-]*)(?:[ \t]+([a-z][a-z-]*))?`)

// TestDocsMentionOnlyRealCommands checks that every `weft WORD` written as
// code in README.md and site/*.md is a command of the CLI, and every
// `weft status WORD` a view of status.
func TestDocsMentionOnlyRealCommands(t *testing.T) {
	app := newApp()
	commands := map[string]*cli.Command{}
	for _, c := range app.Commands {
		commands[c.Name] = c
	}
	seen := 0
	for _, path := range docFiles(t) {
		for _, snippet := range codeSnippets(readFile(t, path)) {
			for _, m := range weftInvocation.FindAllStringSubmatch(snippet, -1) {
				seen++
				name, arg := m[1], m[2]
				if name == "help" { // `weft help [COMMAND]`: the app's own answer, not a command
					continue
				}
				c, ok := commands[name]
				if !ok {
					t.Errorf("%s: %q names `weft %s`, which is no command", filepath.Base(path), strings.TrimSpace(snippet), name)
					continue
				}
				if len(c.Subcommands) == 0 || arg == "" {
					continue
				}
				if !slices.ContainsFunc(c.Subcommands, func(s *cli.Command) bool { return s.Name == arg }) {
					t.Errorf("%s: %q names `weft %s %s`, which is no view of %s", filepath.Base(path), strings.TrimSpace(snippet), name, arg, name)
				}
			}
		}
	}
	if seen < 20 {
		t.Fatalf("found only %d weft commands in the docs; is the pattern broken?", seen)
	}
}

// TestWeftInvocationPattern pins what counts as a command in the docs.
func TestWeftInvocationPattern(t *testing.T) {
	for s, want := range map[string]string{
		"weft status peers":                                "status peers",
		"host1# weft launch 192.0.2.11":                    "launch",
		"ExecStart=/usr/local/bin/weft launch $WEFT_PEERS": "launch",
		"kubectl exec POD -- /bin/weft reset":              "reset",
		"sudo weft ps | head":                              "ps",
		"ip link del weft":                                 "",
		"weft-tun":                                         "",
		"weft 0.1.0":                                       "",
		`oifname != "weft" masquerade`:                     "",
	} {
		got := ""
		if m := weftInvocation.FindStringSubmatch(s); m != nil {
			got = strings.TrimSpace(m[1] + " " + m[2])
		}
		if got != want {
			t.Errorf("%q: matched %q, want %q", s, got, want)
		}
	}
}

// mdLink matches [text](target) and ![alt](target), with an optional title.
var mdLink = regexp.MustCompile(`\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)

// slug is the anchor GitHub gives a heading.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case unicode.IsLetter(r), unicode.IsDigit(r), r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// anchors returns the heading anchors of a Markdown document, numbering
// repeated headings as GitHub does (x, x-1, x-2).
func anchors(doc string) map[string]bool {
	out := map[string]bool{}
	count := map[string]int{}
	inFence := false
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inFence = !inFence
			continue
		}
		if inFence || !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.TrimLeft(line, "#")
		if !strings.HasPrefix(h, " ") {
			continue
		}
		s := slug(h)
		if n := count[s]; n > 0 {
			out[s+"-"+strconv.Itoa(n)] = true
		} else {
			out[s] = true
		}
		count[s]++
	}
	return out
}

// TestSlug pins the heading anchors the link check relies on.
func TestSlug(t *testing.T) {
	for h, want := range map[string]string{
		"Removing a host":                      "removing-a-host",
		"Bootstrap: seed, consensus, observer": "bootstrap-seed-consensus-observer",
		"`weft report`":                        "weft-report",
		"The CNI plugin `weft-cni`":            "the-cni-plugin-weft-cni",
		"Ports and firewalls":                  "ports-and-firewalls",
	} {
		if got := slug(h); got != want {
			t.Errorf("slug(%q) = %q, want %q", h, got, want)
		}
	}
	a := anchors("# A\n## A\n```\n# not a heading\n```\n## B c\n")
	for _, want := range []string{"a", "a-1", "b-c"} {
		if !a[want] {
			t.Errorf("anchors: missing %q in %v", want, a)
		}
	}
	if a["not-a-heading"] {
		t.Error("anchors: a line in a code block counted as a heading")
	}
}

// TestDocLinksResolve checks that every relative link in README.md and
// site/*.md points to an existing file, and every #anchor into a Markdown
// file to one of its headings.
func TestDocLinksResolve(t *testing.T) {
	checked := 0
	for _, path := range docFiles(t) {
		doc := readFile(t, path)
		// Links inside code blocks are examples, not links.
		var prose strings.Builder
		inFence := false
		for _, line := range strings.Split(doc, "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "```") {
				inFence = !inFence
				continue
			}
			if !inFence {
				prose.WriteString(line + "\n")
			}
		}
		for _, m := range mdLink.FindAllStringSubmatch(prose.String(), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			checked++
			file, anchor, _ := strings.Cut(target, "#")
			resolved := path
			if file != "" {
				resolved = filepath.Join(filepath.Dir(path), file)
				if _, err := os.Stat(resolved); err != nil {
					t.Errorf("%s: link %q: %v", filepath.Base(path), target, err)
					continue
				}
			}
			if anchor == "" || !strings.HasSuffix(resolved, ".md") {
				continue
			}
			if !anchors(readFile(t, resolved))[anchor] {
				t.Errorf("%s: link %q: no heading with anchor #%s in %s", filepath.Base(path), target, anchor, filepath.Base(resolved))
			}
		}
	}
	if checked < 20 {
		t.Fatalf("checked only %d relative links; is the pattern broken?", checked)
	}
}

// unit is a parsed systemd unit file: section -> key -> values in order.
type unit map[string]map[string][]string

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not a key=value line in a section: %q", path, n, line)
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			u[section][k] = append(u[section][k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// one returns the single value of section.key, failing if it is missing.
func (u unit) one(t *testing.T, section, key string) string {
	t.Helper()
	vs := u[section][key]
	if len(vs) == 0 {
		t.Errorf("weft.service: [%s] has no %s=", section, key)
		return ""
	}
	return vs[len(vs)-1]
}

var systemdDir = filepath.Join(repoRoot, "prog", "systemd")

// TestSystemdUnit checks the fields the agent depends on, and runs
// systemd-analyze verify where it is installed.
func TestSystemdUnit(t *testing.T) {
	path := filepath.Join(systemdDir, "weft.service")
	u := parseUnit(t, path)

	exec0 := u.one(t, "Service", "ExecStart")
	fields := strings.Fields(exec0)
	if len(fields) < 2 || filepath.Base(fields[0]) != "weft" || fields[1] != "launch" {
		t.Errorf("ExecStart=%q: want the weft binary with `launch`", exec0)
	}
	if !filepath.IsAbs(fields[0]) {
		t.Errorf("ExecStart=%q: systemd wants an absolute path", exec0)
	}
	if !slices.Contains(fields, "$WEFT_PEERS") {
		t.Errorf("ExecStart=%q: want the PEER arguments from $WEFT_PEERS (unquoted, so systemd splits them)", exec0)
	}
	want := map[string]string{
		"Type":                     "simple",
		"KillSignal":               "SIGTERM",
		"EnvironmentFile":          "-/etc/default/weft",
		"StateDirectory":           strings.TrimPrefix(agent.DefaultStateDir, "/var/lib/"),
		"RuntimeDirectory":         strings.TrimPrefix(agent.DefaultRunDir, "/run/"),
		"RuntimeDirectoryPreserve": "yes",
	}
	for k, v := range want {
		if got := u.one(t, "Service", k); got != v {
			t.Errorf("[Service] %s=%q, want %q", k, got, v)
		}
	}
	// The directories systemd makes must be the agent's defaults, or the
	// socket lands where neither the CLI nor weft-cni looks.
	if "/var/lib/"+want["StateDirectory"] != agent.DefaultStateDir || "/run/"+want["RuntimeDirectory"] != agent.DefaultRunDir {
		t.Errorf("StateDirectory/RuntimeDirectory do not match --state-dir %s / --run-dir %s", agent.DefaultStateDir, agent.DefaultRunDir)
	}
	if r := u.one(t, "Service", "Restart"); r != "on-failure" && r != "always" {
		t.Errorf("Restart=%q: want on-failure (or always)", r)
	}
	if u.one(t, "Service", "TimeoutStopSec") == "" || u.one(t, "Service", "LimitNOFILE") == "" {
		t.Error("want TimeoutStopSec= and LimitNOFILE=")
	}
	for _, key := range []string{"AmbientCapabilities", "CapabilityBoundingSet"} {
		caps := strings.Fields(strings.Join(u["Service"][key], " "))
		slices.Sort(caps)
		if !slices.Equal(caps, []string{"CAP_NET_ADMIN", "CAP_NET_RAW"}) {
			t.Errorf("%s=%v: want exactly CAP_NET_ADMIN CAP_NET_RAW", key, caps)
		}
	}
	for _, key := range []string{"After", "Wants"} {
		if !slices.Contains(strings.Fields(strings.Join(u["Unit"][key], " ")), "network-online.target") {
			t.Errorf("[Unit] %s= does not include network-online.target", key)
		}
	}
	if v := u["Service"]["ProtectKernelTunables"]; len(v) > 0 && v[len(v)-1] == "yes" {
		t.Error("ProtectKernelTunables=yes would stop the agent from setting ip_forward and rp_filter")
	}
	if u.one(t, "Install", "WantedBy") != "multi-user.target" {
		t.Error("[Install] WantedBy= want multi-user.target")
	}

	verifyWithSystemd(t, path, fields[0])
}

// verifyWithSystemd runs systemd-analyze verify on a copy of the unit whose
// binary path points at an executable that exists (this test binary), since
// verify checks that ExecStart's program is there.
func verifyWithSystemd(t *testing.T, path, binary string) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: skipping `systemd-analyze verify` (the field checks above still ran)")
		return
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	copyPath := filepath.Join(dir, "weft.service")
	text := strings.ReplaceAll(readFile(t, path), binary, self)
	if err := os.WriteFile(copyPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", copyPath).CombinedOutput()
	switch {
	case err != nil:
		t.Errorf("systemd-analyze verify weft.service: %v\n%s", err, out)
	case strings.Contains(string(out), "weft.service"):
		// verify exits 0 on a value it ignores ("Failed to parse ...,
		// ignoring"), but every remark about our file is a mistake in it.
		t.Errorf("systemd-analyze verify complains about weft.service:\n%s", out)
	case len(strings.TrimSpace(string(out))) > 0:
		t.Logf("systemd-analyze verify said (about other units):\n%s", out)
	}
}

// TestSystemdEnvFile checks that prog/systemd/weft.env names every variable
// of `weft launch` and nothing the agent does not read.
func TestSystemdEnvFile(t *testing.T) {
	known := map[string]bool{
		"WEFT_PEERS":    true, // ExecStart's PEER arguments, checked in TestSystemdUnit
		tun.EnvDatapath: true, // read by the TUN device, not a flag
	}
	var flagVars []string
	for _, f := range launchFlags(t) {
		for _, env := range f.envVars {
			known[env] = true
			flagVars = append(flagVars, env)
		}
	}
	// NAME=value, or #NAME=value for a commented example; "# text" is prose.
	assignment := regexp.MustCompile(`^#?([A-Z_][A-Z0-9_]*)=`)
	documented := map[string]bool{}
	for n, line := range strings.Split(readFile(t, filepath.Join(systemdDir, "weft.env")), "\n") {
		m := assignment.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		name := m[1]
		if !known[name] {
			t.Errorf("weft.env:%d: %s is not a variable weft reads", n+1, name)
		}
		documented[name] = true
	}
	for _, env := range append(flagVars, "WEFT_PEERS") {
		if !documented[env] {
			t.Errorf("weft.env does not show %s", env)
		}
	}
}
