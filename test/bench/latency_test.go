package main

import (
	"errors"
	"testing"
	"time"
)

// ping's output as iputils prints it: the reply lines carry the round trips;
// the summary line's mean must not be what is taken.
const pingOut = `PING 10.40.0.1 (10.40.0.1) 56(84) bytes of data.
64 bytes from 10.40.0.1: icmp_seq=1 ttl=62 time=0.912 ms
64 bytes from 10.40.0.1: icmp_seq=2 ttl=62 time=0.031 ms
64 bytes from 10.40.0.1: icmp_seq=3 ttl=62 time=0.029 ms
64 bytes from 10.40.0.1: icmp_seq=4 ttl=62 time=2.40 ms
64 bytes from 10.40.0.1: icmp_seq=5 ttl=62 time=0.033 ms

--- 10.40.0.1 ping statistics ---
5 packets transmitted, 5 received, 0% packet loss, time 4ms
rtt min/avg/max/mdev = 0.029/0.681/2.400/0.924 ms
`

func TestParsePingTimesAndSummarise(t *testing.T) {
	d, err := parsePingTimes(pingOut)
	if err != nil {
		t.Fatal(err)
	}
	want := []time.Duration{912 * time.Microsecond, 31 * time.Microsecond, 29 * time.Microsecond, 2400 * time.Microsecond, 33 * time.Microsecond}
	if len(d) != len(want) {
		t.Fatalf("parsed %v, want %v", d, want)
	}
	for i := range want {
		if d[i] != want[i] {
			t.Fatalf("parsed %v, want %v", d, want)
		}
	}
	// The first request (ARP, a CPU waking) is left out; the one late reply
	// does not move the median, as it moved the mean (0.681 ms).
	s := summarise(d, 1)
	if s.n != 4 || s.min != 29*time.Microsecond || s.p50 != 33*time.Microsecond {
		t.Errorf("summary %+v, want n=4 min=29µs p50=33µs", s)
	}
	// Fewer replies than skip: nothing is left out rather than nothing kept.
	if s := summarise(d[:1], 10); s.n != 1 || s.p50 != 912*time.Microsecond {
		t.Errorf("summary of one reply %+v", s)
	}
	if _, err := parsePingTimes("ping: connect: Network is unreachable\n"); !errors.Is(err, errNoReplies) {
		t.Errorf("no replies: err %v, want errNoReplies", err)
	}
}
