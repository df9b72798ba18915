package cnitest

import (
	"context"
	"crypto/sha512"
	"fmt"
	"path/filepath"
	"slices"
	"time"
)

func cnitoolContainerID(netnsPath string) string {
	abs, err := filepath.Abs(netnsPath)
	if err != nil {
		abs = netnsPath
	}
	s := sha512.Sum512([]byte(abs))
	return fmt.Sprintf("cnitool-%x", s[:10])
}

// Bench is one ADD/DEL latency run of one network.
type Bench struct {
	Runtime Runtime // how to reach the plugin; HostNetns is the simulated host
	Network string  // network (conflist) name
	Netns   string  // pod namespace every cycle attaches and detaches
	IfName  string  // "" = eth0
	Cycles  int     // ADD+DEL pairs to time
	Timeout time.Duration
}

// Percentiles summarises a set of latencies.
type Percentiles struct {
	N        int
	P50, P99 time.Duration
}

func percentiles(d []time.Duration) Percentiles {
	if len(d) == 0 {
		return Percentiles{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(q*float64(len(s))))] }
	return Percentiles{N: len(s), P50: at(0.50), P99: at(0.99)}
}

// Latencies are the ADD and DEL latencies of one plugin, measured as a
// runtime sees them: exec of the plugin binary, start to exit.
type Latencies struct {
	Network  string
	Add, Del Percentiles
}

func (l Latencies) String() string {
	return fmt.Sprintf("%-24s ADD p50 %7.2f ms  p99 %7.2f ms   DEL p50 %7.2f ms  p99 %7.2f ms   (n=%d)",
		l.Network, ms(l.Add.P50), ms(l.Add.P99), ms(l.Del.P50), ms(l.Del.P99), l.Add.N)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchADDDEL times b.Cycles ADD then DEL of one pod interface. It stops at
// the first failure or when ctx ends, returning what it measured so far.
func BenchADDDEL(ctx context.Context, b Bench) (Latencies, error) {
	ls, err := BenchCompare(ctx, b.Cycles, []Bench{b})
	return ls[0], err
}

// BenchCompare runs several networks' ADD/DEL cycles interleaved, one cycle
// of each in turn, so a machine's changing load weighs on all alike. The
// Cycles of each Bench is ignored in favour of cycles.
func BenchCompare(ctx context.Context, cycles int, benches []Bench) ([]Latencies, error) {
	adds := make([][]time.Duration, len(benches))
	dels := make([][]time.Duration, len(benches))
	result := func() []Latencies {
		out := make([]Latencies, len(benches))
		for i, b := range benches {
			out[i] = Latencies{Network: b.Network, Add: percentiles(adds[i]), Del: percentiles(dels[i])}
		}
		return out
	}
	for c := range cycles {
		for i, b := range benches {
			if err := ctx.Err(); err != nil {
				return result(), fmt.Errorf("bench stopped after %d cycles: %w", c, err)
			}
			add, del, err := b.cycle(ctx, c)
			adds[i] = append(adds[i], add)
			if err != nil {
				return result(), err
			}
			dels[i] = append(dels[i], del)
		}
	}
	return result(), nil
}

// cycle times one ADD and one DEL.
func (b Bench) cycle(ctx context.Context, n int) (add, del time.Duration, err error) {
	ifName := b.IfName
	if ifName == "" {
		ifName = "eth0"
	}
	timeout := b.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	id := fmt.Sprintf("bench-%s-%d", b.Network, n)
	start := time.Now()
	_, err = b.Runtime.Add(ctx, b.Network, id, b.Netns, ifName)
	add = time.Since(start)
	if err != nil {
		return add, 0, fmt.Errorf("bench %s cycle %d ADD: %w", b.Network, n, err)
	}
	start = time.Now()
	err = b.Runtime.Del(ctx, b.Network, id, b.Netns, ifName)
	del = time.Since(start)
	if err != nil {
		return add, del, fmt.Errorf("bench %s cycle %d DEL: %w", b.Network, n, err)
	}
	return add, del, nil
}
