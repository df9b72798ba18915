package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/weftnet/weft/internal/logx"
)

// Errors of PolicySource.WaitPod, for the CNI ADD path to answer "try again".
var (
	// ErrNotSynced: the caches have not had their first full list yet, so
	// nothing is known about any pod or policy.
	ErrNotSynced = errors.New("kube: pods, namespaces and network policies not synced yet")
	// ErrPodUnknown: the pod was not in the cache (as wanted) before the
	// deadline.
	ErrPodUnknown = errors.New("kube: pod not known to the cache")
)

// PolicyHandler receives what NetworkPolicy enforcement needs: every Pod
// of the cluster (peers' addresses come from every node), every Namespace
// (namespace selectors) and every NetworkPolicy. Calls are serial per kind
// of object; the objects are the cache's own (trimmed, see trimObject) and
// must not be modified.
type PolicyHandler interface {
	PodChanged(p *corev1.Pod)
	PodDeleted(namespace, name string)
	NamespaceChanged(ns *corev1.Namespace)
	NamespaceDeleted(name string)
	PolicyChanged(np *networkingv1.NetworkPolicy)
	PolicyDeleted(namespace, name string)
	// Synced is called once, when the handler has had the initial list of
	// all three kinds: from then on its view is the whole cluster's.
	Synced()
}

// PolicySource runs the informers on Pods, Namespaces and NetworkPolicies
// and feeds a PolicyHandler. It also answers the CNI ADD path's question
// "what are this pod's labels" from the same cache (WaitPod).
type PolicySource struct {
	client  Client
	handler PolicyHandler
	log     *slog.Logger

	synced atomic.Bool
	pods   atomic.Pointer[corelisters.PodLister]

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every pod event and at sync
}

// NewPolicySource returns a source that feeds h once Run starts it.
func NewPolicySource(client Client, h PolicyHandler, log *slog.Logger) *PolicySource {
	return &PolicySource{client: client, handler: h, log: logx.OrDiscard(log), changed: make(chan struct{})}
}

// Synced reports whether the handler has had the initial lists.
func (s *PolicySource) Synced() bool { return s.synced.Load() }

// poke wakes every WaitPod.
func (s *PolicySource) poke() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

func (s *PolicySource) waitChan() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Run starts the informers and blocks until ctx is done. It returns an
// error only if the caches could not be set up.
func (s *PolicySource) Run(ctx context.Context) error {
	podInf := newInformer(s.client, s.client.Pods(""), &corev1.Pod{})
	nsInf := newInformer(s.client, s.client.Namespaces(), &corev1.Namespace{})
	npInf := newInformer(s.client, s.client.NetworkPolicies(""), &networkingv1.NetworkPolicy{})
	for _, inf := range []cache.SharedIndexInformer{podInf, nsInf, npInf} {
		if err := inf.SetTransform(trimObject); err != nil {
			return fmt.Errorf("kube: informer transform: %w", err)
		}
	}

	podReg, err := podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.podChanged(obj) },
		UpdateFunc: func(_, obj any) { s.podChanged(obj) },
		DeleteFunc: func(obj any) {
			if ns, name, ok := deletedKey(obj); ok {
				s.handler.PodDeleted(ns, name)
			}
			s.poke()
		},
	})
	if err != nil {
		return fmt.Errorf("kube: Pod event handler: %w", err)
	}
	nsReg, err := nsInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.namespaceChanged(obj) },
		UpdateFunc: func(_, obj any) { s.namespaceChanged(obj) },
		DeleteFunc: func(obj any) {
			if _, name, ok := deletedKey(obj); ok {
				s.handler.NamespaceDeleted(name)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("kube: Namespace event handler: %w", err)
	}
	npReg, err := npInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.policyChanged(obj) },
		UpdateFunc: func(_, obj any) { s.policyChanged(obj) },
		DeleteFunc: func(obj any) {
			if ns, name, ok := deletedKey(obj); ok {
				s.handler.PolicyDeleted(ns, name)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("kube: NetworkPolicy event handler: %w", err)
	}
	lister := corelisters.NewPodLister(podInf.GetIndexer())
	s.pods.Store(&lister)
	var run informers
	run.start(ctx, podInf, nsInf, npInf)
	defer run.wait()
	// The registrations' HasSynced, not the informers': they say the
	// handler itself has had every object of the initial list.
	if !cache.WaitForCacheSync(ctx.Done(), podReg.HasSynced, nsReg.HasSynced, npReg.HasSynced) {
		return nil // ctx done first
	}
	s.log.Info("pods, namespaces and network policies synced")
	// The handler first: whoever sees Synced() true finds it synced too.
	s.handler.Synced()
	s.synced.Store(true)
	s.poke()
	<-ctx.Done()
	return nil
}

