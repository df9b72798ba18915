package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/identity"
	"github.com/weftnet/weft/kube"
)

// kubeSide is the agent inside a Kubernetes cluster: peers from Node
// objects, the ring bootstrapped once through the API server, reclaim of
// deleted Nodes' ranges, the Node condition and the CNI config.
type kubeSide struct {
	cluster   *kube.Cluster
	policySrc *kube.PolicySource // nil without NetworkPolicy enforcement
}

func (a *Agent) startKube(ctx context.Context) (*kubeSide, error) {
	client := a.dev.KubeClient
	if client == nil {
		var err error
		if client, err = kube.NewClient(a.cfg.Kubeconfig); err != nil {
			return nil, fmt.Errorf("kubernetes client: %w", err)
		}
	}
	c, err := kube.New(kube.Config{Client: client, NodeName: a.cfg.Name, Logger: a.log.With("component", "kube")})
	if err != nil {
		return nil, err
	}
	a.log.Info("running in Kubernetes: peers come from Node objects", "node", a.cfg.Name, "namespace", c.Namespace())
	// The API server is the authority on peers' signing keys: each agent
	// publishes its own on its Node (run), and a key announced in gossip is
	// checked against the peer's Node, from a cache that run keeps.
	a.pins.SetAuthority(c.SigningKey)
	k := &kubeSide{cluster: c}
	if a.policy, err = a.startPolicy(); err != nil {
		return nil, err
	}
	if a.policy != nil {
		// Before any CNI ADD can ask it; Run starts it in run.
		k.policySrc = kube.NewPolicySource(client, a.policy, a.log.With("component", "policy-source"))
		a.policy.src = k.policySrc
	}
	return k, nil
}

// publishKeyTimeout bounds the first attempt to publish the signing key,
// made before joining peers so that they find it on the Node.
const publishKeyTimeout = 5 * time.Second

// publishSigningKey writes this host's signing key on its Node, retrying
// until it succeeds or ctx is done. It reports whether it succeeded.
func (k *kubeSide) publishSigningKey(ctx context.Context, a *Agent, first bool) bool {
	for {
		pctx, cancel := context.WithTimeout(ctx, publishKeyTimeout)
		err := k.cluster.PublishSigningKey(pctx, a.signer.Public())
		cancel()
		if err == nil {
			a.log.Info("signing key published on the Node", "annotation", kube.SigningKeyAnnotation,
				"key", identity.Fingerprint(a.signer.Public()))
			return true
		}
		if first {
			a.log.Warn("publishing the signing key on the Node, will retry", "err", err)
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(5 * time.Second):
		}
	}
}

// run starts its watchers with goRun, so that they end before the agent's Run.
func (k *kubeSide) run(ctx context.Context, a *Agent, goRun func(func())) {
	if k.policySrc != nil {
		goRun(func() { a.policy.run(ctx) })
		goRun(func() {
			if err := k.policySrc.Run(ctx); err != nil {
				a.log.Error("watching pods, namespaces and network policies; CNI ADD answers \"try again\"", "err", err)
			}
		})
	}
	goRun(func() {
		if err := k.cluster.WatchSigningKeys(ctx); err != nil {
			a.log.Error("watching Nodes' signing keys; peers' keys are trusted on first use", "err", err)
		}
	})
	// One attempt before joining peers, so they find the key on the Node;
	// if the API server is down, keep trying in the background.
	if !k.publishSigningKey(ctx, a, true) {
		goRun(func() { k.publishSigningKey(ctx, a, false) })
	}
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
		if err := kube.WriteCNIConfig(a.cfg.CNIConfDir, kube.CNIConfig{Socket: api.SocketPath(a.cfg.RunDir), Chain: a.cfg.CNIChain}); err != nil {
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
