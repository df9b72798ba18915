// Package agent composes one weft host: gossip membership, IPAM, the host
// network, the data plane, the local API and the health and metrics servers.
//
// It lives apart from cmd/weft so that tests can run agents in-process and
// the CLI stays a thin layer of flag parsing.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/router/crypto"
	"github.com/weftnet/weft/router/mesh"
)

// Agent is one running weft host.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	started time.Time

	keys *crypto.PasswordKeys // nil without a password
	mesh *mesh.Mesh

	joined atomic.Int32 // alive peers last logged, to log changes once
	ready  atomic.Bool

	resetOnce sync.Once
	reset     chan struct{} // closed by `weft reset` to stop the agent
}

// New validates cfg and prepares the agent; Run starts it.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, dir := range []string{cfg.StateDir, cfg.RunDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", dir, err)
		}
	}
	a := &Agent{cfg: cfg, log: log, reset: make(chan struct{})}
	if cfg.Password != nil {
		// Slow on purpose (Argon2id): done once, here.
		keys, err := crypto.DerivePasswordKeys(cfg.Password)
		if err != nil {
			return nil, fmt.Errorf("password: %w", err)
		}
		a.keys = &keys
	}
	return a, nil
}

// Run starts everything and blocks until ctx is done (SIGTERM) or the agent
// is reset; it then leaves the mesh cleanly and returns.
func (a *Agent) Run(ctx context.Context) error {
	a.started = time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	apiSrv, err := a.serveAPI()
	if err != nil {
		return err
	}
	defer apiSrv.close()

	var healthSrv *httpServer
	if a.cfg.HTTPAddr != "" {
		if healthSrv, err = a.serveHealth(); err != nil {
			return err
		}
		defer healthSrv.close()
	}

	m, err := mesh.New(mesh.Config{
		Name: a.cfg.Name,
		Bind: a.cfg.Host,
		Port: a.cfg.Port,
		Meta: mesh.Meta{
			Protocol:  mesh.ProtocolMax,
			DataPort:  uint16(a.cfg.Port + 1),
			Encrypted: a.cfg.Password != nil,
			Version:   api.Version,
		},
		SecretKey: a.gossipKey(),
		Timing:    a.cfg.Timing,
		Logger:    a.log,
	})
	if err != nil {
		return err
	}
	a.mesh = m
	m.OnChange(a.membershipChanged)
	if len(a.cfg.Peers) > 0 {
		a.log.Info("joining peers", "peers", a.cfg.Peers)
		if err := m.Connect(a.cfg.Peers); err != nil {
			return err
		}
	} else {
		a.log.Info("no peers given; waiting for others to join this host")
	}
	a.ready.Store(true)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); m.Run(ctx) }()

	select {
	case <-ctx.Done():
		a.log.Info("shutting down")
	case <-a.reset:
		a.log.Info("reset: leaving the mesh")
	}
	cancel()
	wg.Wait()
	return nil
}

// membershipChanged logs the alive count when it changes.
func (a *Agent) membershipChanged() {
	_, alive := a.mesh.Counts()
	others := int32(alive - 1)
	if old := a.joined.Swap(others); old != others {
		a.log.Info(fmt.Sprintf("joined %d %s", others, plural(int(others), "peer", "peers")), "peers", others)
	}
}

func (a *Agent) gossipKey() []byte {
	if a.keys == nil {
		return nil
	}
	return a.keys.Gossip[:]
}

// Ready reports whether this agent can serve pods.
func (a *Agent) Ready() bool { return a.ready.Load() }

func (a *Agent) status() api.Status {
	st := api.Status{
		Version:    api.Version,
		Name:       a.cfg.Name,
		Host:       a.cfg.Host.String(),
		Port:       a.cfg.Port,
		Encryption: a.cfg.Password != nil,
		Protocol:   mesh.ProtocolMax,
		Uptime:     time.Since(a.started).Round(time.Second),
		Ready:      a.Ready(),
	}
	if a.mesh != nil {
		st.Peers, st.Alive = a.mesh.Counts()
		st.Targets = len(a.mesh.Targets())
	}
	return st
}

var errNoMesh = errors.New("gossip is still starting")

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