func (s *PolicySource) podChanged(obj any) {
	if p, ok := obj.(*corev1.Pod); ok {
		s.handler.PodChanged(p)
	}
	s.poke()
}

func (s *PolicySource) namespaceChanged(obj any) {
	if ns, ok := obj.(*corev1.Namespace); ok {
		s.handler.NamespaceChanged(ns)
	}
}

func (s *PolicySource) policyChanged(obj any) {
	if np, ok := obj.(*networkingv1.NetworkPolicy); ok {
		s.handler.PolicyChanged(np)
	}
}

// deletedKey is the namespace and name of a deleted object, also when the
// informer only knows its final state was missed.
func deletedKey(obj any) (namespace, name string, ok bool) {
	if tomb, isTomb := obj.(cache.DeletedFinalStateUnknown); isTomb {
		ns, n, err := cache.SplitMetaNamespaceKey(tomb.Key)
		return ns, n, err == nil
	}
	key, err := cache.MetaNamespaceKeyFunc(obj)
	if err != nil {
		return "", "", false
	}
	ns, n, err := cache.SplitMetaNamespaceKey(key)
	return ns, n, err == nil
}

// WaitPod returns the pod namespace/name from the cache once ready(pod) holds
// (nil ready: as soon as it is there), waiting for the first full sync and
// then for cache events until ctx is done. When ctx ends first it fails with
// ErrNotSynced or ErrPodUnknown, wrapping ctx's error.
func (s *PolicySource) WaitPod(ctx context.Context, namespace, name string, ready func(*corev1.Pod) bool) (*corev1.Pod, error) {
	for {
		wake := s.waitChan() // before the check: a sync in between wakes us
		if s.Synced() {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrNotSynced, context.Cause(ctx))
		case <-wake:
		}
	}
	lister := *s.pods.Load() // stored before the informers start
	for {
		wake := s.waitChan() // before the lookup: an event in between wakes us
		p, err := lister.Pods(namespace).Get(name)
		switch {
		case err == nil:
			if ready == nil || ready(p) {
				return p, nil
			}
		case !apierrors.IsNotFound(err):
			return nil, fmt.Errorf("kube: pod %s/%s from the cache: %w", namespace, name, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %s/%s: %w", ErrPodUnknown, namespace, name, context.Cause(ctx))
		case <-wake:
		}
	}
}

// Pod returns the pod namespace/name from the cache, if there.
func (s *PolicySource) Pod(namespace, name string) (*corev1.Pod, bool) {
	l := s.pods.Load()
	if l == nil {
		return nil, false
	}
	p, err := (*l).Pods(namespace).Get(name)
	return p, err == nil
}

// trimObject keeps of each cached object only what policy enforcement
// reads: in a large cluster the cache holds every pod, and managed fields,
// annotations and most of the spec are the bulk of a pod.
func trimObject(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return trimPod(o), nil
	case *corev1.Namespace:
		o.ManagedFields, o.Annotations = nil, nil
		return o, nil
	case *networkingv1.NetworkPolicy:
		o.ManagedFields, o.Annotations = nil, nil
		return o, nil
	}
	return obj, nil
}

func trimPod(p *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{
		TypeMeta: p.TypeMeta,
		Spec: corev1.PodSpec{
			NodeName:    p.Spec.NodeName,
			HostNetwork: p.Spec.HostNetwork,
		},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs},
	}
	out.Name, out.Namespace, out.UID = p.Name, p.Namespace, p.UID
	out.ResourceVersion, out.Labels, out.DeletionTimestamp = p.ResourceVersion, p.Labels, p.DeletionTimestamp
	// Only containers with ports matter: named ports in policies.
	keep := func(cs []corev1.Container) []corev1.Container {
		var kept []corev1.Container
		for _, c := range cs {
			if len(c.Ports) > 0 {
				kept = append(kept, corev1.Container{Name: c.Name, Ports: c.Ports})
			}
		}
		return kept
	}
	out.Spec.Containers = keep(p.Spec.Containers)
	out.Spec.InitContainers = keep(p.Spec.InitContainers) // sidecars can have named ports
	return out
}
