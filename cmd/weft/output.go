package main

import (
	"encoding/json"
	"io"

	"github.com/urfave/cli/v2"
)

// Output formats of the views (-o).
const (
	outTable = "table"
	outJSON  = "json"
)

// outputFlag is on every command that shows a view.
func outputFlag(def string) *cli.StringFlag {
	return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: def, Usage: "table or json"}
}

// outputFormat is -o wherever it was given on the command line (`weft -o
// json status` is not allowed, but `weft status -o json peers` is), checked.
func outputFormat(c *cli.Context) (string, error) {
	f := c.String("output")
	for _, cc := range c.Lineage() {
		if cc.IsSet("output") {
			f = cc.String("output")
			break
		}
	}
	switch f {
	case outTable, outJSON:
		return f, nil
	}
	return "", usagef(c, "-o %q: want table or json", f)
}

// show writes v as indented JSON, or calls table, as -o says.
func show(c *cli.Context, v any, table func(w io.Writer)) error {
	f, err := outputFormat(c)
	if err != nil {
		return err
	}
	if f == outJSON {
		return writeJSON(c.App.Writer, v)
	}
	table(c.App.Writer)
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
