package kube

import (
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/weftnet/weft/kube/client"
)

// Client is the part of the Kubernetes API that weft uses; see
// client.Client for why it is not client-go's clientset.
type Client = client.Client

// Resource is one kind of object of the API; see client.Resource.
type Resource[T, L runtime.Object] = client.Resource[T, L]
