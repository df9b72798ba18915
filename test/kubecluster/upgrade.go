package kubecluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/weftnet/weft/api"
)

// Restart goals of issue 16: the longest silence of any pod pair while the
// agents are replaced (rollout restart, upgrade, rollback).
const (
	GoalPlaintext = time.Second
	GoalEncrypted = 1500 * time.Millisecond
)

// ReleaseImage is the image name the test's releases carry (IMAGE=).
const ReleaseImage = "registry.weft.test/weft"

// Release is one `make release` output: dist/VERSION/ with weft.yaml and
// image.tar (see prog/release).
type Release struct {
	Version string
	Image   string
	Dir     string
}

// BuildRelease runs what `make release VERSION=version IMAGE=image` runs
// (the Makefile's recipe: go run ./prog/release), writing into out.
func BuildRelease(ctx context.Context, root, out, version, image string) (*Release, error) {
	cmd := exec.CommandContext(ctx, "go", "run", "./prog/release", "-version", version, "-image", image, "-out", out)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("make release VERSION=%s: %w\n%s", version, err, b)
	}
	for _, f := range []string{"weft.yaml", "image.tar", "SHA256SUMS"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			return nil, fmt.Errorf("release %s: %w", version, err)
		}
	}
	return &Release{Version: version, Image: image, Dir: out}, nil
}

// ImportRelease loads a release's image into every node's containerd as
// site/install-kubernetes.md says ("Or load it into the nodes"); --address
// only names the node's containerd, the rest is the documented command.
func (c *Cluster) ImportRelease(ctx context.Context, r *Release) error {
	for _, n := range c.Nodes {
		sock := filepath.Join(n.RunDir(), "containerd", "containerd.sock")
		args := append([]string{"--address", sock}, ImportArgs(r)...)
		cmd := exec.CommandContext(ctx, "ctr", args...)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: ctr %s: %w\n%s", n.Name, strings.Join(args, " "), err, b)
		}
	}
	return nil
}

// ImportArgs are the arguments of the documented `ctr` import of a release.
func ImportArgs(r *Release) []string {
	return []string{"-n", "k8s.io", "images", "import", "--all-platforms", "--base-name", r.Image, "--digests",
		filepath.Join(r.Dir, "image.tar")}
}

// gapIn is the longest silence of any pod pair within [from, to], and the
// pair. A pod's probe also echoes itself over loopback, which no network
// carries: while that is silent too, the prober (or the echoing pod) was not
// running at all (this machine is shared, and a starved pod stalls for
// seconds). So beside the raw figure, gapIn gives the longest silence of a
// pair minus the time within it that either end was silent to itself: what
// the network made. floor is the longest raw silence of a pair on one node,
// whose traffic weft does not tunnel.
func (c *Cluster) gapIn(pods []PodStatus, from, to time.Time) (g gapFigures) {
	nodeOf := map[string]string{"hostprobe": c.Nodes[len(c.Nodes)-1].Name}
	reports := map[string]*ProbeReport{}
	for _, p := range pods {
		nodeOf[p.Name] = p.Node
		if rep, err := c.report(p); err == nil {
			reports[p.Name] = rep
		}
	}
	stalled := func(name string) []ProbeGap {
		if rep := reports[name]; rep != nil && rep.UDP[name] != nil {
			return rep.UDP[name].Gaps
		}
		return nil
	}
	for prober, rep := range reports {
		for name, u := range rep.UDP {
			if name == prober {
				continue
			}
			for _, gp := range u.Gaps {
				if gp.To.Before(from) || gp.From.After(to) {
					continue
				}
				d := gp.To.Sub(gp.From)
				if d > g.Raw {
					g.Raw, g.RawPair = d, prober+"->"+name
				}
				if nodeOf[name] == nodeOf[prober] {
					g.Floor = max(g.Floor, d)
					continue
				}
				net := d - overlap(gp, append(stalled(prober), stalled(name)...))
				if net > g.Network {
					g.Network, g.NetworkPair = net, prober+"->"+name
				}
			}
		}
	}
	return g
}

