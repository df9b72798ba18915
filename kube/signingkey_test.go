package kube

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"testing"
	"time"

	kclient "github.com/weftnet/weft/kube/client"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"

	"github.com/weftnet/weft/identity"
)

func newKey(t *testing.T) ed25519.PublicKey {
	t.Helper()
	s, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return s.Public()
}

// testSigningKeys runs inside TestAgainstAPIServer with the ServiceAccount's
// client: each agent publishes its key on its own Node, and a peer's
// announced key is checked against its Node.
func testSigningKeys(t *testing.T, ctx context.Context, agent Client, nodes *nodeMaker, newCluster func(*testing.T, string) *Cluster) {
	nodes.create("sk-a", "198.18.4.1")
	nodes.create("sk-b", "198.18.4.2")
	nodes.create("sk-old", "198.18.4.3") // no agent has published here
	keyA, keyB, keyA2, mallory := newKey(t), newKey(t), newKey(t), newKey(t)

	a := newCluster(t, "sk-a")
	if err := a.PublishSigningKey(ctx, keyA); err != nil {
		t.Fatalf("publish on own Node: %v", err)
	}
	if err := newCluster(t, "sk-b").PublishSigningKey(ctx, keyB); err != nil {
		t.Fatal(err)
	}
	n, err := nodes.c.CoreV1().Nodes().Get(ctx, "sk-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := n.Annotations[SigningKeyAnnotation]; got != base64.StdEncoding.EncodeToString(keyA) {
		t.Fatalf("annotation on sk-a = %q", got)
	}
	if len(n.Status.Addresses) != 2 {
		t.Fatalf("publishing the key changed the Node's status: %+v", n.Status.Addresses)
	}
	// Least privilege: publishing needs no write access to Nodes themselves.
	spec := []byte(`{"spec":{"unschedulable":true}}`)
	if _, err := agent.Nodes().Patch(ctx, "sk-b", types.MergePatchType, spec, metav1.PatchOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("SA may patch a Node's spec (err=%v)", err)
	}
	// A missing Node: an error naming it.
	if err := newCluster(t, "sk-missing").PublishSigningKey(ctx, keyA); !apierrors.IsNotFound(err) {
		t.Errorf("publish on a missing Node: %v, want NotFound", err)
	}

	// An observer agent with the Nodes as its pins' authority.
	obs := newCluster(t, "sk-x")
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- obs.WatchSigningKeys(wctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("WatchSigningKeys: %v", err)
		}
	}()
	sees := func(node string, key ed25519.PublicKey) func() bool {
		return func() bool { k, ok, err := obs.SigningKey(node); return err == nil && ok && k.Equal(key) }
	}
	waitFor(t, 10*time.Second, "observer sees sk-b's key", sees("sk-b", keyB))
	pins := identity.NewPins()
	pins.SetAuthority(obs.SigningKey)

	// A mismatch is refused on first contact, and nothing is pinned.
	if err := pins.Check("sk-b", mallory); !errors.Is(err, identity.ErrKeyMismatch) {
		t.Fatalf("key not on the Node, first contact: %v, want ErrKeyMismatch", err)
	}
	if _, ok := pins.Key("sk-b"); ok {
		t.Fatal("a refused key was pinned")
	}
	// The Node's key is pinned.
	if err := pins.Check("sk-b", keyB); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "observer sees sk-a's key", sees("sk-a", keyA))
	if err := pins.Check("sk-a", keyA); err != nil {
		t.Fatal(err)
	}
	// sk-a is re-provisioned with a new key: its Node is re-pinned from the
	// API server, and the old key is now refused.
	if err := a.PublishSigningKey(ctx, keyA2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "observer sees sk-a's new key", sees("sk-a", keyA2))
	if err := pins.Check("sk-a", keyA2); err != nil {
		t.Fatalf("re-provisioned Node: %v", err)
	}
	if k, _ := pins.Key("sk-a"); !k.Equal(keyA2) {
		t.Fatal("not re-pinned")
	}
	if err := pins.Check("sk-a", keyA); !errors.Is(err, identity.ErrKeyMismatch) {
		t.Fatalf("old key after re-provisioning: %v", err)
	}
	// A Node without the annotation (older agent) and a name that is no
	// Node: trust on first use.
	if _, ok, err := obs.SigningKey("sk-old"); ok || err != nil {
		t.Fatalf("Node without annotation: ok=%v err=%v", ok, err)
	}
	if err := pins.Check("sk-old", mallory); err != nil {
		t.Fatal(err)
	}
	if err := pins.Check("sk-old", keyB); !errors.Is(err, identity.ErrKeyMismatch) {
		t.Fatalf("TOFU pin of sk-old not enforced: %v", err)
	}
	// A malformed annotation is an error (the pins then trust on first use).
	bad := []byte(`{"metadata":{"annotations":{"` + SigningKeyAnnotation + `":"not-a-key"}}}`)
	if _, err := nodes.c.CoreV1().Nodes().Patch(ctx, "sk-old", types.MergePatchType, bad, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "observer sees the malformed key", func() bool {
		_, _, err := obs.SigningKey("sk-old")
		return errors.Is(err, ErrBadSigningKey)
	})
}

