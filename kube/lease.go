package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// errHeldByOther: the Lease is held by another live holder.
var errHeldByOther = errors.New("kube: lease held by another")

// leaseElector competes for one coordination.k8s.io Lease, as client-go's
// leaderelection does (which cannot be used: it links every API group's
// typed client, see Client). The holder renews the Lease every
// retryPeriod; a candidate takes it over once its record has not changed
// for leaseDuration by the candidate's own clock, so no two hosts' clocks
// are compared. Writes are Updates with the resourceVersion read, so of
// two candidates only one wins.
type leaseElector struct {
	leases    Resource[*coordinationv1.Lease, *coordinationv1.LeaseList]
	namespace string
	name      string
	identity  string
	log       *slog.Logger

	leaseDuration, renewDeadline, retryPeriod time.Duration

	observed     coordinationv1.LeaseSpec // the record as last seen
	observedTime time.Time                // when it last changed, by our clock
}

// run acquires the Lease (retrying until ctx is done), then calls lead
// with a context that ends when the Lease is lost or ctx ends. Once lead
// has returned, a Lease still held is released, so that a stopping agent
// hands over at once. run returns after one term, or when ctx is done.
func (e *leaseElector) run(ctx context.Context, lead func(context.Context)) {
	if !e.acquire(ctx) {
		return
	}
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		lead(lctx)
	}()
	e.renew(lctx)
	cancel()
	<-done // no overlap between this term's work and the next holder's
	e.release()
}

// acquire tries every retryPeriod (jittered, so that candidates spread
// out) until it holds the Lease or ctx is done.
func (e *leaseElector) acquire(ctx context.Context) bool {
	for {
		err := e.tryAcquireOrRenew(ctx)
		if err == nil {
			e.log.Debug("lease acquired", "lease", e.namespace+"/"+e.name)
			return true
		}
		if !errors.Is(err, errHeldByOther) && ctx.Err() == nil {
			e.log.Debug("lease: acquire failed", "lease", e.namespace+"/"+e.name, "err", err)
		}
		wait := e.retryPeriod + time.Duration(rand.Float64()*1.2*float64(e.retryPeriod))
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
		}
	}
}

// renew keeps the Lease until ctx is done, another holder shows up, or no
// renewal has succeeded for renewDeadline.
func (e *leaseElector) renew(ctx context.Context) {
	t := time.NewTicker(e.retryPeriod)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		actx, cancel := context.WithTimeout(ctx, e.renewDeadline)
		err := e.tryAcquireOrRenew(actx)
		cancel()
		switch {
		case err == nil:
			last = time.Now()
		case ctx.Err() != nil:
			return
		case errors.Is(err, errHeldByOther):
			e.log.Warn("lease lost to another holder", "lease", e.namespace+"/"+e.name, "holder", deref(e.observed.HolderIdentity))
			return
		case time.Since(last) > e.renewDeadline:
			e.log.Warn("lease lost: not renewed in time", "lease", e.namespace+"/"+e.name, "err", err)
			return
		}
	}
}

// tryAcquireOrRenew makes this candidate the holder of the Lease, or
// renews it if it is already: nil on success, errHeldByOther if another
// holder's record is still fresh.
func (e *leaseElector) tryAcquireOrRenew(ctx context.Context) error {
	now := time.Now()
	l, err := e.leases.Get(ctx, e.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: e.name, Namespace: e.namespace}}
		l.Spec = e.spec(now, now, 0)
		created, err := e.leases.Create(ctx, l, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("kube: create Lease %s/%s: %w", e.namespace, e.name, err)
		}
		e.observe(created.Spec, now)
		return nil
	}
	if err != nil {
		return fmt.Errorf("kube: get Lease %s/%s: %w", e.namespace, e.name, err)
	}
	if !apiequality.Semantic.DeepEqual(l.Spec, e.observed) {
		e.observe(l.Spec, now)
	}
	holder := deref(l.Spec.HolderIdentity)
	if holder != "" && holder != e.identity && now.Before(e.observedTime.Add(e.leaseDuration)) {
		return errHeldByOther
	}
	acquired, transitions := now, deref(l.Spec.LeaseTransitions)
	if holder == e.identity && l.Spec.AcquireTime != nil {
		acquired = l.Spec.AcquireTime.Time
	} else {
		transitions++
	}
	l.Spec = e.spec(now, acquired, transitions)
	updated, err := e.leases.Update(ctx, l, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("kube: update Lease %s/%s: %w", e.namespace, e.name, err)
	}
	e.observe(updated.Spec, now)
	return nil
}

// release gives the Lease up if this candidate still holds it: an empty
// holder lets the next candidate take it without waiting out the term.
func (e *leaseElector) release() {
	ctx, cancel := context.WithTimeout(context.Background(), e.renewDeadline)
	defer cancel()
	l, err := e.leases.Get(ctx, e.name, metav1.GetOptions{})
	if err != nil || deref(l.Spec.HolderIdentity) != e.identity {
		return
	}
	now := metav1.NewMicroTime(time.Now())
	one := int32(1)
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = nil, &one, &now
	if _, err := e.leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		e.log.Debug("lease: release failed; it expires instead", "lease", e.namespace+"/"+e.name, "err", err)
	}
}

func (e *leaseElector) spec(now, acquired time.Time, transitions int32) coordinationv1.LeaseSpec {
	secs := int32(max(1, (e.leaseDuration+time.Second-1)/time.Second))
	renew, acq := metav1.NewMicroTime(now), metav1.NewMicroTime(acquired)
	id := e.identity
	return coordinationv1.LeaseSpec{HolderIdentity: &id, LeaseDurationSeconds: &secs,
		AcquireTime: &acq, RenewTime: &renew, LeaseTransitions: &transitions}
}

func (e *leaseElector) observe(s coordinationv1.LeaseSpec, now time.Time) {
	e.observed, e.observedTime = *s.DeepCopy(), now
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
