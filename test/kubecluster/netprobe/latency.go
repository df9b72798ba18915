package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/weftnet/weft/internal/atomicfile"
)

// LatencyReport is what `netprobe latency` writes to --results-dir/NAME.json
// (kubecluster.LatencyReport decodes it).
type LatencyReport struct {
	Name    string                    `json:"name"`
	Targets map[string]*LatencyResult `json:"targets"`
}

// LatencyResult holds the request times to one target, in microseconds.
type LatencyResult struct {
	Addr     string  `json:"addr"`
	Requests int     `json:"requests"`
	Fails    int     `json:"fails"`
	P50us    float64 `json:"p50_us"`
	P99us    float64 `json:"p99_us"`
	MaxUs    float64 `json:"max_us"`
	LastErr  string  `json:"last_err,omitempty"`
	Answered int     `json:"answered"` // distinct names that answered
}

// latencyMain times --count requests (connect, read the one-line answer,
// close) to every target in turn, writes the report, then waits for SIGTERM
// so the pod stays Running and its results stay put.
func latencyMain(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("latency", flag.ContinueOnError)
	name := fs.String("name", os.Getenv("POD_NAME"), "names the results file")
	targets := fs.String("targets", "", "comma-separated NAME=HOST:PORT")
	count := fs.Int("count", 1000, "requests per target")
	warmup := fs.Int("warmup", 20, "untimed requests per target first (connection tracking, ARP, DNS)")
	resultsDir := fs.String("results-dir", "", "write NAME.json here")
	timeout := fs.Duration("timeout", time.Second, "per request")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *name == "" || *targets == "" || *resultsDir == "" || *count < 1 {
		return errors.New("--name, --targets, --results-dir and a positive --count are required")
	}
	rep := LatencyReport{Name: *name, Targets: map[string]*LatencyResult{}}
	for t := range strings.SplitSeq(*targets, ",") {
		tname, addr, ok := strings.Cut(t, "=")
		if !ok {
			return fmt.Errorf("target %q: want NAME=HOST:PORT", t)
		}
		for range *warmup {
			_, _ = dial(ctx, addr, *timeout)
		}
		r := &LatencyResult{Addr: addr}
		times := make([]time.Duration, 0, *count)
		seen := map[string]bool{}
		for range *count {
			start := time.Now()
			answer, err := dial(ctx, addr, *timeout)
			if err != nil {
				r.Fails++
				r.LastErr = err.Error()
				continue
			}
			times = append(times, time.Since(start))
			seen[answer] = true
		}
		r.Requests, r.Answered = len(times), len(seen)
		if len(times) > 0 {
			slices.Sort(times)
			us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
			r.P50us = us(times[len(times)/2])
			r.P99us = us(times[min(len(times)-1, len(times)*99/100)])
			r.MaxUs = us(times[len(times)-1])
		}
		rep.Targets[tname] = r
		fmt.Printf("%s: %d requests, %d failed, p50 %.0f us, p99 %.0f us\n", addr, r.Requests, r.Fails, r.P50us, r.P99us)
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*resultsDir, 0o755); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(*resultsDir, *name+".json"), b, 0o644); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}
