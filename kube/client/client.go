// Package client is the part of the Kubernetes API that weft uses, over
// REST clients of four API groups (see Client).
package client

import (
	"context"
	"fmt"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/gentype"
	"k8s.io/client-go/rest"
)

// Client is the part of the Kubernetes API that weft uses: a few resources
// of four API groups. It is not client-go's kubernetes.Interface on
// purpose. That clientset links the typed client of every API group and,
// at start, registers every group's types in its scheme: that alone made
// the weft binary 55 MB instead of 25 MB and cost every agent, in
// Kubernetes or not, about 16 MB of resident memory (binary pages touched
// at start and kept mapped). NewClient builds a Client over client-go's
// generic typed client (gentype) with a scheme of these four groups only.
//
// client-go's typed clients, real or fake, have exactly these methods, so
// tests adapt a fake clientset with package kube/client/clientset.
type Client interface {
	Nodes() Resource[*corev1.Node, *corev1.NodeList]
	ConfigMaps(namespace string) Resource[*corev1.ConfigMap, *corev1.ConfigMapList]
	Pods(namespace string) Resource[*corev1.Pod, *corev1.PodList]
	Namespaces() Resource[*corev1.Namespace, *corev1.NamespaceList]
	NetworkPolicies(namespace string) Resource[*networkingv1.NetworkPolicy, *networkingv1.NetworkPolicyList]
	Events(namespace string) Resource[*eventsv1.Event, *eventsv1.EventList]
	Leases(namespace string) Resource[*coordinationv1.Lease, *coordinationv1.LeaseList]
}

// Resource is one kind of object of the API, namespaced or not: the
// methods client-go's typed clients share (gentype.ClientWithList).
type Resource[T, L runtime.Object] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	List(ctx context.Context, opts metav1.ListOptions) (L, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error)
	Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (T, error)
}

// apiScheme knows the types of the groups Client serves, and nothing else.
var (
	apiScheme      = runtime.NewScheme()
	codecs         = serializer.NewCodecFactory(apiScheme)
	parameterCodec = runtime.NewParameterCodec(apiScheme)
)

func init() {
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, networkingv1.AddToScheme, eventsv1.AddToScheme, coordinationv1.AddToScheme,
	} {
		if err := add(apiScheme); err != nil {
			panic(fmt.Sprintf("kube client: scheme: %v", err)) // generated code: cannot fail
		}
	}
	// Options (ListOptions, ...) of every version, as client-go's scheme has.
	metav1.AddToGroupVersion(apiScheme, schema.GroupVersion{Version: "v1"})
}

// restClient is the REST client of one API group version, set up as
// client-go's generated clients set theirs up.
func restClient(cfg *rest.Config, gv schema.GroupVersion, apiPath string) (*rest.RESTClient, error) {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &gv
	c.APIPath = apiPath
	c.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(apiScheme, codecs).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kube client: REST client for %s: %w", gv, err)
	}
	return rc, nil
}

// restGroups is Client over REST clients of the four groups.
type restGroups struct {
	core, networking, events, coordination *rest.RESTClient
}

// NewForConfig builds a Client from a REST configuration.
func NewForConfig(cfg *rest.Config) (Client, error) {
	var g restGroups
	var err error
	if g.core, err = restClient(cfg, corev1.SchemeGroupVersion, "/api"); err != nil {
		return nil, err
	}
	if g.networking, err = restClient(cfg, networkingv1.SchemeGroupVersion, "/apis"); err != nil {
		return nil, err
	}
	if g.events, err = restClient(cfg, eventsv1.SchemeGroupVersion, "/apis"); err != nil {
		return nil, err
	}
	if g.coordination, err = restClient(cfg, coordinationv1.SchemeGroupVersion, "/apis"); err != nil {
		return nil, err
	}
	return &g, nil
}

func resource[T interface {
	runtime.Object
	metav1.Object
}, L runtime.Object](rc *rest.RESTClient, name, namespace string, newObj func() T, newList func() L) Resource[T, L] {
	return gentype.NewClientWithList(name, rc, parameterCodec, namespace, newObj, newList, gentype.PrefersProtobuf[T]())
}

func (g *restGroups) Nodes() Resource[*corev1.Node, *corev1.NodeList] {
	return resource(g.core, "nodes", "", func() *corev1.Node { return &corev1.Node{} }, func() *corev1.NodeList { return &corev1.NodeList{} })
}

func (g *restGroups) ConfigMaps(ns string) Resource[*corev1.ConfigMap, *corev1.ConfigMapList] {
	return resource(g.core, "configmaps", ns, func() *corev1.ConfigMap { return &corev1.ConfigMap{} }, func() *corev1.ConfigMapList { return &corev1.ConfigMapList{} })
}

func (g *restGroups) Pods(ns string) Resource[*corev1.Pod, *corev1.PodList] {
	return resource(g.core, "pods", ns, func() *corev1.Pod { return &corev1.Pod{} }, func() *corev1.PodList { return &corev1.PodList{} })
}

func (g *restGroups) Namespaces() Resource[*corev1.Namespace, *corev1.NamespaceList] {
	return resource(g.core, "namespaces", "", func() *corev1.Namespace { return &corev1.Namespace{} }, func() *corev1.NamespaceList { return &corev1.NamespaceList{} })
}

func (g *restGroups) NetworkPolicies(ns string) Resource[*networkingv1.NetworkPolicy, *networkingv1.NetworkPolicyList] {
	return resource(g.networking, "networkpolicies", ns, func() *networkingv1.NetworkPolicy { return &networkingv1.NetworkPolicy{} }, func() *networkingv1.NetworkPolicyList { return &networkingv1.NetworkPolicyList{} })
}

func (g *restGroups) Events(ns string) Resource[*eventsv1.Event, *eventsv1.EventList] {
	return resource(g.events, "events", ns, func() *eventsv1.Event { return &eventsv1.Event{} }, func() *eventsv1.EventList { return &eventsv1.EventList{} })
}

func (g *restGroups) Leases(ns string) Resource[*coordinationv1.Lease, *coordinationv1.LeaseList] {
	return resource(g.coordination, "leases", ns, func() *coordinationv1.Lease { return &coordinationv1.Lease{} }, func() *coordinationv1.LeaseList { return &coordinationv1.LeaseList{} })
}
