package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftnet/weft/api"
)

func statusCommand() *cli.Command {
	// view is one `weft status VIEW`: fetch asks the agent, table prints the
	// answer for people; -o json prints it as the API gave it. Every view
	// exits 3 while the agent is not ready, like the overview.
	view := func(name, usage string, fetch func(ctx context.Context, cl *api.Client) (any, error), table func(w io.Writer, v any)) *cli.Command {
		return &cli.Command{Name: name, Usage: usage, Flags: []cli.Flag{runDirFlag(), outputFlag(outTable)}, Before: noArgs,
			Action: func(c *cli.Context) error {
				if _, err := outputFormat(c); err != nil {
					return err
				}
				cl, ctx, cancel := client(c)
				defer cancel()
				v, err := fetch(ctx, cl)
				if err != nil {
					return explain(cl, err)
				}
				if err := show(c, v, func(w io.Writer) { table(w, v) }); err != nil {
					return err
				}
				st, err := cl.Status(ctx)
				if err != nil {
					return explain(cl, err)
				}
				return readiness(st)
			}}
	}
	return &cli.Command{
		Name:  "status",
		Usage: "show the agent's view of the mesh",
		Description: "With no view: an overview. Exit codes: 0 ready, 1 no agent answers, 2 usage,\n" +
			"3 the agent answers but is not ready (for the overview and every view).\n" +
			"Views: peers, connections, ipam, mesh, policy, targets.",
		Flags: []cli.Flag{runDirFlag(), outputFlag(outTable)},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				if near := nearest(c.Args().First(), statusViews); near != "" {
					return usagef(c, "unknown status view %q; did you mean %q?", c.Args().First(), near)
				}
				return usagef(c, "unknown status view %q; want %s", c.Args().First(), strings.Join(statusViews, ", "))
			}
			if _, err := outputFormat(c); err != nil {
				return err
			}
			cl, ctx, cancel := client(c)
			defer cancel()
			st, err := cl.Status(ctx)
			if err != nil {
				return explain(cl, err)
			}
			if err := show(c, st, func(w io.Writer) { writeOverview(w, st) }); err != nil {
				return err
			}
			return readiness(st)
		},
		Subcommands: []*cli.Command{
			view("peers", "one line per peer of the mesh",
				func(ctx context.Context, cl *api.Client) (any, error) { return cl.Peers(ctx) },
				func(w io.Writer, v any) { writePeers(w, v.([]api.Peer), time.Now()) }),
			view("connections", "one line per data-plane connection",
				func(ctx context.Context, cl *api.Client) (any, error) { return cl.Connections(ctx) },
				func(w io.Writer, v any) { writeConnections(w, v.([]api.Connection), time.Now()) }),
			view("ipam", "how the address range is split between peers",
				func(ctx context.Context, cl *api.Client) (any, error) { return cl.IPAM(ctx) },
				func(w io.Writer, v any) { writeIPAM(w, v.(api.IPAMStatus)) }),
			view("mesh", "the whole mesh as every peer sees it: who reaches whom, outliers first",
				func(ctx context.Context, cl *api.Client) (any, error) { return cl.Mesh(ctx) },
				func(w io.Writer, v any) { writeMesh(w, v.(api.MeshHealth)) }),
			view("policy", "NetworkPolicy enforcement on this node: policies, selected pods, the last update",
				func(ctx context.Context, cl *api.Client) (any, error) { return cl.Policy(ctx) },
				func(w io.Writer, v any) { writePolicy(w, v.(api.PolicyStatus), time.Now()) }),
			view("targets", "the addresses this agent keeps joining",
				func(ctx context.Context, cl *api.Client) (any, error) { return cl.Targets(ctx) },
				func(w io.Writer, v any) {
					for _, t := range v.([]string) {
						fmt.Fprintln(w, t)
					}
				}),
		},
	}
}

// statusViews are the subcommands of status, for suggestions.
var statusViews = []string{"peers", "connections", "ipam", "mesh", "policy", "targets"}

