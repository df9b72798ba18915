package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftnet/weft/api"
)

func statusCommand() *cli.Command {
	view := func(name, usage string, show func(c *cli.Context, cl *api.Client) error) *cli.Command {
		return &cli.Command{Name: name, Usage: usage, Flags: []cli.Flag{runDirFlag()}, Action: func(c *cli.Context) error {
			cl, ctx, cancel := client(c)
			defer cancel()
			c.Context = ctx
			return show(c, cl)
		}}
	}
	return &cli.Command{
		Name:  "status",
		Usage: "show the agent's view of the mesh",
		Description: "With no view: an overview. Exits non-zero when no agent answers.\n" +
			"Views: peers, connections, ipam, targets.",
		Flags: []cli.Flag{runDirFlag()},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return fmt.Errorf("unknown status view %q; want peers, connections, ipam or targets", c.Args().First())
			}
			cl, ctx, cancel := client(c)
			defer cancel()
			st, err := cl.Status(ctx)
			if err != nil {
				return explain(cl, err)
			}
			writeOverview(c.App.Writer, st)
			return nil
		},
		Subcommands: []*cli.Command{
			view("peers", "one line per peer of the mesh", func(c *cli.Context, cl *api.Client) error {
				ps, err := cl.Peers(c.Context)
				if err != nil {
					return explain(cl, err)
				}
				writePeers(c.App.Writer, ps, time.Now())
				return nil
			}),
			view("connections", "one line per data-plane connection", func(c *cli.Context, cl *api.Client) error {
				cs, err := cl.Connections(c.Context)
				if err != nil {
					return explain(cl, err)
				}
				writeConnections(c.App.Writer, cs, time.Now())
				return nil
			}),
			view("ipam", "how the address range is split between peers", func(c *cli.Context, cl *api.Client) error {
				st, err := cl.IPAM(c.Context)
				if err != nil {
					return explain(cl, err)
				}
				writeIPAM(c.App.Writer, st)
				return nil
			}),
			view("targets", "the addresses this agent keeps joining", func(c *cli.Context, cl *api.Client) error {
				ts, err := cl.Targets(c.Context)
				if err != nil {
					return explain(cl, err)
				}
				for _, t := range ts {
					fmt.Fprintln(c.App.Writer, t)
				}
				return nil
			}),
		},
	}
}

// explain turns "cannot reach the agent" into advice naming the socket.
func explain(cl *api.Client, err error) error {
	if err == nil {
		return nil
	}
	if api.Code(err) == "" {
		return fmt.Errorf("no weft agent answers on %s (is `weft launch` running, with the same --run-dir?): %w", cl.Socket, err)
	}
	return err
}

func onOff(b bool) string {
	if b {
		return "enabled"
	}
	return "disabled"
}

func writeOverview(w io.Writer, st api.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', tabwriter.AlignRight)
	line := func(k, v string) { fmt.Fprintf(tw, "%s:\t %s\n", k, v) }
	line("Version", fmt.Sprintf("%s (protocol %d)", st.Version, st.Protocol))
	line("Name", st.Name)
	line("Address", fmt.Sprintf("%s (gossip %d, data %d)", st.Host, st.Port, st.Port+1))
	line("Encryption", onOff(st.Encryption))
	line("Peers", fmt.Sprintf("%d (%d alive)", st.Peers, st.Alive))
	line("Connections", fmt.Sprintf("%d established", st.Connected))
	line("Targets", fmt.Sprint(st.Targets))
	if st.IPAM != nil {
		line("IPAM", fmt.Sprintf("%s, range %s", st.IPAM.State, st.IPAM.Range))
	}
	if st.Datapath != "" {
		line("Datapath", fmt.Sprintf("%s, MTU %d", st.Datapath, st.MTU))
	}
	ready := "no"
	if st.Ready {
		ready = "yes"
	}
	line("Ready", ready)
	line("Uptime", st.Uptime.Round(time.Second).String())
	tw.Flush()
}

// ago renders a past instant for a table cell.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	return d.Round(time.Second).String() + " ago"
}

func table(w io.Writer, header string, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

func writePeers(w io.Writer, ps []api.Peer, now time.Time) {
	rows := make([][]string, 0, len(ps))
	for _, p := range ps {
		name := p.Name
		if p.Local {
			name += " (self)"
		}
		rows = append(rows, []string{name, p.Address, p.State, p.Version, ago(now, p.Since)})
	}
	table(w, "NAME\tADDRESS\tSTATE\tVERSION\tSINCE", rows)
}

func writeConnections(w io.Writer, cs []api.Connection, now time.Time) {
	rows := make([][]string, 0, len(cs))
	for _, c := range cs {
		enc := "none"
		if c.Encrypted {
			enc = c.Cipher
			if enc == "" {
				enc = "pending"
			}
			if !c.LastRekey.IsZero() {
				enc += ", rekeyed " + ago(now, c.LastRekey)
			}
		}
		state := c.State
		if c.Reason != "" {
			state += " (" + c.Reason + ")"
		}
		dp := c.Datapath
		if c.DatapathReason != "" {
			dp = "userspace: " + dp + " (" + c.DatapathReason + ")"
		}
		rows = append(rows, []string{c.Peer, c.Address, state, enc, fmt.Sprint(c.MTU), dp,
			ago(now, c.LastHeard), fmt.Sprintf("%d/%s", c.TxPackets, bytesHuman(c.TxBytes)),
			fmt.Sprintf("%d/%s", c.RxPackets, bytesHuman(c.RxBytes))})
	}
	table(w, "PEER\tADDRESS\tSTATE\tENCRYPTION\tMTU\tDATAPATH\tLAST HEARD\tTX PKTS/BYTES\tRX PKTS/BYTES", rows)
}

func writeIPAM(w io.Writer, st api.IPAMStatus) {
	fmt.Fprintf(w, "Range %s, %s (%s)\n", st.Range, st.State, st.Mode)
	rows := make([][]string, 0, len(st.Entries))
	for _, e := range st.Entries {
		name := e.Name
		if e.Local {
			name += " (self)"
		}
		reach := "reachable"
		if !e.Reachable {
			reach = "UNREACHABLE"
		}
		rows = append(rows, []string{name, fmt.Sprint(e.Owned), fmt.Sprintf("%.1f%%", e.Share*100),
			fmt.Sprint(e.InUse), fmt.Sprint(e.Free), reach})
	}
	table(w, "PEER\tOWNED\tSHARE\tIN USE\tFREE\tREACHABLE", rows)
}

func bytesHuman(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
