// Command coredns is CoreDNS with only the plugins a Kubernetes cluster DNS
// uses (the Corefile in test/kubecluster), built by the test cluster through
// the Go module proxy into a local image. CoreDNS documents this way of
// choosing plugins at compile time: set dnsserver.Directives and import the
// plugins, instead of the full set in core/plugin (whose cloud backends would
// make the build several times larger and slower).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// The order is the order in which the plugins handle a query (the order of
// CoreDNS's plugin.cfg, restricted to these plugins).
var directives = []string{
	"reload", "ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes", "loop", "forward",
}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