// gapFigures are gapIn's results.
type gapFigures struct {
	Raw, Network, Floor  time.Duration
	RawPair, NetworkPair string
}

// overlap is how much of g the union of gaps covers.
func overlap(g ProbeGap, gaps []ProbeGap) time.Duration {
	var spans [][2]time.Time
	for _, o := range gaps {
		a, b := maxTime(g.From, o.From), minTime(g.To, o.To)
		if a.Before(b) {
			spans = append(spans, [2]time.Time{a, b})
		}
	}
	slices.SortFunc(spans, func(x, y [2]time.Time) int { return x[0].Compare(y[0]) })
	var total time.Duration
	var end time.Time
	for _, s := range spans {
		if s[0].Before(end) {
			s[0] = end
		}
		if s[0].Before(s[1]) {
			total += s[1].Sub(s[0])
			end = s[1]
		}
	}
	return total
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// waitUDP waits until every pod has had a UDP echo from every peer after
// since, so that every silence before since is closed and recorded.
func (c *Cluster) waitUDP(ctx context.Context, pods []PodStatus, peers map[string]string, since time.Time) error {
	return c.wait(ctx, time.Minute, "UDP echoes from every peer", func() error {
		var missing []string
		for _, p := range pods {
			rep, err := c.report(p)
			if err != nil {
				return err
			}
			for name := range peers {
				if name == p.Name {
					continue
				}
				if u := rep.UDP[name]; u == nil || u.LastOK.Before(since) {
					missing = append(missing, p.Name+"->"+name)
				}
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d pairs without an echo yet: %s", len(missing), strings.Join(missing, " "))
		}
		return nil
	})
}

// Silence is what roll measured in one step.
type Silence struct {
	Step string
	// Network is a cross-node pair's longest silence less the time either
	// pod was silent to itself (the asserted figure); Raw the longest
	// silence of any pair as measured; Floor that of a pair on one node,
	// which weft does not tunnel; Self the longest time a probe pod was
	// silent to itself over loopback (it was not running).
	Network, Raw, Floor, Self time.Duration
	Load                      string // 1-minute load average when measured
}

// roll is one DaemonSet change (a rollout restart, an apply of a release)
// under the probes: it waits for the rollout, checks that the probe pods are
// the same with the same addresses and reach each other again, and returns
// the longest silence the network made (gapIn) from the change until every
// pair answered again. Every figure also goes to s.Measured, and for each
// node the longest time its pods were silent to themselves is shown beside
// the CPU time each pod of that node used meanwhile and the weft agents'
// log lines of that moment: what stalled the pods.
func (s *Scenario) roll(ctx context.Context, step string, pods []PodStatus, peers map[string]string, change func() error) (took, gap time.Duration, err error) {
	c := s.C
	sampleCtx, stopSampling := context.WithCancel(ctx)
	defer stopSampling()
	cpu := newCPUSampler(c.Nodes)
	sampled := make(chan struct{})
	go func() { defer close(sampled); cpu.run(sampleCtx) }()
	start := time.Now()
	if err := change(); err != nil {
		return 0, 0, err
	}
	if _, err := c.Kubectl(ctx, "-n", "weft-system", "rollout", "status", "ds/weft", "--timeout=5m"); err != nil {
		return 0, 0, err
	}
	took = time.Since(start)
	rolled := time.Now()
	after, err := c.GetPods(ctx, "default", "app=netprobe")
	if err != nil {
		return took, 0, err
	}
	if err := samePods(pods, after); err != nil {
		return took, 0, err
	}
	if err := c.waitAllReach(ctx, time.Minute, pods, peers, rolled); err != nil {
		return took, 0, err
	}
	if err := c.waitUDP(ctx, pods, peers, rolled); err != nil {
		return took, 0, err
	}
	stopSampling()
	<-sampled
	end := time.Now()
	g := c.gapIn(pods, start, end)
	ms := func(d time.Duration) time.Duration { return d.Round(10 * time.Millisecond) }
	s.Say("   longest silence of a pair across nodes, less the time either pod was silent to itself: %s (%s)",
		ms(g.Network), g.NetworkPair)
	s.Say("   raw: longest silence of any pair %s (%s); of a pair on one node, which weft does not tunnel: %s",
		ms(g.Raw), g.RawPair, ms(g.Floor))
	m := Silence{Step: step, Network: g.Network, Raw: g.Raw, Floor: g.Floor, Load: loadAvg()}
	for _, n := range c.Nodes {
		st := c.selfSilence(pods, n.Name, start, end)
		m.Self = max(m.Self, st.To.Sub(st.From))
		if st.From.IsZero() {
			continue
		}
		s.Say("   %s: its pods silent to themselves (loopback) for up to %s, %s +%s; CPU used on the node meanwhile: %s",
			n.Name, ms(st.To.Sub(st.From)), st.From.Format("15:04:05.000"), ms(st.From.Sub(start)),
			formatUse(cpu.usedIn(n.Name, st.From, st.To)))
		for _, line := range agentLogIn(n, st.From.Add(-time.Second), st.To.Add(500*time.Millisecond)) {
			s.Say("      %s", line)
		}
	}
	s.Measured = append(s.Measured, m)
	return took, g.Network, nil
}

// selfSilence is the longest time a probe pod on node was silent to itself
// (its own echo over loopback) within [from, to].
func (c *Cluster) selfSilence(pods []PodStatus, node string, from, to time.Time) (longest ProbeGap) {
	for _, p := range pods {
		if p.Node != node {
			continue
		}
		rep, err := c.report(p)
		if err != nil || rep.UDP[p.Name] == nil {
			continue
		}
		for _, gp := range rep.UDP[p.Name].Gaps {
			if gp.To.Before(from) || gp.From.After(to) {
				continue
			}
			if gp.To.Sub(gp.From) > longest.To.Sub(longest.From) {
				longest = gp
			}
		}
	}
	return longest
}

// agentLogIn returns the weft agents' log lines of node n (every weft pod's,
// old and new, from the node's /var/log/pods) written within [from, to],
// in time order, each prefixed with its pod's short UID.
func agentLogIn(n *Node, from, to time.Time) []string {
	files, _ := filepath.Glob(filepath.Join(n.Dir, "pod-logs", "weft-system_weft-*", "weft", "*.log"))
	type line struct {
		at   time.Time
		text string
	}
	var lines []line
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// weft-system_weft-abcde_UID/weft/0.log
		pod := filepath.Base(filepath.Dir(filepath.Dir(f)))
		if i := strings.LastIndexByte(pod, '_'); i >= 0 && len(pod) > i+9 {
			pod = pod[i+1 : i+9]
		}
		for l := range strings.SplitSeq(string(b), "\n") {
			// CRI log format: TIMESTAMP STREAM TAG MESSAGE
			f := strings.SplitN(l, " ", 4)
			if len(f) < 4 {
				continue
			}
			at, err := time.Parse(time.RFC3339Nano, f[0])
			if err != nil || at.Before(from) || at.After(to) {
				continue
			}
			msg := f[3]
			if i := strings.Index(msg, "msg="); i >= 0 {
				msg = msg[i:]
			}
			if len(msg) > 160 {
				msg = msg[:160] + "..."
			}
			lines = append(lines, line{at, fmt.Sprintf("%s weft %s: %s", at.Local().Format("15:04:05.000"), pod, msg)})
		}
	}
	sort.Slice(lines, func(i, j int) bool { return lines[i].at.Before(lines[j].at) })
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = l.text
	}
	return out
}

