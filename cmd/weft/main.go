// Command weft runs and inspects the weft overlay network agent.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(context.Background(), os.Args, os.Stdout, os.Stderr))
}

// run is the whole command line: it returns the exit code instead of
// exiting, so tests drive the CLI in-process against real agents.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := newApp()
	app.Writer, app.ErrWriter = stdout, stderr
	err := app.RunContext(ctx, args)
	if err != nil {
		fmt.Fprintln(stderr, "weft:", err)
	}
	return exitCode(err)
}
