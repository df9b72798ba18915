// Package kube is the agent's Kubernetes side: peers from Node objects, a
// ring bootstrapped exactly once per cluster through a ConfigMap, reclaim of
// deleted Nodes' address ranges by one Lease holder, the Node's
// NetworkUnavailable condition, and the CNI files on the host.
//
// Every agent names itself after its Node (WEFT_NAME from spec.nodeName), so
// a ring owner name and a Node name are the same thing.
package kube

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/internal/logx"
	"github.com/weftnet/weft/kube/client"
)

// DefaultNamespace holds weft's ConfigMap and Lease when the agent does not
// run in a pod (and so cannot read its own namespace).
const DefaultNamespace = "weft-system"

// Names of the objects weft keeps in its namespace. The RBAC Role in
// prog/kube/weft.yaml grants access to exactly these.
const (
	BootstrapConfigMap = "weft-ipam"
	ReclaimLease       = "weft-reclaim"
)

// Service-account files kubelet mounts into every pod.
const (
	serviceAccountDir   = "/var/run/secrets/kubernetes.io/serviceaccount"
	serviceAccountToken = serviceAccountDir + "/token"
	serviceAccountNS    = serviceAccountDir + "/namespace"
)

// Config is what the agent hands to New.
type Config struct {
	Client    Client
	NodeName  string // this agent's Node, also its peer name
	Namespace string // "" = the pod's namespace, else DefaultNamespace
	Logger    *slog.Logger

	// Lease timing of RunReclaimer; zero values mean the defaults below.
	// Tests shorten them.
	LeaseDuration time.Duration // default 15s
	RenewDeadline time.Duration // default 10s
	RetryPeriod   time.Duration // default 2s
	// ReclaimInterval is how often the lease holder compares ring owners
	// with Nodes even without a Node event (default 30s).
	ReclaimInterval time.Duration
}

// Cluster is one agent's handle on the cluster.
type Cluster struct {
	client    Client
	nodeName  string
	namespace string
	log       *slog.Logger

	leaseDuration   time.Duration
	renewDeadline   time.Duration
	retryPeriod     time.Duration
	reclaimInterval time.Duration

	keys keyCache // Nodes' signing keys, filled by WatchSigningKeys
}

// New checks cfg and fills in defaults.
func New(cfg Config) (*Cluster, error) {
	if cfg.Client == nil {
		return nil, errors.New("kube: Config.Client is nil")
	}
	if cfg.NodeName == "" {
		return nil, errors.New("kube: Config.NodeName is empty (set WEFT_NAME from spec.nodeName)")
	}
	if err := validPeerName(cfg.NodeName); err != nil {
		return nil, fmt.Errorf("kube: Config.NodeName: %w", err)
	}
	c := &Cluster{
		client:          cfg.Client,
		nodeName:        cfg.NodeName,
		namespace:       cfg.Namespace,
		log:             cfg.Logger,
		leaseDuration:   orDefault(cfg.LeaseDuration, 15*time.Second),
		renewDeadline:   orDefault(cfg.RenewDeadline, 10*time.Second),
		retryPeriod:     orDefault(cfg.RetryPeriod, 2*time.Second),
		reclaimInterval: orDefault(cfg.ReclaimInterval, 30*time.Second),
	}
	c.log = logx.OrDiscard(c.log)
	if c.namespace == "" {
		c.namespace = podNamespace()
	}
	if !(c.renewDeadline < c.leaseDuration && c.retryPeriod < c.renewDeadline) {
		return nil, fmt.Errorf("kube: lease timing must satisfy retry (%s) < renew deadline (%s) < lease duration (%s)",
			c.retryPeriod, c.renewDeadline, c.leaseDuration)
	}
	return c, nil
}

// Namespace is where the ConfigMap and Lease live.
func (c *Cluster) Namespace() string { return c.namespace }

// InCluster reports whether this process runs in a pod with a service
// account: the API server's address is in the environment and the token is
// mounted.
func InCluster() bool {
	if os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		return false
	}
	_, err := os.Stat(serviceAccountToken)
	return err == nil
}

// NewClient builds a client from a kubeconfig file, or from the in-cluster
// service account when kubeconfig is "".
func NewClient(kubeconfig string) (Client, error) {
	var (
		cfg *rest.Config
		err error
	)
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("kube: client config (kubeconfig %q): %w", kubeconfig, err)
	}
	cfg.UserAgent = "weft"
	cs, err := client.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kube: client: %w", err)
	}
	return cs, nil
}

// podNamespace is the namespace kubelet wrote into the pod, else the default.
func podNamespace() string {
	b, err := os.ReadFile(serviceAccountNS)
	if err != nil {
		return DefaultNamespace
	}
	if ns := strings.TrimSpace(string(b)); ns != "" {
		return ns
	}
	return DefaultNamespace
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
