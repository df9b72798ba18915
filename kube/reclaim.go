package kube

import (
	"context"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
)

// RunReclaimer runs until ctx is done. It competes for the Lease
// weft-reclaim; while this agent holds it, it calls remove(name) for every
// ring owner (from owners()) that is no longer a Node: on every Node delete
// event, every ReclaimInterval, and soon again after a failed remove.
//
// It is level-triggered: it compares the ring with the Nodes rather than
// acting on events alone, so a holder that died halfway is made good by the
// next holder. remove must be idempotent (removing a gone owner is a no-op
// returning 0). Before removing, the Node's absence is confirmed with a live
// GET, so a stale cache never takes a live peer's ranges.
func (c *Cluster) RunReclaimer(ctx context.Context, owners func() []string, remove func(name string) (uint64, error)) {
	e := &leaseElector{
		leases: c.client.Leases(c.namespace), namespace: c.namespace, name: ReclaimLease, identity: c.nodeName,
		log: c.log, leaseDuration: c.leaseDuration, renewDeadline: c.renewDeadline, retryPeriod: c.retryPeriod,
	}
	for ctx.Err() == nil {
		// run returns after a term has ended and its work with it, so
		// terms never overlap in this process.
		e.run(ctx, func(lctx context.Context) {
			c.log.Info("holding the reclaim lease", "lease", c.namespace+"/"+ReclaimLease)
			c.reclaimWhileLeading(lctx, owners, remove)
		})
	}
}

// reclaimWhileLeading is the holder's loop, stopped when lctx is cancelled
// (lease lost or agent stopping).
func (c *Cluster) reclaimWhileLeading(lctx context.Context, owners func() []string, remove func(string) (uint64, error)) {
	deleted := make(chan struct{}, 1)
	lister, _, err := c.watchNodes(lctx, func(string) {
		select {
		case deleted <- struct{}{}:
		default:
		}
	})
	if err != nil {
		c.log.Warn("reclaimer: no Node cache", "err", err)
		return
	}
	tick := time.NewTicker(c.reclaimInterval)
	defer tick.Stop()
	for {
		var retry <-chan time.Time
		if !c.reclaimOnce(lctx, lister, owners, remove) {
			retry = time.After(c.retryPeriod)
		}
		select {
		case <-lctx.Done():
			return
		case <-deleted:
		case <-tick.C:
		case <-retry:
		}
	}
}

// reclaimOnce removes every ring owner that is not a Node. It reports
// whether every step succeeded.
func (c *Cluster) reclaimOnce(ctx context.Context, lister corelisters.NodeLister, owners func() []string, remove func(string) (uint64, error)) bool {
	ok := true
	for _, name := range owners() {
		if ctx.Err() != nil {
			return false
		}
		if name == c.nodeName {
			continue // we are running, so our Node exists
		}
		if _, err := lister.Get(name); err == nil {
			continue
		} else if !apierrors.IsNotFound(err) {
			c.log.Warn("reclaimer: Node cache", "node", name, "err", err)
			ok = false
			continue
		}
		// Gone from the cache: confirm with the API server.
		_, err := c.client.Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			continue
		}
		if !apierrors.IsNotFound(err) {
			c.log.Warn("reclaimer: get Node", "node", name, "err", err)
			ok = false
			continue
		}
		n, err := remove(name)
		if err != nil {
			c.log.Warn("reclaimer: remove peer failed, will retry", "peer", name, "err", err)
			ok = false
			continue
		}
		c.log.Info("reclaimed the ranges of a deleted Node", "peer", name, "addresses", n)
	}
	return ok
}
