package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/ipam"
)

func reportCommand() *cli.Command {
	return &cli.Command{
		Name:   "report",
		Usage:  "print everything the agent knows as JSON (stable field names); -o table prints every view",
		Flags:  []cli.Flag{runDirFlag(), outputFlag(outJSON)},
		Before: noArgs,
		Action: func(c *cli.Context) error {
			if _, err := outputFormat(c); err != nil {
				return err
			}
			cl, ctx, cancel := client(c)
			defer cancel()
			r, err := cl.Report(ctx)
			if err != nil {
				return explain(cl, err)
			}
			if err := show(c, r, func(w io.Writer) { writeReport(w, r, time.Now()) }); err != nil {
				return err
			}
			return readiness(r.Status)
		},
	}
}

// writeReport is every view one after the other, as `weft status` shows them.
func writeReport(w io.Writer, r api.Report, now time.Time) {
	writeOverview(w, r.Status)
	fmt.Fprintln(w)
	writePeers(w, r.Peers, now)
	fmt.Fprintln(w)
	writeConnections(w, r.Connections, now)
	if r.IPAM != nil {
		fmt.Fprintln(w)
		writeIPAM(w, *r.IPAM)
	}
	if r.Policy != nil {
		fmt.Fprintln(w)
		writePolicy(w, *r.Policy, now)
	}
	fmt.Fprintln(w)
	writeContainers(w, r.Containers)
	fmt.Fprintln(w, "\nTargets:", strings.Join(r.Targets, " "))
}

func psCommand() *cli.Command {
	return &cli.Command{
		Name:   "ps",
		Usage:  "list the containers on this host with their pods and weft addresses",
		Flags:  []cli.Flag{runDirFlag(), outputFlag(outTable)},
		Before: noArgs,
		Action: func(c *cli.Context) error {
			if _, err := outputFormat(c); err != nil {
				return err
			}
			cl, ctx, cancel := client(c)
			defer cancel()
			cs, err := cl.Containers(ctx)
			if err != nil {
				return explain(cl, err)
			}
			return show(c, cs, func(w io.Writer) { writeContainers(w, cs) })
		},
	}
}

// writeContainers is `weft ps`: POD is namespace/name where the runtime
// passed K8S_POD_NAMESPACE and K8S_POD_NAME, else "-".
func writeContainers(w io.Writer, cs []api.Container) {
	rows := make([][]string, 0, len(cs))
	for _, ct := range cs {
		id := ct.ContainerID
		if len(id) > 12 && !isHostEntry(id) {
			id = id[:12]
		}
		pod := "-"
		if ct.PodName != "" {
			pod = ct.PodNamespace + "/" + ct.PodName
		}
		rows = append(rows, []string{id, pod, ct.IfName, ct.Address, ct.Created.Format(time.RFC3339)})
	}
	table(w, "CONTAINER\tPOD\tIFACE\tADDRESS\tCREATED", rows)
}

// isHostEntry tells the host's own gateway allocation from a container's.
func isHostEntry(id string) bool { return id == ipam.HostContainerID }

func peersArgs(c *cli.Context) ([]string, error) {
	if !c.Args().Present() {
		return nil, usagef(c, "name at least one PEER (host or host:port)")
	}
	return c.Args().Slice(), nil
}

func connectCommand() *cli.Command {
	return peersCommand("connect", "add peers this agent keeps joining", (*api.Client).Connect)
}

func forgetCommand() *cli.Command {
	return peersCommand("forget", "stop joining peers (peers already in the mesh stay until they leave)", (*api.Client).Forget)
}

// peersCommand is a command that sends a list of PEER arguments to the agent.
func peersCommand(name, usage string, call func(*api.Client, context.Context, []string) error) *cli.Command {
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "PEER...",
		Flags:     []cli.Flag{runDirFlag()},
		Action: func(c *cli.Context) error {
			peers, err := peersArgs(c)
			if err != nil {
				return err
			}
			cl, ctx, cancel := client(c)
			defer cancel()
			return explain(cl, call(cl, ctx, peers))
		},
	}
}

func rmpeerCommand() *cli.Command {
	return &cli.Command{
		Name:      "rmpeer",
		Usage:     "take over the address ranges of a peer that is gone for good",
		ArgsUsage: "NAME",
		Description: "Run on one live host only. Refuses while NAME is alive. The ranges of NAME\n" +
			"become this host's; addresses in use there are lost, so stop its pods first.",
		Flags: []cli.Flag{runDirFlag()},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef(c, "name exactly one peer")
			}
			cl, ctx, cancel := client(c)
			defer cancel()
			r, err := cl.Rmpeer(ctx, c.Args().First())
			if err != nil {
				return explain(cl, err)
			}
			fmt.Fprintf(c.App.Writer, "took over %d addresses of %s\n", r.Reclaimed, c.Args().First())
			return nil
		},
	}
}

func resetCommand() *cli.Command {
	return &cli.Command{
		Name:   "reset",
		Usage:  "hand this host's address ranges to a live peer, remove weft's host network and stop the agent",
		Flags:  []cli.Flag{runDirFlag()},
		Before: noArgs,
		Action: func(c *cli.Context) error {
			cl, _, cancel := client(c)
			cancel()
			// The agent may wait for several peers in turn to take the ranges.
			ctx, cancel := context.WithTimeout(c.Context, 60*time.Second)
			defer cancel()
			cl = api.NewClient(cl.Socket, 60*time.Second)
			if err := cl.Reset(ctx); err != nil {
				return explain(cl, err)
			}
			fmt.Fprintln(c.App.Writer, "reset: ranges handed over, agent stopping")
			return nil
		},
	}
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:   "version",
		Usage:  "print the version of this binary",
		Flags:  []cli.Flag{outputFlag(outTable)},
		Before: noArgs,
		Action: func(c *cli.Context) error {
			v := versionInfo()
			return show(c, v, func(w io.Writer) { fmt.Fprintf(w, "weft %s\n", v.Version) })
		},
	}
}

// buildVersion is `weft version -o json`.
type buildVersion struct {
	Version   string `json:"version"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
}

func versionInfo() buildVersion {
	return buildVersion{Version: api.Version, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
}
