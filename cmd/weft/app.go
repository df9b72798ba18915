package main

import (
	"context"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftnet/weft/agent"
	"github.com/weftnet/weft/api"
)

func newApp() *cli.App {
	return &cli.App{
		Name:  "weft",
		Usage: "an overlay network for containers and Kubernetes",
		Description: "weft connects containers on many hosts into one flat network. Run `weft launch PEER...`\n" +
			"on every host; inspect the mesh with `weft status`.",
		Version:         api.Version,
		HideVersion:     true,
		HideHelpCommand: true,
		Flags:           []cli.Flag{runDirFlag()},
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
		},
	}
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
