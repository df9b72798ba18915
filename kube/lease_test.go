package kube

import (
	"context"
	"errors"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/kube/client/clientset"
)

func testElector(t *testing.T, c Client, id string) *leaseElector {
	return &leaseElector{leases: c.Leases("ns"), namespace: "ns", name: "l", identity: id, log: testLogger(t, id),
		leaseDuration: 300 * time.Millisecond, renewDeadline: 200 * time.Millisecond, retryPeriod: 20 * time.Millisecond}
}

func holderOf(t *testing.T, c Client) (string, int32) {
	t.Helper()
	l, err := c.Leases("ns").Get(context.Background(), "l", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return deref(l.Spec.HolderIdentity), deref(l.Spec.LeaseTransitions)
}

// A held lease is refused to another candidate; once released, it goes
// to the next candidate at once, without waiting out the term.
func TestLeaseHeldThenReleased(t *testing.T) {
	c := clientset.Wrap(fake.NewClientset())
	a, b := testElector(t, c, "a"), testElector(t, c, "b")
	b.leaseDuration = time.Hour // b would never see a's term expire
	ctx := context.Background()
	if err := a.tryAcquireOrRenew(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.tryAcquireOrRenew(ctx); !errors.Is(err, errHeldByOther) {
		t.Fatalf("b acquired a held lease: %v", err)
	}
	if h, _ := holderOf(t, c); h != "a" {
		t.Fatalf("holder %q, want a", h)
	}
	a.release()
	if h, _ := holderOf(t, c); h != "" {
		t.Fatalf("holder %q after release, want none", h)
	}
	if err := b.tryAcquireOrRenew(ctx); err != nil {
		t.Fatalf("b after release: %v", err)
	}
	if h, n := holderOf(t, c); h != "b" || n != 1 {
		t.Fatalf("holder %q transitions %d, want b 1", h, n)
	}
}

// A holder that stops renewing (dead) loses the lease once its record has
// not changed for a lease duration by the candidate's clock.
func TestLeaseTakenOverAfterExpiry(t *testing.T) {
	c := clientset.Wrap(fake.NewClientset())
	a, b := testElector(t, c, "a"), testElector(t, c, "b")
	ctx := context.Background()
	if err := a.tryAcquireOrRenew(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if !b.acquire(ctx) {
		t.Fatal("b never acquired the expired lease")
	}
	if waited := time.Since(start); waited < b.leaseDuration {
		t.Fatalf("b took the lease after %s, before a's term (%s) ran out", waited, b.leaseDuration)
	}
	if h, n := holderOf(t, c); h != "b" || n != 1 {
		t.Fatalf("holder %q transitions %d, want b 1", h, n)
	}
}

// run: the holder leads until another holder shows up, then its lead
// context ends and run returns without releasing the other's lease.
func TestLeaseRunEndsWhenTaken(t *testing.T) {
	c := clientset.Wrap(fake.NewClientset())
	a := testElector(t, c, "a")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	leading := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		a.run(ctx, func(lctx context.Context) {
			close(leading)
			<-lctx.Done()
		})
		close(ended)
	}()
	select {
	case <-leading:
	case <-ctx.Done():
		t.Fatal("a never led")
	}
	l, err := c.Leases("ns").Get(ctx, "l", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other := "c"
	l.Spec.HolderIdentity = &other
	l.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()}
	if _, err := c.Leases("ns").Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ended:
	case <-ctx.Done():
		t.Fatal("a kept leading after c took the lease")
	}
	if h, _ := holderOf(t, c); h != "c" {
		t.Fatalf("holder %q, want c (a must not release another's lease)", h)
	}
}

// Cancelling run while leading releases the lease.
func TestLeaseRunReleasesOnCancel(t *testing.T) {
	c := clientset.Wrap(fake.NewClientset(&coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "l", Namespace: "ns"}}))
	a := testElector(t, c, "a")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		a.run(ctx, func(lctx context.Context) { cancel(); <-lctx.Done() })
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if h, n := holderOf(t, c); h != "" || n != 1 {
		t.Fatalf("holder %q transitions %d after cancel, want none and 1", h, n)
	}
}