// TestSigningKeyAuthorityDown: with no API server to fill the Node cache,
// the authority reports an error at once (it never blocks the mesh) and the
// pins fall back to trust on first use.
func TestSigningKeyAuthorityDown(t *testing.T) {
	client, err := kclient.NewForConfig(&rest.Config{Host: "http://127.0.0.1:1", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Client: client, NodeName: "self", Namespace: DefaultNamespace, Logger: testLogger(t, "self")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.WatchSigningKeys(ctx) }()

	if _, _, err := c.SigningKey("peer"); !errors.Is(err, ErrNoNodeCache) {
		t.Fatalf("authority down: %v, want ErrNoNodeCache", err)
	}
	pins := identity.NewPins()
	pins.SetAuthority(c.SigningKey)
	k1, k2 := newKey(t), newKey(t)
	if err := pins.Check("peer", k1); err != nil {
		t.Fatalf("authority down, first contact: %v (want trust on first use)", err)
	}
	if err := pins.Check("peer", k2); !errors.Is(err, identity.ErrKeyMismatch) {
		t.Fatalf("authority down, pinned name with another key: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("WatchSigningKeys with no API server returned nil, want the sync error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WatchSigningKeys did not return after cancel")
	}
	if err := c.PublishSigningKey(context.Background(), k1); err == nil {
		t.Fatal("publish with no API server succeeded")
	}
}

func TestParseSigningKey(t *testing.T) {
	k := newKey(t)
	got, err := ParseSigningKey(base64.StdEncoding.EncodeToString(k))
	if err != nil || !got.Equal(k) {
		t.Fatalf("round trip: %v %v", got, err)
	}
	for _, bad := range []string{"", "not-a-key", base64.StdEncoding.EncodeToString(k[:31]), base64.StdEncoding.EncodeToString(append(k, 0)), " " + base64.StdEncoding.EncodeToString(k)} {
		if _, err := ParseSigningKey(bad); !errors.Is(err, ErrBadSigningKey) {
			t.Errorf("ParseSigningKey(%q) = %v, want ErrBadSigningKey", bad, err)
		}
	}
}

func FuzzParseSigningKey(f *testing.F) {
	f.Add("")
	f.Add("not-a-key")
	f.Add(base64.StdEncoding.EncodeToString(make([]byte, ed25519.PublicKeySize)))
	f.Add(base64.StdEncoding.EncodeToString(make([]byte, ed25519.PublicKeySize+1)))
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseSigningKey(s)
		if err != nil {
			return
		}
		if len(k) != ed25519.PublicKeySize || base64.StdEncoding.EncodeToString(k) != s {
			t.Fatalf("accepted %q as %x", s, k)
		}
	})
}
