package kube

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// WatchPeers calls f with the InternalIP of every other Node, sorted, once
// the Node cache is filled and again whenever that list changes. Calls are
// serial and bursts of events are coalesced into one call with the latest
// list. It returns nil when ctx is done, or an error if the Node cache could
// never be filled.
func (c *Cluster) WatchPeers(ctx context.Context, f func(addrs []string)) error {
	lister, changed, err := c.watchNodes(ctx)
	if err != nil {
		return err
	}
	var last []string
	first := true
	for {
		addrs, err := peerAddrs(lister, c.nodeName)
		if err != nil {
			return fmt.Errorf("kube: list Nodes from cache: %w", err)
		}
		if first || !slices.Equal(addrs, last) {
			c.log.Debug("peers from Nodes", "addrs", addrs)
			f(addrs)
			last, first = addrs, false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// watchNodes starts an informer on Nodes that lives until ctx is done. It
// returns once the cache is synced; changed gets a value (coalesced) on every
// add, update or delete. deleted, when non-nil, is called with the name of
// each deleted Node.
func (c *Cluster) watchNodes(ctx context.Context, deleted ...func(name string)) (corelisters.NodeLister, <-chan struct{}, error) {
	inf := newInformer(c.client, c.client.Nodes(), &corev1.Node{})
	changed := make(chan struct{}, 1)
	poke := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if n, ok := obj.(*corev1.Node); ok {
				for _, d := range deleted {
					d(n.Name)
				}
			}
			poke()
		},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("kube: Node event handler: %w", err)
	}
	var run informers
	run.start(ctx, inf)
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil, nil, fmt.Errorf("kube: Node cache not synced: %w", context.Cause(ctx))
	}
	return corelisters.NewNodeLister(inf.GetIndexer()), changed, nil
}

// peerAddrs is the sorted, distinct InternalIP of every Node but self.
func peerAddrs(lister corelisters.NodeLister, self string) ([]string, error) {
	nodes, err := lister.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	addrs := make([]string, 0, len(nodes))
	for _, n := range nodes {
		if n.Name == self {
			continue
		}
		if a, ok := internalIP(n); ok {
			addrs = append(addrs, a)
		}
	}
	slices.Sort(addrs)
	return slices.Compact(addrs), nil
}

// internalIP is the Node's first IPv4 InternalIP (the weft underlay is IPv4).
func internalIP(n *corev1.Node) (string, bool) {
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err == nil && ip.Is4() {
			return ip.String(), true
		}
	}
	return "", false
}
