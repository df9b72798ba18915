package kube

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// seedsKey holds the seed list in the bootstrap ConfigMap, in the same
// NAME,NAME form as --ipalloc-init seed=... .
const seedsKey = "seeds"

// ErrBadSeeds is returned when the stored seed list cannot be used. The
// ConfigMap is left as it is: replacing it would create a second ring.
var ErrBadSeeds = errors.New("kube: bad seed list in ConfigMap " + BootstrapConfigMap)

// BootstrapRing makes sure the cluster's ring is created exactly once. The
// API server is the arbiter: creating the ConfigMap weft-ipam either succeeds
// for exactly one agent (which becomes the only seed) or fails with
// AlreadyExists for everyone else, who read and adopt the stored seeds. All
// agents then start IPAM in seed mode with the same seed list, so they build
// the same initial ring and never a second one.
//
// Transient API errors are retried until ctx is done. A ConfigMap with an
// unusable seed list is an error (ErrBadSeeds), never overwritten.
func (c *Cluster) BootstrapRing(ctx context.Context, self string) ([]string, error) {
	if err := validPeerName(self); err != nil {
		return nil, fmt.Errorf("kube: bootstrap: own name: %w", err)
	}
	cms := c.client.ConfigMaps(c.namespace)
	want := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Name:        BootstrapConfigMap,
			Namespace:   c.namespace,
			Labels:      map[string]string{"app.kubernetes.io/name": "weft"},
			Annotations: map[string]string{"weft/created-by": self},
		},
		Data: map[string]string{seedsKey: FormatSeeds([]string{self})},
	}
	var seeds []string
	backoff := wait.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: 1 << 30, Cap: 10 * time.Second}
	err := wait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
		_, err := cms.Create(ctx, want, metav1.CreateOptions{})
		if err == nil {
			seeds = []string{self}
			c.log.Info("created the cluster's ring", "configmap", c.namespace+"/"+BootstrapConfigMap, "seeds", seeds)
			return true, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			c.log.Warn("bootstrap: create ConfigMap failed, retrying", "err", err)
			return false, nil
		}
		cm, err := cms.Get(ctx, BootstrapConfigMap, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil // deleted between our Create and Get: try creating again
		}
		if err != nil {
			c.log.Warn("bootstrap: get ConfigMap failed, retrying", "err", err)
			return false, nil
		}
		seeds, err = ParseSeeds(cm.Data[seedsKey])
		if err != nil {
			return false, fmt.Errorf("%w: %w", ErrBadSeeds, err)
		}
		c.log.Info("adopting the cluster's ring", "configmap", c.namespace+"/"+BootstrapConfigMap, "seeds", seeds)
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("kube: bootstrap ring: %w", err)
	}
	return seeds, nil
}

// FormatSeeds is the stored form of a seed list.
func FormatSeeds(seeds []string) string { return strings.Join(seeds, ",") }

// ParseSeeds decodes a stored seed list: one or more distinct peer names
// separated by commas. It never panics and names what was wrong.
func ParseSeeds(s string) ([]string, error) {
	if s == "" {
		return nil, errors.New("empty seed list")
	}
	parts := strings.Split(s, ",")
	if len(parts) > maxSeeds {
		return nil, fmt.Errorf("%d seeds, at most %d", len(parts), maxSeeds)
	}
	seen := make(map[string]bool, len(parts))
	for i, p := range parts {
		if err := validPeerName(p); err != nil {
			return nil, fmt.Errorf("seed %d: %w", i+1, err)
		}
		if seen[p] {
			return nil, fmt.Errorf("seed %d: %q listed twice", i+1, p)
		}
		seen[p] = true
	}
	return parts, nil
}

// maxSeeds bounds a seed list (a ring split among more seeds than nodes in
// any real cluster is a sign of a corrupt value).
const maxSeeds = 1024

// validPeerName applies the agent's rule for peer names (agent.Config): at
// most 128 characters, no whitespace or control characters, no '/', ',' or '='.
func validPeerName(n string) error {
	if n == "" {
		return errors.New("empty peer name")
	}
	if len(n) > 128 {
		return fmt.Errorf("peer name of %d bytes, at most 128", len(n))
	}
	for _, r := range n {
		if r <= ' ' || r == 0x7f || r == '/' || r == ',' || r == '=' {
			return fmt.Errorf("peer name %q contains %q", n, r)
		}
	}
	return nil
}
