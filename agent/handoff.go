package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/api"
)

// HostLockFile, in the run dir, is flock()ed by the agent that owns the host
// for the whole of Run: only one agent at a time touches the TUN, the bridge,
// the ports and the API socket. The kernel drops the lock when the process
// dies, so a crash or kill -9 never leaves it behind.
const HostLockFile = "agent.lock"

// ErrHostBusy is returned by Run when another agent owns the host and
// Config.Handoff is off.
var ErrHostBusy = errors.New("this host already has a running agent")

// handoffPoll is how often a standby agent checks whether the running one has
// let go. flock cannot wait under a context, and 10 ms is far below the gap
// the hand-off aims at (a lock check is one syscall).
const handoffPoll = 10 * time.Millisecond

// hostLock is the held lock; release lets the next agent in.
type hostLock struct{ f *os.File }

func (l *hostLock) release() {
	if l == nil || l.f == nil {
		return
	}
	_ = unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	l.f.Close()
}

// takeHost locks the host for this agent. When another agent has it, the
// agent fails with ErrHostBusy, or with Config.Handoff waits in standby until
// that agent exits and takes over at once. Standby is how a DaemonSet rolls
// without a gap (maxSurge: 1): the new pod starts beside the old one, does its
// slow preparation (config, keys, install-cni), reports ready on its probe
// socket, and the old pod is stopped only then; the new agent takes over the
// moment the old one has let go of the host.
//
// An agent of a version from before the lock does not hold it but serves
// the API socket; it counts as running too, so an upgrade from it also waits.
func (a *Agent) takeHost(ctx context.Context) (*hostLock, error) {
	path := filepath.Join(a.cfg.RunDir, HostLockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("host lock: %w", err)
	}
	var waitStart time.Time
	tick := time.NewTicker(handoffPoll)
	defer tick.Stop()
	for {
		held, err := tryLock(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("host lock %s: %w", path, err)
		}
		if held && !apiAnswers(api.SocketPath(a.cfg.RunDir)) {
			if !waitStart.IsZero() {
				a.standby.Store(false)
				a.log.Info("took over the host from the previous agent", "standby", time.Since(waitStart).Round(time.Millisecond),
					"cpu", processCPU().Round(time.Millisecond))
			}
			return &hostLock{f: f}, nil
		}
		if held { // a lock-less older agent still serves: let it have the host
			_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		}
		if !a.cfg.Handoff {
			f.Close()
			return nil, fmt.Errorf("%w (run dir %s); stop it first, or start with --handoff to take over when it exits", ErrHostBusy, a.cfg.RunDir)
		}
		if waitStart.IsZero() {
			waitStart = time.Now()
			a.standby.Store(true)
			a.log.Info("another agent is running on this host: standing by to take over when it exits", "run_dir", a.cfg.RunDir)
		}
		select {
		case <-ctx.Done():
			a.standby.Store(false)
			f.Close()
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
}

// tryLock takes the exclusive lock without waiting: false when another open
// file holds it.
func tryLock(f *os.File) (bool, error) {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, unix.EWOULDBLOCK):
			return false, nil
		case errors.Is(err, unix.EINTR):
			continue
		default:
			return false, err
		}
	}
}

// apiAnswers reports whether some process accepts connections on the API
// socket.
func apiAnswers(path string) bool {
	c, err := net.DialTimeout("unix", path, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// serveProbe answers the kubelet's probes (through `weft probe`) on a unix
// socket private to this agent's pod (Config.ProbeSocket). The health port on
// the node's loopback belongs to whichever agent runs; while a new agent
// stands by, that is the old one, and the new pod's probes must be about the
// new agent. /readyz is 200 in standby (prepared to take over: that is what
// the DaemonSet controller waits for before it stops the old pod) and then
// once this host can network pods, like /readyz on --http-addr.
func (a *Agent) serveProbe() (*httpServer, error) {
	path := a.cfg.ProbeSocket
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("probe socket: %w", err)
	}
	ln, err := listenUnix(path)
	if err != nil {
		return nil, fmt.Errorf("probe socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if a.standby.Load() {
			fmt.Fprintln(w, "standby: prepared to take over from the running agent")
			return
		}
		if !a.Ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready:", a.notReadyReason())
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return serve(ln, mux), nil
}
