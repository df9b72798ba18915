package policy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	networkingv1 "k8s.io/api/networking/v1"
)

// Apply costs at the scale: 200 policies, 1000 pods. "kernel"
// programs a real table in a scratch network namespace (root); "memory"
// uses the fake kernel, to tell compiling from netlink.
//
//	go test -run '^$' -bench Apply -benchtime 20x ./policy

func benchNetns(b *testing.B) string {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("BENCHMARK NOT RUN: needs root for a network namespace")
	}
	r := make([]byte, 3)
	_, _ = rand.Read(r)
	name := "wnpb-" + hex.EncodeToString(r)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		b.Fatalf("ip netns add: %v: %s", err, out)
	}
	b.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return name
}

type benchTarget struct {
	name string
	mk   func(b *testing.B) *Engine
}

func benchTargets() []benchTarget {
	return []benchTarget{
		{"kernel", func(b *testing.B) *Engine {
			e, err := New(Config{NetNS: benchNetns(b)})
			if err != nil {
				b.Fatal(err)
			}
			return e
		}},
		{"memory", func(b *testing.B) *Engine {
			return newEngine(Config{}, slog.New(slog.DiscardHandler), newFakeKernel(b))
		}},
	}
}

// cpuTime is the process's user+system CPU time: netlink batches are
// processed in the sender's context, so it counts the kernel's work too,
// and it does not grow when the machine is busy with others' work.
func cpuTime() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU adds cpu-ms/op: CPU time spent between start and now.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
}

// The first Apply of a fresh Engine: compile and write the whole table
// (replacing the previous one).
func BenchmarkApplyFull(b *testing.B) {
	for _, bt := range benchTargets() {
		b.Run(bt.name, func(b *testing.B) {
			ctx := context.Background()
			var st Status
			var cpu time.Duration
			first := bt.mk(b)
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				e := first
				if i > 0 {
					e = newEngine(first.cfg, first.log, first.kern)
				}
				loadScale(e, 200, 1000)
				c0 := cpuTime()
				b.StartTimer()
				if err := e.Apply(ctx); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				cpu += cpuTime() - c0
				st = e.Status()
			}
			b.ReportMetric(float64(cpu)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
			b.ReportMetric(float64(st.Sets), "sets")
			b.ReportMetric(float64(st.Rules), "rules")
		})
	}
}

// A pod's label change: set element updates only.
func BenchmarkApplyLabelChange(b *testing.B) {
	for _, bt := range benchTargets() {
		b.Run(bt.name, func(b *testing.B) {
			e := bt.mk(b)
			loadScale(e, 200, 1000)
			ctx := context.Background()
			if err := e.Apply(ctx); err != nil {
				b.Fatal(err)
			}
			p := e.pods["ns3/pod3"].pod
			i := 0
			c0 := cpuTime()
			for b.Loop() {
				i++
				p.Labels = map[string]string{"app": fmt.Sprintf("app%d", i%50), "role": fmt.Sprintf("r%d", i%7)}
				e.SetPod(p)
				if err := e.Apply(ctx); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, c0)
		})
	}
}

// A policy change (add or remove one policy).
func BenchmarkApplyPolicyChange(b *testing.B) {
	for _, bt := range benchTargets() {
		b.Run(bt.name, func(b *testing.B) {
			e := bt.mk(b)
			loadScale(e, 200, 1000)
			ctx := context.Background()
			if err := e.Apply(ctx); err != nil {
				b.Fatal(err)
			}
			i := 0
			c0 := cpuTime()
			for b.Loop() {
				i++
				if i%2 == 1 {
					e.SetPolicy(withIngress(netpol("ns1", "extra", sel("app", "app1")),
						ruleSpec{peers: []networkingv1.NetworkPolicyPeer{podPeer(sel("role", "r3"))}}))
				} else {
					e.DeletePolicy("ns1", "extra")
				}
				if err := e.Apply(ctx); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, c0)
		})
	}
}
