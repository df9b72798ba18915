package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/kube"
)

// kubeSide is the agent inside a Kubernetes cluster: peers from Node
// objects, the ring bootstrapped once through the API server, reclaim of
// deleted Nodes' ranges, the Node condition and the CNI config.
type kubeSide struct {
	cluster *kube.Cluster
}

func (a *Agent) startKube(ctx context.Context) (*kubeSide, error) {
	client, err := kube.NewClient(a.cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	c, err := kube.New(kube.Config{Client: client, NodeName: a.cfg.Name, Logger: a.log.With("component", "kube")})
	if err != nil {
		return nil, err
	}
	a.log.Info("running in Kubernetes: peers come from Node objects", "node", a.cfg.Name, "namespace", c.Namespace())
	return &kubeSide{cluster: c}, nil
}

// run starts its watchers with goRun, so that they end before the agent's Run.
func (k *kubeSide) run(ctx context.Context, a *Agent, goRun func(func())) {
	var nodesElsewhere atomic.Bool // other Nodes exist, so there is a mesh to join
	goRun(func() {
		var current []string
		err := k.cluster.WatchPeers(ctx, func(addrs []string) {
			nodesElsewhere.Store(len(addrs) > 0)
			var gone []string
			for _, old := range current {
				if !slices.Contains(addrs, old) {
					gone = append(gone, old)
				}
			}
			if len(gone) > 0 {
				_ = a.mesh.Forget(gone)
			}
			if err := a.mesh.Connect(addrs); err != nil {
				a.log.Warn("peers from Nodes", "err", err)
			}
			current = addrs
		})
		if err != nil {
			a.log.Error("watching Nodes", "err", err)
		}
	})
	goRun(func() {
		k.cluster.RunReclaimer(ctx, func() []string {
			st := a.ipam.Status()
			names := make([]string, 0, len(st.Entries))
			for _, e := range st.Entries {
				names = append(names, e.Name)
			}
			return names
		}, func(name string) (uint64, error) {
			// A relaunched agent must not reclaim from the ring it saved before
			// it went down: donations made meanwhile would be overridden.
			if nodesElsewhere.Load() && len(a.mesh.AliveNames()) < 2 {
				return 0, errors.New("not joined to the mesh yet; reclaim postponed")
			}
			return a.ipam.RemovePeer(name)
		})
	})

	// Once ready: tell Kubernetes, then offer the CNI config, so pods created
	// earlier got "try again" rather than a half-working network.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for !a.Ready() {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
	if a.cfg.CNIConfDir != "" {
		if err := kube.WriteCNIConfig(a.cfg.CNIConfDir, api.SocketPath(a.cfg.RunDir), 0); err != nil {
			a.log.Error("writing the CNI config", "err", err)
		} else {
			a.log.Info("CNI config written", "dir", a.cfg.CNIConfDir)
		}
	}
	for {
		err := k.cluster.SetNetworkAvailable(ctx)
		if err == nil {
			a.log.Info("Node condition NetworkUnavailable=False set")
			return
		}
		a.log.Warn("setting the Node condition, will retry", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}