// applyRelease imports a release's image into the nodes and applies its
// manifest, as the install page says.
func (s *Scenario) applyRelease(ctx context.Context, r *Release) error {
	if err := s.C.ImportRelease(ctx, r); err != nil {
		return err
	}
	out, err := s.C.Kubectl(ctx, "apply", "-f", filepath.Join(r.Dir, "weft.yaml"))
	if err != nil {
		return err
	}
	s.Show("$ ctr "+strings.Join(ImportArgs(r), " ")+" (on every node)\n$ kubectl apply -f dist/"+r.Version+"/weft.yaml", string(out))
	return nil
}

// buildInfo matches the version label of weft_build_info in /metrics.
var buildInfo = regexp.MustCompile(`(?m)^weft_build_info\{[^}]*version="([^"]*)"[^}]*\} 1$`)

// checkVersion checks that every node's agent runs version: `weft status`
// (the local API) and weft_build_info on the node's /metrics.
func (s *Scenario) checkVersion(ctx context.Context, version string) error {
	c := s.C
	var lines []string
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		st, err := api.NewClient(api.SocketPath(n.WeftRunDir()), 5*time.Second).Status(ctx)
		if err != nil {
			return fmt.Errorf("%s: weft status: %w", n.Name, err)
		}
		if st.Version != version || !st.Ready {
			return fmt.Errorf("%s: weft status version %q ready=%v, want %q ready", n.Name, st.Version, st.Ready, version)
		}
		out, err := n.Host.Exec(ctx, "curl", "-sS", "--max-time", "5", fmt.Sprintf("http://%s:6782/metrics", n.IP))
		if err != nil {
			return fmt.Errorf("%s: metrics: %w", n.Name, err)
		}
		m := buildInfo.FindStringSubmatch(out)
		if m == nil || m[1] != version {
			return fmt.Errorf("%s: weft_build_info %q, want version %q", n.Name, m, version)
		}
		lines = append(lines, fmt.Sprintf("%s: weft status version %s, %s", n.Name, st.Version, strings.TrimSpace(m[0])))
	}
	s.Show("every node's version", strings.Join(lines, "\n"))
	return nil
}

