package agent_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/agent"
	"github.com/weftnet/weft/agent/agenttest"
	"github.com/weftnet/weft/api"
)

func ownedBy(st api.IPAMStatus, name string) uint64 {
	for _, e := range st.Entries {
		if e.Name == name {
			return e.Owned
		}
	}
	return 0
}

// lockedWriter serialises the agent's log writes into a builder the test reads.
type lockedWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// probeGet asks an agent's probe socket, as `weft probe` does.
func probeGet(sock, path string) (int, string, error) {
	cl := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := cl.Get("http://weft" + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), nil
}

// A second agent on the same host (run dir) with Handoff stands by while the
// first runs: it does not touch the API socket, its probe socket says it is
// prepared, and it takes over the moment the first exits, with the same ring.
func TestHandoffStandbyThenTakeOver(t *testing.T) {
	c := agenttest.New(t, agenttest.Options{N: 2, NoDataplane: true})
	c.StartAll()
	c.WaitFormed()
	old := c.Nodes[0]
	before, err := old.Client.IPAM(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	cfg := old.Config
	cfg.Handoff = true
	cfg.ProbeSocket = filepath.Join(t.TempDir(), "probe.sock")
	logs := &lockedWriter{w: &strings.Builder{}}
	next, err := agent.New(cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- next.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(agenttest.WaitTimeout):
			t.Error("the second agent did not stop")
		}
	})

	c.Wait("the second agent to stand by", func() error {
		code, body, err := probeGet(cfg.ProbeSocket, "/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusOK || !strings.HasPrefix(body, "standby") {
			return fmt.Errorf("/readyz %d %q, want 200 standby", code, body)
		}
		return nil
	})
	// The running agent keeps the host: its API still answers it, ready.
	st, err := old.Client.Status(context.Background())
	if err != nil || !st.Ready || st.Name != old.Name {
		t.Fatalf("the running agent's API during standby: %+v, %v", st, err)
	}

	stopped := time.Now()
	if err := old.Stop(); err != nil {
		t.Fatalf("first agent: %v", err)
	}
	c.Wait("the second agent to take over", func() error {
		select {
		case err := <-done:
			t.Fatalf("the second agent stopped: %v", err)
		default:
		}
		code, body, err := probeGet(cfg.ProbeSocket, "/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusOK || body != "ready" {
			return fmt.Errorf("/readyz %d %q", code, body)
		}
		st, err := old.Client.Status(context.Background())
		if err != nil {
			return err
		}
		if !st.Ready || st.Alive != 2 {
			return fmt.Errorf("after the take-over: ready=%v alive=%d", st.Ready, st.Alive)
		}
		return nil
	})
	t.Logf("took over and ready %s after the first agent returned", time.Since(stopped).Round(time.Millisecond))
	after, err := old.Client.IPAM(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ownedBy(after, old.Name), ownedBy(before, old.Name); got != want {
		t.Fatalf("%s owns %d addresses after the take-over, %d before", old.Name, got, want)
	}
	if !strings.Contains(logs.String(), "took over the host") {
		t.Errorf("no take-over logged:\n%s", logs.String())
	}
}

// Without Handoff a second agent on a busy host fails at once, as before.
func TestSecondAgentWithoutHandoffFails(t *testing.T) {
	c := agenttest.Start(t, agenttest.Options{N: 1, NoDataplane: true, IPAMInit: "seed=host1"})
	c.WaitFormed()
	a, err := agent.New(c.Nodes[0].Config, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), agenttest.WaitTimeout)
	defer cancel()
	if err := a.Run(ctx); !errors.Is(err, agent.ErrHostBusy) {
		t.Fatalf("second agent's Run = %v, want ErrHostBusy", err)
	}
	if _, err := c.Nodes[0].Client.Status(context.Background()); err != nil {
		t.Fatalf("the first agent's API after the refused second: %v", err)
	}
}

// An agent of a version from before the host lock holds no lock but serves
// the API socket: a new agent with Handoff stands by for it too, and takes
// over once it has gone.
func TestHandoffWaitsForAnAgentWithoutTheLock(t *testing.T) {
	c := agenttest.New(t, agenttest.Options{N: 1, NoDataplane: true, IPAMInit: "seed=host1"})
	n := c.Nodes[0]
	legacy, err := net.Listen("unix", api.SocketPath(n.Config.RunDir))
	if err != nil {
		t.Fatal(err)
	}
	defer legacy.Close()
	go func() {
		for {
			conn, err := legacy.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	cfg := n.Config
	cfg.Handoff = true
	cfg.ProbeSocket = filepath.Join(t.TempDir(), "probe.sock")
	a, err := agent.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	c.Wait("standby beside the lock-less agent", func() error {
		code, body, err := probeGet(cfg.ProbeSocket, "/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusOK || !strings.HasPrefix(body, "standby") {
			return fmt.Errorf("/readyz %d %q, want 200 standby", code, body)
		}
		return nil
	})
	legacy.Close()
	c.Wait("the take-over", func() error {
		st, err := n.Client.Status(context.Background())
		if err != nil {
			return err
		}
		if !st.Ready {
			return errors.New("not ready yet")
		}
		return nil
	})
}
