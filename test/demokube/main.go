// Command demokube (`make demo-kube`) shows a newcomer the Kubernetes path of
// weft on one machine: a real three-node cluster in network namespaces with
// no pod network, one `kubectl apply -f prog/kube/weft.yaml`, and pods on
// different nodes talking. Everything is torn down at the end (also on
// Ctrl-C). Needs root and the Kubernetes binaries in $K8S_DIR/bin (the make
// target builds them the first time).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/test/kubecluster"
)

func main() {
	keep := flag.Bool("pause", false, "wait for Enter before tearing the cluster down (to look around)")
	flag.Parse()
	if err := run(*keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo-kube:", err)
		os.Exit(1)
	}
}

func run(pause bool) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network, mount and pid namespaces, cgroups)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("", "wkc-")
	if err != nil {
		return err
	}
	say := func(format string, args ...any) { fmt.Printf(format+"\n", args...) }
	log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelInfo}))
	began := time.Now()
	say("== weft on Kubernetes ==")
	say("Starting a control plane (etcd, kube-apiserver, controller-manager, scheduler) at 198.18.0.200")
	say("and three nodes (network namespaces with their own containerd and kubelet); images are")
	say("built from this checkout and imported into every node. This takes about a minute.")
	c, err := kubecluster.Start(ctx, kubecluster.Options{Dir: dir, Logger: log})
	if err != nil {
		os.RemoveAll(dir)
		return err
	}
	defer func() {
		say("\nTearing down: nodes (every process of each), control plane, namespaces, files.")
		if cerr := c.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		} else {
			say("Nothing left behind. Total %s.", time.Since(began).Round(time.Second))
		}
	}()
	s := &kubecluster.Scenario{C: c,
		Say: func(format string, args ...any) { say("\n"+format, args...) },
		Show: func(title, text string) {
			fmt.Printf("%s\n%s", title, indent(text))
		},
	}
	r, err := s.Run(ctx)
	if err != nil {
		fmt.Println(c.Diagnose())
		return err
	}
	say("\n== Summary ==")
	say("kubectl apply to every node Ready:      %s", r.ApplyToReady.Round(100*time.Millisecond))
	say("pod created to first cross-node answer: %s", r.FirstCrossNode.Round(time.Millisecond))
	say("rollout restart of weft:                %s (longest silence of a pod pair %s)", r.RolloutRestart.Round(100*time.Millisecond), r.MaxGapInRestart.Round(100*time.Millisecond))
	say("deleted Node's ranges reclaimed in:     %s", r.ReclaimAfterDrop.Round(100*time.Millisecond))
	if pause {
		say("\nCluster still up: kubeconfig %s (use it inside `ip netns exec %s`). Press Enter to tear down.", c.Kubeconfig, c.Bed.Outside)
		fmt.Scanln()
	}
	return nil
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("    " + l + "\n")
	}
	return b.String()
}