// checkDatapath checks every pair of nodes from both ends: established, and
// on the kernel fast path (plaintext) or encrypted in userspace.
func (s *Scenario) checkDatapath(ctx context.Context, encrypted bool) error {
	c := s.C
	running := 0
	for _, n := range c.Nodes {
		if n.Running() {
			running++
		}
	}
	return c.wait(ctx, time.Minute, "every pair on the expected datapath", func() error {
		var b strings.Builder
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			cl := api.NewClient(api.SocketPath(n.WeftRunDir()), 5*time.Second)
			st, err := cl.Status(ctx)
			if err != nil {
				return err
			}
			if st.Encryption != encrypted {
				return fmt.Errorf("%s: encryption %v, want %v", n.Name, st.Encryption, encrypted)
			}
			conns, err := cl.Connections(ctx)
			if err != nil {
				return err
			}
			sort.Slice(conns, func(i, j int) bool { return conns[i].Peer < conns[j].Peer })
			if len(conns) != running-1 {
				return fmt.Errorf("%s: %d connections, want %d", n.Name, len(conns), running-1)
			}
			for _, cn := range conns {
				fmt.Fprintf(&b, "%s -> %-6s %-12s datapath %-14s encrypted %v %s\n", n.Name, cn.Peer, cn.State, cn.Datapath, cn.Encrypted, cn.DatapathReason)
				switch {
				case cn.State != "established":
					return fmt.Errorf("%s -> %s: %s", n.Name, cn.Peer, cn.State)
				case encrypted && (!cn.Encrypted || cn.Datapath == "fastdp"):
					return fmt.Errorf("%s -> %s: datapath %s encrypted %v, want encrypted userspace", n.Name, cn.Peer, cn.Datapath, cn.Encrypted)
				case !encrypted && cn.Datapath != "fastdp":
					return fmt.Errorf("%s -> %s: datapath %s (%s), want the kernel fast path", n.Name, cn.Peer, cn.Datapath, cn.DatapathReason)
				}
			}
		}
		s.Show("weft status connections, every node", b.String())
		return nil
	})
}

// setSecret replaces the Secret weft-passwd: a password, or plaintext.
func (s *Scenario) setSecret(ctx context.Context, password bool) error {
	if _, err := s.C.Kubectl(ctx, "-n", "weft-system", "delete", "secret", "weft-passwd", "--ignore-not-found"); err != nil {
		return err
	}
	_, err := s.C.KubectlStdin(ctx, secretYAML(password), "apply", "-f", "-")
	return err
}