// readiness turns a status that is not ready into exit code 3.
func readiness(st api.Status) error {
	if st.Ready {
		return nil
	}
	why := "host network not set up yet"
	if st.IPAM == nil {
		why = "gossip is still starting"
	} else if !st.IPAM.Ready {
		why = "address ring: " + st.IPAM.State
	}
	return &errNotReady{why: why}
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
	} else if st.NotReady != "" {
		ready = "no (" + st.NotReady + ")"
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

// writeMesh prints the N×N matrix of gossiped connection states: one row
// per peer as it reports itself, one column per peer it connects to. Rows
// and columns with the most connections not established come first, so
// the outliers are at the top left.
func writeMesh(w io.Writer, m api.MeshHealth) {
	state := map[[2]string]string{} // from, to -> state
	problems := map[string]int{}    // by peer, as source or target
	names := map[string]bool{}
	for _, p := range m.Peers {
		names[p.Name] = true
		for _, c := range p.Connections {
			names[c.Peer] = true
			state[[2]string{p.Name, c.Peer}] = c.State
			if c.State != "established" {
				problems[p.Name]++
				problems[c.Peer]++
			}
		}
	}
	reported := map[string]api.PeerHealth{}
	for _, p := range m.Peers {
		reported[p.Name] = p
		if !p.Ready {
			problems[p.Name]++
		}
	}
	order := make([]string, 0, len(names))
	for n := range names {
		if _, ok := reported[n]; !ok {
			problems[n]++ // no summary heard from it
		}
		order = append(order, n)
	}
	sort.Slice(order, func(i, j int) bool {
		if problems[order[i]] != problems[order[j]] {
			return problems[order[i]] > problems[order[j]]
		}
		return order[i] < order[j]
	})
	header := "PEER\tREADY\tVERSION\tDATAPATH\tHEARD"
	for _, n := range order {
		header += "\t" + n
	}
	rows := make([][]string, 0, len(order))
	for _, from := range order {
		p, ok := reported[from]
		row := []string{from, "?", "?", "?", "never"}
		if ok {
			ready := "yes"
			if !p.Ready {
				ready = "NO"
			}
			row = []string{from, ready, p.Version, p.Datapath, p.Age.Round(time.Second).String() + " ago"}
		}
		for _, to := range order {
			cell := "?"
			switch st, known := state[[2]string{from, to}]; {
			case from == to:
				cell = "-"
			case !ok, !known:
				cell = "?"
			case st == "established":
				cell = "ok"
			default:
				cell = strings.ToUpper(st)
			}
			row = append(row, cell)
		}
		rows = append(rows, row)
	}
	table(w, header, rows)
}

// writePolicy is `weft status policy`.
func writePolicy(w io.Writer, p api.PolicyStatus, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', tabwriter.AlignRight)
	line := func(k, v string) { fmt.Fprintf(tw, "%s:\t %s\n", k, v) }
	state := "enabled"
	switch {
	case !p.Enabled:
		state = "disabled"
	case !p.Synced:
		state = "enabled, not synced yet"
	}
	if p.Reason != "" {
		state += " (" + p.Reason + ")"
	}
	line("NetworkPolicy", state)
	if p.Enabled {
		line("Policies", fmt.Sprint(p.Policies))
		line("Local pods", fmt.Sprintf("%d (%d selected by a policy)", p.LocalPods, p.SelectedPods))
		line("Programmed", fmt.Sprintf("%d sets, %d rules", p.Sets, p.Rules))
		last := ago(now, p.LastApply)
		if !p.LastApply.IsZero() {
			last += fmt.Sprintf(", took %s", p.LastApplyTook.Round(time.Microsecond))
		}
		line("Last update", last)
		line("Updates", fmt.Sprintf("%d (%d failed)", p.Applies, p.ApplyFailures))
		if p.LastError != "" {
			line("Last error", p.LastError)
		}
		line("Dropped", fmt.Sprintf("%d ingress, %d egress", p.DropsIngress, p.DropsEgress))
	}
	tw.Flush()
}
