package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/weftnet/weft/kube"
)

func installCNICommand() *cli.Command {
	return &cli.Command{
		Name:  "install-cni",
		Usage: "copy the weft-cni plugin, and the portmap and bandwidth plugins weft chains, next to the other CNI plugins (the DaemonSet's init step)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "bin-dir", EnvVars: []string{"WEFT_CNI_BIN_DIR"}, Value: "/opt/cni/bin", Usage: "where CNI plugins live"},
			&cli.StringFlag{Name: "src", Usage: "the weft-cni binary (default: next to this weft binary); the chained plugins are taken from its directory"},
			&cli.StringFlag{Name: "chained", EnvVars: []string{"WEFT_CNI_CHAINED"}, Value: strings.Join(kube.ChainedPlugins, ","),
				Usage: "comma-separated plugins to install beside weft-cni (empty: none, when the node provides them)"},
		},
		Action: func(c *cli.Context) error {
			src := c.String("src")
			if src == "" {
				self, err := os.Executable()
				if err != nil {
					return fmt.Errorf("find weft-cni next to weft: %w", err)
				}
				src = filepath.Join(filepath.Dir(self), "weft-cni")
			}
			srcs := []string{src}
			for name := range strings.SplitSeq(c.String("chained"), ",") {
				if name = strings.TrimSpace(name); name != "" {
					srcs = append(srcs, filepath.Join(filepath.Dir(src), name))
				}
			}
			for _, s := range srcs {
				if err := kube.InstallCNIBinary(s, c.String("bin-dir")); err != nil {
					return err
				}
				fmt.Fprintf(c.App.Writer, "installed %s into %s\n", s, c.String("bin-dir"))
			}
			return nil
		},
	}
}