// errGoal marks a measured silence over its goal: the scenario goes on and
// reports every figure, then fails.
var errGoal = errors.New("over the restart goal")

// baselineFor is how long Restarts measures the probes before any restart:
// the silences this machine makes on its own, to compare the restarts with.
const baselineFor = 30 * time.Second

// Restarts is the restart phases of Run alone, for working on the restart
// silence: install (plaintext), the probe pods, a baseline of baselineFor
// with no restart, `kubectl rollout restart ds/weft` plaintext, the switch
// to a password, and a rollout restart encrypted. Every figure of each step
// is in s.Measured (the baseline as step "no restart"); the error is
// errGoal when the asserted figure of a restart is over its goal.
func (s *Scenario) Restarts(ctx context.Context) error {
	c, r := s.C, &Results{}
	if err := s.Install(ctx, r); err != nil {
		return err
	}
	pods, peers, err := s.deployProbes(ctx, r)
	if err != nil {
		return err
	}
	s.Say("Baseline: %s of probing with no restart.", baselineFor)
	if err := s.baseline(ctx, pods, peers); err != nil {
		return err
	}
	restart := func() error {
		_, err := c.Kubectl(ctx, "-n", "weft-system", "rollout", "restart", "ds/weft")
		return err
	}
	var over []string
	s.Say("kubectl rollout restart ds/weft (plaintext, kernel fast path).")
	if _, gap, err := s.roll(ctx, "rollout restart, plaintext", pods, peers, restart); err != nil {
		return err
	} else if gap > GoalPlaintext {
		over = append(over, fmt.Sprintf("plaintext %s, goal %s", gap.Round(10*time.Millisecond), GoalPlaintext))
	}
	s.Say("A password in the Secret, the agents restarted with it.")
	if _, _, err := s.roll(ctx, "plaintext -> encrypted", pods, peers, func() error {
		if err := s.setSecret(ctx, true); err != nil {
			return err
		}
		return restart()
	}); err != nil {
		return err
	}
	if err := s.checkDatapath(ctx, true); err != nil {
		return err
	}
	s.Say("kubectl rollout restart ds/weft (encrypted).")
	if _, gap, err := s.roll(ctx, "rollout restart, encrypted", pods, peers, restart); err != nil {
		return err
	} else if gap > GoalEncrypted {
		over = append(over, fmt.Sprintf("encrypted %s, goal %s", gap.Round(10*time.Millisecond), GoalEncrypted))
	}
	if len(over) > 0 {
		return fmt.Errorf("%w: %s", errGoal, strings.Join(over, "; "))
	}
	return nil
}

// baseline measures the probes for baselineFor without touching weft: the
// same figures as roll's, as step "no restart".
func (s *Scenario) baseline(ctx context.Context, pods []PodStatus, peers map[string]string) error {
	c := s.C
	start := time.Now()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(baselineFor): // a measurement period, not a wait for a condition
	}
	end := time.Now()
	if err := c.waitUDP(ctx, pods, peers, end); err != nil {
		return err
	}
	g := c.gapIn(pods, start, end)
	m := Silence{Step: "no restart", Network: g.Network, Raw: g.Raw, Floor: g.Floor, Load: loadAvg()}
	for _, n := range c.Nodes {
		st := c.selfSilence(pods, n.Name, start, end)
		m.Self = max(m.Self, st.To.Sub(st.From))
	}
	s.Measured = append(s.Measured, m)
	return nil
}

// FormatSilences is one line per step of s.Measured.
func FormatSilences(ms []Silence) string {
	var b strings.Builder
	r := func(d time.Duration) time.Duration { return d.Round(10 * time.Millisecond) }
	for _, m := range ms {
		fmt.Fprintf(&b, "%-28s raw any pair %6s  raw same node %6s  pod silent to itself %6s  asserted (network) %6s  load %s\n",
			m.Step, r(m.Raw), r(m.Floor), r(m.Self), r(m.Network), m.Load)
	}
	return b.String()
}
