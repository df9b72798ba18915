package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// inNetns is argv run in the network namespace ns: a name under /run/netns
// (the test bed's hosts), or a path (a pod's namespace, which has no name).
func inNetns(ns string, argv ...string) []string {
	if strings.HasPrefix(ns, "/") {
		return append([]string{"nsenter", "--net=" + ns}, argv...)
	}
	return append([]string{"ip", "netns", "exec", ns}, argv...)
}

// iperf runs one bounded iperf3 measurement of streams TCP streams from
// srcNS to an iperf3 server started in dstNS, stops the server by its pid,
// and returns the received rate in Gbit/s.
func iperf(ctx context.Context, srcNS, dstNS string, dst netip.Addr, streams int) (float64, error) {
	sv := inNetns(dstNS, "iperf3", "-s", "-1", "-B", dst.String())
	srv := exec.Command(sv[0], sv[1:]...)
	if err := srv.Start(); err != nil {
		return 0, fmt.Errorf("iperf3 server: %w (apt-get install -y iperf3)", err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	cl := inNetns(srcNS, "iperf3", "-c", dst.String(), "-t", strconv.Itoa(*seconds), "-P", strconv.Itoa(streams), "-J")
	// Retry only while the server is not listening yet; any other failure
	// is reported as it is.
	var out []byte
	deadline := time.Now().Add(10 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Duration(*seconds+15)*time.Second)
		var err error
		out, err = exec.CommandContext(cctx, cl[0], cl[1:]...).Output()
		cancel()
		refused := strings.Contains(string(out), "Connection refused")
		if err == nil && !refused {
			break
		}
		if !refused || time.Now().After(deadline) {
			return 0, fmt.Errorf("iperf3 %d streams to %s: %w: %s", streams, dst, err, tailOf(out))
		}
		time.Sleep(100 * time.Millisecond) // the server is starting; poll again
	}
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, fmt.Errorf("iperf3 output: %w", err)
	}
	if r.Error != "" || r.End.SumReceived.BitsPerSecond == 0 {
		return 0, fmt.Errorf("iperf3 %d streams to %s: no data received: %s", streams, dst, r.Error)
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, nil
}

func tailOf(b []byte) string {
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return string(b)
}
