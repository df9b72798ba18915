// Package clientset adapts a client-go clientset (kubernetes.Interface),
// real or fake, to client.Client. It is for tests and tools: importing it
// links client-go's whole clientset, which the weft binary avoids (see
// client.Client).
package clientset

import (
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/kube/client"
)

// Wrap returns cs as a client.Client.
func Wrap(cs kubernetes.Interface) client.Client { return wrapped{cs} }

type wrapped struct{ cs kubernetes.Interface }

// IsWatchListSemanticsUnSupported passes on what the clientset says (a
// fake one cannot stream watch lists), for informers built on the Client.
func (w wrapped) IsWatchListSemanticsUnSupported() bool {
	c, ok := w.cs.(interface{ IsWatchListSemanticsUnSupported() bool })
	return ok && c.IsWatchListSemanticsUnSupported()
}

func (w wrapped) Nodes() client.Resource[*corev1.Node, *corev1.NodeList] {
	return w.cs.CoreV1().Nodes()
}

func (w wrapped) ConfigMaps(ns string) client.Resource[*corev1.ConfigMap, *corev1.ConfigMapList] {
	return w.cs.CoreV1().ConfigMaps(ns)
}

func (w wrapped) Pods(ns string) client.Resource[*corev1.Pod, *corev1.PodList] {
	return w.cs.CoreV1().Pods(ns)
}

func (w wrapped) Namespaces() client.Resource[*corev1.Namespace, *corev1.NamespaceList] {
	return w.cs.CoreV1().Namespaces()
}

func (w wrapped) NetworkPolicies(ns string) client.Resource[*networkingv1.NetworkPolicy, *networkingv1.NetworkPolicyList] {
	return w.cs.NetworkingV1().NetworkPolicies(ns)
}

func (w wrapped) Events(ns string) client.Resource[*eventsv1.Event, *eventsv1.EventList] {
	return w.cs.EventsV1().Events(ns)
}

func (w wrapped) Leases(ns string) client.Resource[*coordinationv1.Lease, *coordinationv1.LeaseList] {
	return w.cs.CoordinationV1().Leases(ns)
}
