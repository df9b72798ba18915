//go:build tools

// Package tools pins the reference CNI plugins the weft image ships beside
// weft-cni: portmap (hostPort, the portMappings capability) and bandwidth
// (the bandwidth capability, kubernetes.io/ingress-bandwidth annotations).
// prog/image/build.sh builds them from this module with the Go module proxy.
package tools

import (
	_ "github.com/containernetworking/plugins/plugins/meta/bandwidth"
	_ "github.com/containernetworking/plugins/plugins/meta/portmap"
)
