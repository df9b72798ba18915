package kube

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
)

// SigningKeyAnnotation on a Node holds the public half of the signing key of
// the weft agent on it (standard base64 of the 32-byte Ed25519 key). Every
// agent writes its own; peers check announced keys against it.
const SigningKeyAnnotation = "weft/signing-key"

// Errors of the signing-key authority.
var (
	// ErrNoNodeCache: the Node cache has not been filled (yet), e.g. the API
	// server is unreachable; callers fall back to trust on first use.
	ErrNoNodeCache = errors.New("kube: Node cache not synced")
	// ErrBadSigningKey: a Node's annotation is not a signing key.
	ErrBadSigningKey = errors.New("kube: malformed signing-key annotation")
)

// keyCache is the Node lister WatchSigningKeys fills; SigningKey reads it.
type keyCache struct {
	lister atomic.Pointer[corelisters.NodeLister]
}

// PublishSigningKey writes pub into this Node's SigningKeyAnnotation,
// replacing what a former installation on this Node left there.
//
// The patch goes through the nodes/status subresource, which the agent may
// already patch (NetworkUnavailable) and which keeps metadata changes: so
// publishing needs no write access to Nodes' spec (taints, unschedulable).
func (c *Cluster) PublishSigningKey(ctx context.Context, pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("kube: signing key of %d bytes", len(pub))
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{
			"annotations": map[string]string{SigningKeyAnnotation: base64.StdEncoding.EncodeToString(pub)},
		},
	})
	if err != nil {
		return fmt.Errorf("kube: encode signing-key patch: %w", err)
	}
	n, err := c.client.Nodes().Patch(ctx, c.nodeName, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		return fmt.Errorf("kube: publish signing key on Node %s: %w", c.nodeName, err)
	}
	// Guard against an API server that drops metadata on status patches:
	// a silently missing annotation would leave peers on trust on first use.
	if got := n.Annotations[SigningKeyAnnotation]; got != base64.StdEncoding.EncodeToString(pub) {
		return fmt.Errorf("kube: publish signing key on Node %s: the API server did not keep the annotation", c.nodeName)
	}
	return nil
}

// WatchSigningKeys keeps a cache of Nodes for SigningKey until ctx is done.
// It returns nil then, or an error if the cache could never be filled.
func (c *Cluster) WatchSigningKeys(ctx context.Context) error {
	lister, _, err := c.watchNodes(ctx)
	if err != nil {
		return err
	}
	c.keys.lister.Store(&lister)
	<-ctx.Done()
	c.keys.lister.Store(nil)
	return nil
}

// SigningKey is the key published on Node name, for identity.Pins'
// authority. ok is false when there is no such Node or it has no annotation
// (an agent not started yet, or an older one): the caller then trusts on
// first use. It reads the watch cache only, never the network, because the
// mesh asks on every gossip message about a peer: an unreachable API server
// must not stall gossip. A Node is registered well before the agent pod on
// it starts, so a peer's Node is in the cache by the time it gossips.
func (c *Cluster) SigningKey(name string) (ed25519.PublicKey, bool, error) {
	lp := c.keys.lister.Load()
	if lp == nil {
		return nil, false, ErrNoNodeCache
	}
	n, err := (*lp).Get(name)
	if apierrors.IsNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("kube: Node %s from cache: %w", name, err)
	}
	v, ok := n.Annotations[SigningKeyAnnotation]
	if !ok {
		return nil, false, nil
	}
	key, err := ParseSigningKey(v)
	if err != nil {
		return nil, false, fmt.Errorf("Node %s: %w", name, err)
	}
	return key, true, nil
}

// ParseSigningKey decodes a SigningKeyAnnotation value.
func ParseSigningKey(v string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.Strict().DecodeString(v)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: want base64 of %d bytes", ErrBadSigningKey, ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}
