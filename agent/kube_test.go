package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/weftnet/weft/kube/client/clientset"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/weftnet/weft/identity"
	"github.com/weftnet/weft/ipam"
	"github.com/weftnet/weft/kube"
)

// downAPIServer is a cluster handle whose every API call fails, as while
// the API server is down.
func downAPIServer(t *testing.T, node string) *kubeSide {
	t.Helper()
	client := fake.NewClientset()
	client.PrependReactor("*", "*", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	c, err := kube.New(kube.Config{Client: clientset.Wrap(client), NodeName: node, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return &kubeSide{cluster: c}
}

// An agent restarted while the API server is down comes up from the ring it
// saved (issue 16 item 4); before, BootstrapRing retried until the deadline.
func TestKubeRestartWithoutAPIServerUsesSavedRing(t *testing.T) {
	cfg := validConfig()
	cfg.StateDir = t.TempDir()
	seeds := []string{"host0", cfg.Name}
	signer, err := identity.LoadOrCreate(cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ipam.New(ipam.Config{Signer: signer, Name: cfg.Name, Range: netip.MustParsePrefix("10.40.0.0/24"),
		Init: ipam.Init{Mode: ipam.ModeSeed, Seeds: seeds}, StateDir: cfg.StateDir,
		Transport: nopTransport{}, Alive: func(string) bool { return true }, Peers: func() []string { return seeds }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := p.Allocate(ctx, "c1", "eth0", ""); err != nil {
		t.Fatal(err) // persists the ring
	}
	a := &Agent{cfg: cfg, log: slog.New(slog.DiscardHandler), kube: downAPIServer(t, cfg.Name)}
	start := time.Now()
	init, err := a.ipamInit(ctx)
	if err != nil {
		t.Fatalf("ipamInit with a saved ring and no API server: %v (after %v)", err, time.Since(start))
	}
	if init.Mode != ipam.ModeSeed || !slices.Equal(init.Seeds, seeds) {
		t.Fatalf("init %+v, want the saved seeds %v", init, seeds)
	}
}

// Without a saved ring the bootstrap still goes through the API server and
// waits for it.
func TestKubeFirstStartNeedsAPIServer(t *testing.T) {
	cfg := validConfig()
	cfg.StateDir = t.TempDir()
	a := &Agent{cfg: cfg, log: slog.New(slog.DiscardHandler), kube: downAPIServer(t, cfg.Name)}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if init, err := a.ipamInit(ctx); err == nil {
		t.Fatalf("bootstrapped without an API server or saved ring: %+v", init)
	}
}

type nopTransport struct{}

func (nopTransport) Broadcast([]byte)            {}
func (nopTransport) SendTo(string, []byte) error { return nil }

// The agent publishes its own signing key on its Node; with the API server
// down the first attempt gives up at once (retried in the background) rather
// than holding up the join.
func TestKubePublishesSigningKey(t *testing.T) {
	cfg := validConfig()
	cfg.StateDir = t.TempDir()
	signer, err := identity.LoadOrCreate(cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: cfg.Name}})
	c, err := kube.New(kube.Config{Client: clientset.Wrap(client), NodeName: cfg.Name, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: cfg, log: slog.New(slog.DiscardHandler), signer: signer}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !(&kubeSide{cluster: c}).publishSigningKey(ctx, a, true) {
		t.Fatal("publish failed")
	}
	n, err := client.CoreV1().Nodes().Get(ctx, cfg.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := kube.ParseSigningKey(n.Annotations[kube.SigningKeyAnnotation])
	if err != nil || !got.Equal(signer.Public()) {
		t.Fatalf("Node annotation %q (%v), want this agent's key", n.Annotations[kube.SigningKeyAnnotation], err)
	}

	if downAPIServer(t, cfg.Name).publishSigningKey(ctx, a, true) {
		t.Fatal("publish with the API server down reported success")
	}
}
