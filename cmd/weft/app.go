package main

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftnet/weft/agent"
	"github.com/weftnet/weft/api"
)

func newApp() *cli.App {
	app := &cli.App{
		Name:  "weft",
		Usage: "an overlay network for containers and Kubernetes",
		Description: "weft connects containers on many hosts into one flat network. Run `weft launch PEER...`\n" +
			"on every host; inspect the mesh with `weft status`.\n" +
			"Exit codes: 0 ok (status: ready), 1 no agent or error, 2 usage, 3 agent not ready.",
		Version:              api.Version,
		HideHelpCommand:      true,
		EnableBashCompletion: true,
		Flags:                []cli.Flag{runDirFlag()},
		Commands: []*cli.Command{
			launchCommand(),
			statusCommand(),
			reportCommand(),
			psCommand(),
			connectCommand(),
			forgetCommand(),
			rmpeerCommand(),
			resetCommand(),
			versionCommand(),
			installCNICommand(),
			probeCommand(),
			completionCommand(),
		},
		OnUsageError: onUsageError,
		// No command, or a word that is none: a usage error naming the nearest
		// command, not urfave/cli's "No help topic" with exit 3.
		Action: func(c *cli.Context) error {
			if !c.Args().Present() {
				_ = cli.ShowAppHelp(c)
				return usagef(c, "name a command")
			}
			if c.Args().First() == "help" {
				return help(c)
			}
			return unknownCommand(c, c.Args().First(), c.App.Commands)
		},
		// Errors are printed once, by run, with their exit code: never let
		// urfave/cli exit the process by itself.
		ExitErrHandler: func(*cli.Context, error) {},
	}
	var walk func(cmds []*cli.Command)
	walk = func(cmds []*cli.Command) {
		for _, c := range cmds {
			c.OnUsageError = onUsageError
			c.HideHelpCommand = true
			walk(c.Subcommands)
		}
	}
	walk(app.Commands)
	return app
}

// help is `weft help [COMMAND [VIEW]]`, as git and kubectl have it: the
// same as `weft COMMAND [VIEW] --help`. (urfave/cli's own help command is
// hidden: it answered an unknown topic with exit 3.)
func help(c *cli.Context) error {
	args := c.Args().Slice()[1:]
	if len(args) == 0 {
		return cli.ShowAppHelp(c)
	}
	if c.App.Command(args[0]) == nil {
		return unknownCommand(c, args[0], c.App.Commands)
	}
	app := newApp()
	app.Writer, app.ErrWriter = c.App.Writer, c.App.ErrWriter
	return app.RunContext(c.Context, append(append([]string{c.App.Name}, args...), "--help"))
}

func init() {
	// `weft --version` prints what `weft version` prints.
	cli.VersionPrinter = func(c *cli.Context) { fmt.Fprintf(c.App.Writer, "weft %s\n", api.Version) }
}

// runDirFlag is shared by every command that talks to a running agent.
func runDirFlag() *cli.StringFlag {
	return &cli.StringFlag{
		Name:    "run-dir",
		Usage:   "directory of the agent's local API socket " + api.SocketName,
		EnvVars: []string{"WEFT_RUN_DIR"},
		Value:   agent.DefaultRunDir,
	}
}

// client returns a client of the agent named by --run-dir and a context that
// bounds the whole command.
func client(c *cli.Context) (*api.Client, context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(c.Context, 10*time.Second)
	return api.NewClient(api.SocketPath(runDir(c)), 10*time.Second), ctx, cancel
}

// runDir honours --run-dir wherever it was given: `weft --run-dir D status
// peers` and `weft status peers --run-dir D` mean the same.
func runDir(c *cli.Context) string {
	for _, cc := range c.Lineage() {
		if cc.IsSet("run-dir") {
			return cc.String("run-dir")
		}
	}
	return c.String("run-dir")
}
