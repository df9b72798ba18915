package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/weftnet/weft/api"
)

// Exit codes of every weft command; scripts rely on them (site/operations.md).
const (
	exitOK       = 0 // done; for status: the agent is ready
	exitError    = 1 // no agent answers, or the command failed
	exitUsage    = 2 // the command line is wrong
	exitNotReady = 3 // the agent answers but cannot network pods yet
)

// usageError is a mistake on the command line: exit 2, one line with a hint.
type usageError struct {
	msg  string
	help string // the command whose --help to point at, e.g. "weft status"
}

func (e *usageError) Error() string {
	return fmt.Sprintf("%s (see `%s --help`)", e.msg, e.help)
}

// errNotReady says the agent answered but is not ready: exit 3.
type errNotReady struct{ why string }

func (e *errNotReady) Error() string { return "agent not ready: " + e.why }

// exitCode maps an error of app.Run to the documented exit code.
func exitCode(err error) int {
	var ue *usageError
	var nr *errNotReady
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		return exitUsage
	case errors.As(err, &nr), api.Code(err) == api.CodeNotReady:
		return exitNotReady
	}
	return exitError
}

func usagef(c *cli.Context, format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...), help: helpName(c)}
}

// helpName is the command line that names c, e.g. "weft status peers".
func helpName(c *cli.Context) string {
	if c == nil || c.Command == nil || c.Command.HelpName == "" {
		return "weft"
	}
	return c.Command.HelpName
}

// onUsageError replaces urfave/cli's answer to a bad flag (the whole help,
// then the error) with one line and a hint.
func onUsageError(c *cli.Context, err error, _ bool) error {
	return &usageError{msg: err.Error(), help: helpName(c)}
}

// noArgs is the Before of commands that take no arguments: a stray word is a
// usage error, not silently ignored.
func noArgs(c *cli.Context) error {
	if c.Args().Present() {
		return usagef(c, "%s takes no arguments, got %q", c.Command.Name, c.Args().First())
	}
	return nil
}

// unknownCommand answers a word that is not a command, naming the nearest.
func unknownCommand(c *cli.Context, word string, cmds []*cli.Command) error {
	var names []string
	for _, cmd := range cmds {
		if !cmd.Hidden && cmd.Name != "help" {
			names = append(names, cmd.Name)
		}
	}
	if near := nearest(word, names); near != "" {
		return usagef(c, "unknown command %q; did you mean %q?", word, near)
	}
	return usagef(c, "unknown command %q; commands: %s", word, strings.Join(names, ", "))
}

// nearest returns the name closest to word by edit distance, or "" when none
// is close enough to be what was meant. A prefix ("stat") always counts.
func nearest(word string, names []string) string {
	best, bestD := "", 1<<30
	for _, n := range names {
		d := editDistance(word, n)
		if strings.HasPrefix(n, word) && word != "" {
			d = 0
		}
		if d < bestD {
			best, bestD = n, d
		}
	}
	if bestD > max(2, len(word)/2) {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance of two short words.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
