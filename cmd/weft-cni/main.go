// Command weft-cni is the CNI plugin of weft: runtimes exec it with the CNI
// verb in CNI_COMMAND; it asks the local weft agent for an address and
// attaches the pod to the weft bridge.
//
// `weft-cni probe healthz|readyz` is also the DaemonSet's exec probe (the
// same as `weft probe`): the kubelet runs it in the agent's pod every few
// seconds, and this binary starts in a fraction of the time and memory of
// weft's, whose CPU the node's BestEffort pods would pay for (see
// site/operations.md, "Restarts"). A runtime never passes arguments to a
// CNI plugin, so the two uses cannot be confused.
package main

import (
	"os"

	"github.com/weftnet/weft/plugin"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "probe" {
		os.Exit(probeMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	plugin.Main()
}
