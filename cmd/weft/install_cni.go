package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/weftnet/weft/kube"
)

func installCNICommand() *cli.Command {
	return &cli.Command{
		Name:  "install-cni",
		Usage: "copy the weft-cni plugin next to the other CNI plugins (the DaemonSet's init step)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "bin-dir", EnvVars: []string{"WEFT_CNI_BIN_DIR"}, Value: "/opt/cni/bin", Usage: "where CNI plugins live"},
			&cli.StringFlag{Name: "src", Usage: "the weft-cni binary (default: next to this weft binary)"},
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
			if err := kube.InstallCNIBinary(src, c.String("bin-dir")); err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "installed %s into %s\n", src, c.String("bin-dir"))
			return nil
		},
	}
}
