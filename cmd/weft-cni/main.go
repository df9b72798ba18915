// Command weft-cni is the CNI plugin of weft: runtimes exec it with the CNI
// verb in CNI_COMMAND; it asks the local weft agent for an address and
// attaches the pod to the weft bridge.
package main

import "github.com/weftnet/weft/plugin"

func main() { plugin.Main() }
