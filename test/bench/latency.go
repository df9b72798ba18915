package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/weftnet/weft/test/testbed"
)

// The latency of a path is measured with ping, two ways:
//
//   - busy: pingBusy echo requests 1 ms apart, the first pingWarm of them
//     left out. The CPUs stay awake between requests, so the round trip is
//     the path's own cost (every device, hook and lookup it crosses), and
//     the median and minimum of the round trips are what is reported;
//   - idle: pingIdle requests 20 ms apart (what the bench measured before),
//     median. Between two requests the CPUs idle or run other work, so each
//     request crosses the path cold (caches, and on a virtual machine a
//     virtual CPU that may first have to be woken or scheduled): that is the
//     latency an occasional packet sees, and most of it is not the path.
//
// The mean, which the bench reported before, is dragged by the few requests
// that wait for a CPU busy with something else; the median is not.
var (
	pingBusy = flag.Int("ping-busy", 500, "throughput: pings 1 ms apart per busy RTT measurement (median and minimum)")
	pingIdle = flag.Int("ping-idle", 50, "throughput: pings 20 ms apart per idle RTT measurement (median)")
)

// pingWarm requests are sent before the busy ones count: the first request
// may wait for ARP, and the first few for CPUs to leave idle.
const pingWarm = 10

// rttStats summarises one ping measurement.
type rttStats struct {
	min, p50 time.Duration
	n        int
}

// latency of one path: the busy and the idle measurement.
type latency struct {
	busy rttStats
	idle rttStats
}

var pingTimeRE = regexp.MustCompile(`\btime=([\d.]+) ms`)

// errNoReplies: ping printed no round trip at all.
var errNoReplies = errors.New("no ping replies")

// parsePingTimes returns the round trips of every reply line of ping's
// output (iputils: "... icmp_seq=3 ttl=64 time=0.052 ms"), in order.
func parsePingTimes(out string) ([]time.Duration, error) {
	var d []time.Duration
	for _, m := range pingTimeRE.FindAllStringSubmatch(out, -1) {
		ms, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			return nil, fmt.Errorf("ping time %q: %w", m[1], err)
		}
		d = append(d, time.Duration(ms*float64(time.Millisecond)))
	}
	if len(d) == 0 {
		return nil, errNoReplies
	}
	return d, nil
}

// summarise drops the first skip round trips (when there are more) and
// returns the minimum and median of the rest.
func summarise(d []time.Duration, skip int) rttStats {
	if len(d) > skip {
		d = d[skip:]
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return rttStats{min: s[0], p50: s[len(s)/2], n: len(s)}
}

// ping sends count requests interval apart from namespace ns to dst and
// returns the round trips of the replies.
func ping(ctx context.Context, ns string, dst netip.Addr, count int, interval string) ([]time.Duration, error) {
	out, err := testbed.Exec(ctx, ns, "ping", "-n", "-c", strconv.Itoa(count), "-i", interval, "-W", "1", dst.String())
	if err != nil {
		// Some replies lost makes ping exit 1; what arrived still counts.
		if d, perr := parsePingTimes(out); perr == nil && len(d) >= count/2 {
			return d, nil
		}
		return nil, fmt.Errorf("ping %s in %s: %w", dst, ns, err)
	}
	return parsePingTimes(out)
}

// measureLatency is the busy and the idle RTT from ns to dst.
func measureLatency(ctx context.Context, ns string, dst netip.Addr) (latency, error) {
	var l latency
	busy, err := ping(ctx, ns, dst, *pingBusy+pingWarm, "0.001")
	if err != nil {
		return l, err
	}
	l.busy = summarise(busy, pingWarm)
	idle, err := ping(ctx, ns, dst, *pingIdle, "0.02")
	if err != nil {
		return l, err
	}
	l.idle = summarise(idle, 1)
	return l, nil
}
