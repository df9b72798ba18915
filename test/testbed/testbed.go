// Package testbed simulates several weft hosts on one machine: every host is
// a network namespace with one underlay interface on a shared bridge that
// lives in a namespace of its own, so nothing touches the machine's own
// network. Addresses come from 198.18.0.0/15, the range reserved for
// benchmarking. The test bed starts real `weft launch` processes and tears
// everything down again, also when a test fails.
package testbed

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/internal/childproc"
)

// Underlay addressing: host i is 198.18.0.(i+1); the outside world (a
// namespace standing for "the internet" behind the hosts) is OutsideAddr.
var (
	UnderlayNet = netip.MustParsePrefix("198.18.0.0/24")
	OutsideAddr = netip.MustParseAddr("198.18.0.200")
)

// Options of a test bed.
type Options struct {
	Hosts   int    // number of simulated hosts
	Dir     string // where state, run dirs and logs go (required)
	BinDir  string // holds weft and weft-cni (required)
	Prefix  string // namespace name prefix, default "wtb"
	Outside bool   // also create the outside-world namespace
	// StaticNeighbours gives every host a permanent neighbour entry (IP to
	// MAC) for every other host's underlay address, so that nobody ARPs on
	// the underlay. The kernel keeps one ARP table for all namespaces, and
	// its dynamic entries are capped at net.ipv4.neigh.default.gc_thresh3
	// (1,024 by default) for the whole machine: N hosts that all talk to
	// each other need N×(N-1) entries, 2,450 at 50 hosts, and past the cap
	// ("neighbor table overflow!") packets to unresolved neighbours are
	// dropped, so hosts cannot reach each other. Permanent entries are
	// exempt from that cap. A real host has its own table; use this for
	// beds of more than about 20 hosts.
	StaticNeighbours bool
	Logf             func(format string, args ...any)
}

// Bed is a running test bed.
type Bed struct {
	opts     Options
	ID       string
	Underlay string // namespace holding the underlay bridge
	Outside  string // outside-world namespace, "" unless Options.Outside
	Hosts    []*Host

	mu         sync.Mutex
	namespaces []string
}

// Host is one simulated host.
type Host struct {
	bed      *Bed
	Index    int
	Name     string     // peer name, e.g. host1
	Netns    string     // namespace name
	Addr     netip.Addr // underlay address
	Dir      string     // this host's files
	StateDir string
	RunDir   string
	LogPath  string
	// Env is added to the agent's environment at the next Launch.
	Env []string

	mu       sync.Mutex
	proc     *exec.Cmd
	done     chan struct{}
	exitCode int // of the last agent process, once done is closed
}

