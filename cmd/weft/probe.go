package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftnet/weft/api"
)

// defaultProbeSocket is where the DaemonSet's agent serves its probes
// (WEFT_PROBE_SOCKET, in a volume private to the pod).
const defaultProbeSocket = api.DefaultProbeSocket

func probeSocketFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "probe-socket", EnvVars: []string{"WEFT_PROBE_SOCKET"},
		Usage: "unix socket serving this agent's /healthz and /readyz from its start, standby included (a pod's probes; empty: off)"}
}

// probeCommand asks a pod's agent through its probe socket, as the
// kubelet's exec probes of the DaemonSet do. An exec probe, not httpGet on
// the node's loopback: while a new agent stands by to take over
// (--handoff), the health port on the node is the old agent's, and the new
// pod's probes must ask the new agent. The DaemonSet runs the same probe
// through `weft-cni probe`, which starts in a fraction of weft's time.
func probeCommand() *cli.Command {
	sock := probeSocketFlag()
	sock.Value = defaultProbeSocket
	return &cli.Command{
		Name:      "probe",
		Usage:     "ask this pod's agent, through its probe socket, whether it is alive (healthz) or ready (readyz); exit 0 yes, 3 not ready, 1 no answer",
		ArgsUsage: "healthz|readyz",
		Flags: []cli.Flag{sock,
			&cli.DurationFlag{Name: "timeout", Value: 3 * time.Second, Usage: "give up after this long"}},
		Action: func(c *cli.Context) error {
			what := c.Args().First()
			if c.NArg() != 1 || (what != "healthz" && what != "readyz") {
				return usagef(c, "want one argument, healthz or readyz")
			}
			path := c.String("probe-socket")
			ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
			defer cancel()
			code, body, err := probeGet(ctx, path, "/"+what)
			if err != nil {
				return fmt.Errorf("no agent answers on %s: %w", path, err)
			}
			fmt.Fprintln(c.App.Writer, body)
			if code != http.StatusOK {
				return &errNotReady{why: strings.TrimPrefix(body, "not ready: ")}
			}
			return nil
		},
	}
}

func probeGet(ctx context.Context, sock, path string) (int, string, error) {
	return api.Probe(ctx, sock, path)
}
