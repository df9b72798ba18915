package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/kube/client/clientset"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
)

// recordingHandler keeps the latest view a PolicySource gave it.
type recordingHandler struct {
	mu       sync.Mutex
	pods     map[string]*corev1.Pod
	nss      map[string]map[string]string
	policies map[string]bool
	synced   bool
	// podsAtSync is how many pods the handler had when Synced came.
	podsAtSync int
}

func newRecordingHandler() *recordingHandler {
	return &recordingHandler{pods: map[string]*corev1.Pod{}, nss: map[string]map[string]string{}, policies: map[string]bool{}}
}

func (h *recordingHandler) PodChanged(p *corev1.Pod) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pods[p.Namespace+"/"+p.Name] = p
}
func (h *recordingHandler) PodDeleted(ns, name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.pods, ns+"/"+name)
}
func (h *recordingHandler) NamespaceChanged(ns *corev1.Namespace) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nss[ns.Name] = ns.Labels
}
func (h *recordingHandler) NamespaceDeleted(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.nss, name)
}
func (h *recordingHandler) PolicyChanged(np *networkingv1.NetworkPolicy) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.policies[np.Namespace+"/"+np.Name] = true
}
func (h *recordingHandler) PolicyDeleted(ns, name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.policies, ns+"/"+name)
}
func (h *recordingHandler) Synced() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.synced = true
	h.podsAtSync = len(h.pods)
}

func (h *recordingHandler) check(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		h.mu.Lock()
		done := ok()
		h.mu.Unlock()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition with a deadline
	}
}

func testPod(ns, name, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels,
			Annotations:   map[string]string{"big": "annotation"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{
			{Name: "web", Image: "nginx", Command: []string{"nginx"}, Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP}}},
			{Name: "noports", Image: "busybox"},
		}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.32.0.5", PodIPs: []corev1.PodIP{{IP: "10.32.0.5"}}},
	}
}

func runSource(t *testing.T, client kubernetes.Interface, h PolicyHandler) *PolicySource {
	t.Helper()
	s := NewPolicySource(clientset.Wrap(client), h, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return s
}

func TestPolicySourceFeedsHandler(t *testing.T) {
	client := fake.NewClientset(
		testPod("a", "p1", "n1", map[string]string{"app": "web"}),
		testPod("b", "p2", "n2", nil),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "a", Labels: map[string]string{"team": "x"}}},
		&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "deny"}},
	)
	h := newRecordingHandler()
	s := runSource(t, client, h)
	h.check(t, "sync", func() bool { return h.synced })
	if h.podsAtSync != 2 || len(h.nss) != 1 || !h.policies["a/deny"] {
		t.Fatalf("at sync: %d pods, namespaces %v, policies %v", h.podsAtSync, h.nss, h.policies)
	}
	if !s.Synced() {
		t.Fatal("Synced() false after the handler's Synced")
	}
	// The cache keeps what policy needs and drops the bulk.
	h.mu.Lock()
	p := h.pods["a/p1"]
	h.mu.Unlock()
	if p.Labels["app"] != "web" || p.Spec.NodeName != "n1" || len(p.Status.PodIPs) != 1 ||
		len(p.Spec.Containers) != 1 || p.Spec.Containers[0].Ports[0].Name != "http" {
		t.Errorf("trimmed pod lost what policy needs: %+v", p)
	}
	if p.Annotations != nil || p.ManagedFields != nil || p.Spec.Containers[0].Image != "" {
		t.Errorf("trimmed pod kept bulk: annotations %v, managed %v, image %q", p.Annotations, p.ManagedFields, p.Spec.Containers[0].Image)
	}

	ctx := context.Background()
	if err := client.NetworkingV1().NetworkPolicies("a").Delete(ctx, "deny", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Namespaces().Update(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "a", Labels: map[string]string{"team": "y"}}}, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := client.CoreV1().Pods("b").Delete(ctx, "p2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.check(t, "policy, namespace and pod changes", func() bool {
		return !h.policies["a/deny"] && h.nss["a"]["team"] == "y" && h.pods["b/p2"] == nil
	})
}

func TestPolicySourceWaitPod(t *testing.T) {
	client := fake.NewClientset()
	h := newRecordingHandler()
	s := NewPolicySource(clientset.Wrap(client), h, slog.New(slog.DiscardHandler))
	// Before Run has synced: not synced when the deadline comes.
	wctx, wcancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err := s.WaitPod(wctx, "a", "p", nil)
	wcancel()
	if !errors.Is(err, ErrNotSynced) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("before sync: %v, want ErrNotSynced", err)
	}
	// A waiter started before the sync gets the pod once synced.
	if _, err := client.CoreV1().Pods("a").Create(context.Background(), testPod("a", "early", "n1", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	early := make(chan error, 1)
	go func() {
		wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer wcancel()
		_, err := s.WaitPod(wctx, "a", "early", nil)
		early <- err
	}()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	h.check(t, "sync", func() bool { return h.synced })
	if err := <-early; err != nil {
		t.Fatalf("a waiter from before the sync: %v", err)
	}

	// Unknown until the deadline.
	wctx, wcancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err = s.WaitPod(wctx, "a", "missing", nil)
	wcancel()
	if !errors.Is(err, ErrPodUnknown) {
		t.Fatalf("missing pod: %v, want ErrPodUnknown", err)
	}

	// A waiter sees the pod once it is created and scheduled here.
	got := make(chan error, 1)
	go func() {
		wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer wcancel()
		p, err := s.WaitPod(wctx, "a", "late", func(p *corev1.Pod) bool { return p.Spec.NodeName == "n1" })
		if err == nil && p.Labels["v"] != "2" {
			err = fmt.Errorf("got labels %v, want the scheduled version", p.Labels)
		}
		got <- err
	}()
	if _, err := client.CoreV1().Pods("a").Create(context.Background(), testPod("a", "late", "", map[string]string{"v": "1"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.check(t, "unscheduled pod in the cache", func() bool { return h.pods["a/late"] != nil })
	select {
	case err := <-got:
		t.Fatalf("WaitPod returned before the pod was scheduled here: %v", err)
	default:
	}
	if _, err := client.CoreV1().Pods("a").Update(context.Background(), testPod("a", "late", "n1", map[string]string{"v": "2"}), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitPod did not see the scheduled pod")
	}
}