// New creates the namespaces and the underlay. On error everything made so
// far is removed again.
func New(ctx context.Context, opts Options) (b *Bed, err error) {
	if opts.Hosts < 1 || opts.Hosts > 150 {
		return nil, fmt.Errorf("testbed: %d hosts: want 1..150", opts.Hosts)
	}
	if opts.Dir == "" || opts.BinDir == "" {
		return nil, errors.New("testbed: Dir and BinDir are required")
	}
	if opts.Prefix == "" {
		opts.Prefix = "wtb"
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, errors.New("testbed: the `ip` command (iproute2) is missing: apt-get install -y iproute2")
	}
	id := make([]byte, 3)
	_, _ = rand.Read(id)
	b = &Bed{opts: opts, ID: hex.EncodeToString(id)}
	b.Underlay = fmt.Sprintf("%s-%s-ul", opts.Prefix, b.ID)
	defer func() {
		if err != nil {
			b.Close()
			b = nil
		}
	}()
	if err := b.addNetns(ctx, b.Underlay); err != nil {
		return nil, err
	}
	if err := b.run(ctx, "ip", "-n", b.Underlay, "link", "add", "br0", "type", "bridge"); err != nil {
		return nil, err
	}
	if err := b.run(ctx, "ip", "-n", b.Underlay, "link", "set", "br0", "up"); err != nil {
		return nil, err
	}
	for i := 1; i <= opts.Hosts; i++ {
		h := &Host{bed: b, Index: i, Name: fmt.Sprintf("host%d", i),
			Netns: fmt.Sprintf("%s-%s-h%d", opts.Prefix, b.ID, i),
			Addr:  netip.AddrFrom4([4]byte{198, 18, 0, byte(i)})}
		h.Dir = filepath.Join(opts.Dir, h.Name)
		h.StateDir, h.RunDir = filepath.Join(h.Dir, "state"), filepath.Join(h.Dir, "run")
		h.LogPath = filepath.Join(h.Dir, "weft.log")
		if err := os.MkdirAll(h.Dir, 0o755); err != nil {
			return nil, err
		}
		if err := b.plug(ctx, h.Netns, fmt.Sprintf("h%d", i), h.Addr); err != nil {
			return nil, err
		}
		b.Hosts = append(b.Hosts, h)
	}
	if opts.Outside {
		b.Outside = fmt.Sprintf("%s-%s-out", opts.Prefix, b.ID)
		if err := b.plug(ctx, b.Outside, "out", OutsideAddr); err != nil {
			return nil, err
		}
	}
	if opts.StaticNeighbours {
		if err := b.staticNeighbours(ctx); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// underlayMAC is the MAC address of the eth0 of the namespace at addr: a
// locally administered one derived from the address, so that neighbours
// can be written without asking.
func underlayMAC(addr netip.Addr) string {
	a := addr.As4()
	return fmt.Sprintf("02:00:%02x:%02x:%02x:%02x", a[0], a[1], a[2], a[3])
}

// staticNeighbours writes, in every host's namespace (and the outside
// world's), a permanent neighbour entry for every other one, one `ip
// -batch` per namespace.
func (b *Bed) staticNeighbours(ctx context.Context) error {
	type end struct {
		ns   string
		addr netip.Addr
	}
	var ends []end
	for _, h := range b.Hosts {
		ends = append(ends, end{h.Netns, h.Addr})
	}
	if b.Outside != "" {
		ends = append(ends, end{b.Outside, OutsideAddr})
	}
	for _, e := range ends {
		var batch strings.Builder
		for _, o := range ends {
			if o.addr != e.addr {
				fmt.Fprintf(&batch, "neigh replace %s lladdr %s dev eth0 nud permanent\n", o.addr, underlayMAC(o.addr))
			}
		}
		cmd := exec.CommandContext(ctx, "ip", "-n", e.ns, "-batch", "-")
		cmd.Stdin = strings.NewReader(batch.String())
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("static neighbours in %s: %w: %s", e.ns, err, bytes.TrimSpace(out))
		}
	}
	return nil
}

// plug creates namespace ns with interface eth0 at addr, cabled to the
// underlay bridge as port.
func (b *Bed) plug(ctx context.Context, ns, port string, addr netip.Addr) error {
	if err := b.addNetns(ctx, ns); err != nil {
		return err
	}
	cidr := netip.PrefixFrom(addr, UnderlayNet.Bits()).String()
	for _, args := range [][]string{
		{"ip", "-n", b.Underlay, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"ip", "-n", b.Underlay, "link", "set", port, "master", "br0", "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "link", "set", "eth0", "address", underlayMAC(addr)},
		{"ip", "-n", ns, "addr", "add", cidr, "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
	} {
		if err := b.run(ctx, args...); err != nil {
			return err
		}
	}
	if addr != OutsideAddr {
		// Hosts reach the outside world through OutsideAddr, like a LAN's router.
		return b.run(ctx, "ip", "-n", ns, "route", "add", "default", "via", OutsideAddr.String())
	}
	return nil
}

// AddNetns creates an extra namespace that Close deletes.
func (b *Bed) AddNetns(ctx context.Context, name string) error { return b.addNetns(ctx, name) }

func (b *Bed) addNetns(ctx context.Context, name string) error {
	if err := b.run(ctx, "ip", "netns", "add", name); err != nil {
		return err
	}
	b.mu.Lock()
	b.namespaces = append(b.namespaces, name)
	b.mu.Unlock()
	return nil
}

// Close stops every agent (SIGTERM, then SIGKILL) and deletes every
// namespace the bed made; links inside them go with them. Safe to call twice.
func (b *Bed) Close() {
	var wg sync.WaitGroup
	for _, h := range b.Hosts {
		wg.Add(1)
		go func() { defer wg.Done(); _ = h.Stop(5 * time.Second) }()
	}
	wg.Wait()
	b.mu.Lock()
	nss := b.namespaces
	b.namespaces = nil
	b.mu.Unlock()
	for i := len(nss) - 1; i >= 0; i-- {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := b.run(ctx, "ip", "netns", "del", nss[i]); err != nil {
			b.opts.Logf("testbed: %v", err)
		}
		cancel()
	}
}

// run runs a command and returns its combined output in the error.
func (b *Bed) run(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Exec runs a command inside namespace ns and returns its output.
func Exec(ctx context.Context, ns string, args ...string) (string, error) {
	full := append([]string{"netns", "exec", ns}, args...)
	out, err := exec.CommandContext(ctx, "ip", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s: %w: %s", ns, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// Exec runs a command on this host.
func (h *Host) Exec(ctx context.Context, args ...string) (string, error) {
	return Exec(ctx, h.Netns, args...)
}

// Client talks to this host's agent.
func (h *Host) Client() *api.Client {
	return api.NewClient(api.SocketPath(h.RunDir), 30*time.Second)
}

// Target is the gossip address other hosts join.
func (h *Host) Target() string { return h.Addr.String() }

// Launch starts `weft launch` on this host with the contract's flags, the
// given extra flags and peers. The agent's output goes to LogPath.
func (h *Host) Launch(extra []string, peers ...string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc != nil {
		return fmt.Errorf("%s: agent already running", h.Name)
	}
	logf, err := os.OpenFile(h.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	args := []string{"netns", "exec", h.Netns, filepath.Join(h.bed.opts.BinDir, "weft"), "launch",
		"--name", h.Name, "--host", h.Addr.String(),
		"--state-dir", h.StateDir, "--run-dir", h.RunDir,
		"--http-addr", "127.0.0.1:6784", "--metrics-addr", "127.0.0.1:6782"}
	args = append(args, extra...)
	args = append(args, peers...)
	cmd := exec.Command("ip", args...) // ip netns exec execs weft in place: the pid is weft's
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), h.Env...)
	// Killed with the test binary; childproc forks from a thread that
	// never ends, so a namespace helper's thread ending cannot kill it.
	if err := childproc.Start(cmd); err != nil {
		logf.Close()
		return fmt.Errorf("%s: start weft: %w", h.Name, err)
	}
	h.proc, h.done = cmd, make(chan struct{})
	done := h.done
	go func() {
		_ = cmd.Wait()
		logf.Close()
		h.mu.Lock()
		h.exitCode = cmd.ProcessState.ExitCode()
		h.mu.Unlock()
		close(done)
	}()
	h.bed.opts.Logf("%s: weft launched (pid %d)", h.Name, cmd.Process.Pid)
	return nil
}

// Running reports whether this host's agent process is alive.
func (h *Host) Running() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc == nil {
		return false
	}
	select {
	case <-h.done:
		return false
	default:
		return true
	}
}

// WaitExit waits up to timeout for the agent process to end by itself and
// returns its exit status (-1 when a signal ended it).
func (h *Host) WaitExit(timeout time.Duration) (int, error) {
	h.mu.Lock()
	done := h.done
	h.mu.Unlock()
	if done == nil {
		return 0, fmt.Errorf("%s: agent never launched", h.Name)
	}
	select {
	case <-done:
	case <-time.After(timeout):
		return 0, fmt.Errorf("%s: agent still running after %s", h.Name, timeout)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.proc = nil
	return h.exitCode, nil
}

// Stop sends SIGTERM and waits up to grace before SIGKILL.
func (h *Host) Stop(grace time.Duration) error { return h.signal(syscall.SIGTERM, grace) }

// Kill ends the agent at once with SIGKILL, like a crash.
func (h *Host) Kill() error { return h.signal(syscall.SIGKILL, 5*time.Second) }

func (h *Host) signal(sig syscall.Signal, grace time.Duration) error {
	h.mu.Lock()
	cmd, done := h.proc, h.done
	h.proc = nil
	h.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
		return nil
	case <-time.After(grace):
	}
	_ = cmd.Process.Kill()
	<-done
	return fmt.Errorf("%s: agent did not stop within %s of %s; killed", h.Name, grace, sig)
}

// Log returns the agent's output so far.
func (h *Host) Log() string {
	b, _ := os.ReadFile(h.LogPath)
	return string(b)
}

// SetLink brings this host's underlay cable up or down: a network partition
// without touching the agent.
func (h *Host) SetLink(ctx context.Context, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return h.bed.run(ctx, "ip", "-n", h.bed.Underlay, "link", "set", fmt.Sprintf("h%d", h.Index), state)
}

// SetUnderlayMTU changes the MTU of this host's underlay cable, both ends.
func (h *Host) SetUnderlayMTU(ctx context.Context, mtu int) error {
	m := fmt.Sprint(mtu)
	if err := h.bed.run(ctx, "ip", "-n", h.bed.Underlay, "link", "set", fmt.Sprintf("h%d", h.Index), "mtu", m); err != nil {
		return err
	}
	return h.bed.run(ctx, "ip", "-n", h.Netns, "link", "set", "eth0", "mtu", m)
}

// Eventually polls cond every interval until it returns nil or the deadline
// passes; the error then is cond's last one.
func Eventually(ctx context.Context, timeout time.Duration, cond func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not within %s: %w", timeout, err)
		case <-tick.C:
		}
	}
}

// WaitAlive waits until every given host's agent sees want alive members.
func WaitAlive(ctx context.Context, timeout time.Duration, want int, hosts ...*Host) error {
	return Eventually(ctx, timeout, func() error {
		for _, h := range hosts {
			st, err := h.Client().Status(ctx)
			if err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
			if st.Alive != want {
				return fmt.Errorf("%s sees %d alive members, want %d", h.Name, st.Alive, want)
			}
		}
		return nil
	})
}

// WaitAPI waits until h's agent answers on its local API.
func (h *Host) WaitAPI(ctx context.Context, timeout time.Duration) error {
	return Eventually(ctx, timeout, func() error {
		if !h.Running() {
			return fmt.Errorf("%s: agent exited: %s", h.Name, lastLine(h.Log()))
		}
		_, err := h.Client().Status(ctx)
		return err
	})
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// WaitReady waits until every given host's agent can network pods.
func WaitReady(ctx context.Context, timeout time.Duration, hosts ...*Host) error {
	return Eventually(ctx, timeout, func() error {
		for _, h := range hosts {
			st, err := h.Client().Status(ctx)
			if err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
			if !st.Ready {
				ipam := ""
				if st.IPAM != nil {
					ipam = st.IPAM.State
				}
				return fmt.Errorf("%s not ready (IPAM: %s)", h.Name, ipam)
			}
		}
		return nil
	})
}
