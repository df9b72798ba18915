package kubecluster

import (
	"context"
	"fmt"
	"net"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/internal/netnstest"
)

// Clientset is an admin client of the cluster's apiserver for what kubectl
// is too slow for (the policy bench creates a thousand objects). It dials
// from inside the Outside namespace, like kubectl, so nothing is reached
// from the machine's own namespace.
func (c *Cluster) Clientset(qps float32, burst int) (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	out := c.Bed.Outside
	cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := netnstest.Do(out, func() error {
			var d net.Dialer
			var err error
			conn, err = d.DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
	cfg.QPS, cfg.Burst = qps, burst
	return kubernetes.NewForConfig(cfg)
}

// PodNetns is the path of the network namespace of the pod with address ip
// on the node called node ("/proc/PID/ns/net" of one of its processes).
func (c *Cluster) PodNetns(node, ip string) (string, error) {
	n := c.Node(node)
	if n == nil {
		return "", fmt.Errorf("no node %q", node)
	}
	return podNetnsPath(n, ip)
}
