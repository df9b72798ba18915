package policy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
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

// ForgetFlows dumps the whole conntrack table to find an address's flows:
// its cost grows with the table, which is why the agent keeps it off the
// CNI ADD path (FlushNeighbours there costs one neighbour dump).
//
//	go test -run '^$' -bench 'ForgetFlows|FlushNeighbours' ./policy
func BenchmarkForgetFlows(b *testing.B) {
	for _, n := range []int{1000, 10000, 50000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			ns := benchNetns(b)
			h, err := netlinkHandle(ns, unix.NETLINK_NETFILTER)
			if err != nil {
				b.Fatal(err)
			}
			defer h.Close()
			for i := range n {
				src := net.IPv4(10, 32, byte(1+i>>16), byte(i>>8)).To4()
				fl := &netlink.ConntrackFlow{
					FamilyType: unix.AF_INET,
					Forward:    netlink.IPTuple{SrcIP: src, DstIP: net.IPv4(10, 32, 0, 10).To4(), Protocol: unix.IPPROTO_UDP, SrcPort: uint16(1024 + i&0xff), DstPort: 53},
					Reverse:    netlink.IPTuple{SrcIP: net.IPv4(10, 32, 0, 10).To4(), DstIP: src, Protocol: unix.IPPROTO_UDP, SrcPort: 53, DstPort: uint16(1024 + i&0xff)},
					TimeOut:    600,
				}
				if err := h.ConntrackCreate(netlink.ConntrackTable, unix.AF_INET, fl); err != nil {
					b.Fatalf("conntrack entry %d: %v", i, err)
				}
			}
			e, err := New(Config{NetNS: ns})
			if err != nil {
				b.Fatal(err)
			}
			absent := netip.MustParseAddr("10.32.0.99")
			b.ResetTimer()
			for range b.N {
				if k, err := e.ForgetFlows(absent); err != nil || k != 0 {
					b.Fatalf("ForgetFlows = %d, %v", k, err)
				}
			}
		})
	}
}

// FlushNeighbours on a node with 250 neighbours (a full /24 of pods).
func BenchmarkFlushNeighbours(b *testing.B) {
	ns := benchNetns(b)
	run := func(args ...string) {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			b.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	run("ip", "-n", ns, "link", "add", "weft", "type", "bridge")
	run("ip", "-n", ns, "addr", "add", "10.32.0.1/24", "dev", "weft")
	run("ip", "-n", ns, "link", "set", "weft", "up")
	for i := 2; i < 252; i++ {
		run("ip", "-n", ns, "neigh", "add", fmt.Sprintf("10.32.0.%d", i), "lladdr", fmt.Sprintf("02:00:00:00:00:%02x", i), "dev", "weft", "nud", "reachable")
	}
	e, err := New(Config{NetNS: ns})
	if err != nil {
		b.Fatal(err)
	}
	absent := netip.MustParseAddr("10.32.0.254")
	b.ResetTimer()
	for range b.N {
		if k, err := e.FlushNeighbours(absent); err != nil || k != 0 {
			b.Fatalf("FlushNeighbours = %d, %v", k, err)
		}
	}
}
