package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/weftnet/weft/api"
)

// Exit codes of the probe, as `weft probe`'s.
const (
	probeOK       = 0
	probeNoAgent  = 1 // nobody answers on the socket
	probeUsage    = 2
	probeNotReady = 3 // the agent answers but is not ready
)

// probeMain is `weft-cni probe [--probe-socket PATH] [--timeout D]
// healthz|readyz`; it returns the exit code.
func probeMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("weft-cni probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sock := fs.String("probe-socket", api.DefaultProbeSocket, "the agent's probe socket")
	timeout := fs.Duration("timeout", 3*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return probeUsage
	}
	what := fs.Arg(0)
	if fs.NArg() != 1 || (what != "healthz" && what != "readyz") {
		fmt.Fprintln(stderr, "usage: weft-cni probe [--probe-socket PATH] [--timeout D] healthz|readyz")
		return probeUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	code, body, err := api.Probe(ctx, *sock, "/"+what)
	if err != nil {
		fmt.Fprintf(stderr, "weft-cni: no agent answers on %s: %v\n", *sock, err)
		return probeNoAgent
	}
	fmt.Fprintln(stdout, body)
	if code != http.StatusOK {
		return probeNotReady
	}
	return probeOK
}
