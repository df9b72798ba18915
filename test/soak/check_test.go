package soak

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/weftnet/weft/internal/netnstest"
	"github.com/weftnet/weft/test/testbed"
)

// ipamView is what one agent says through its API: the ranges it owns and
// the allocations it holds.
type ipamView struct {
	host   *testbed.Host
	owned  []netip.Prefix
	allocs map[string]netip.Addr // "container/ifname" -> address
}

func fetchView(ctx context.Context, h *testbed.Host) (*ipamView, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c := h.Client()
	st, err := c.IPAM(ctx)
	if err != nil {
		return nil, err
	}
	cs, err := c.Containers(ctx)
	if err != nil {
		return nil, err
	}
	v := &ipamView{host: h, allocs: map[string]netip.Addr{}}
	for _, e := range st.Entries {
		if !e.Local {
			continue
		}
		for _, r := range e.Ranges {
			p, err := netip.ParsePrefix(r)
			if err != nil {
				return nil, fmt.Errorf("%s: owned range %q: %w", h.Name, r, err)
			}
			v.owned = append(v.owned, p)
		}
	}
	for _, c := range cs {
		a, err := c.Addr()
		if err != nil {
			return nil, fmt.Errorf("%s: container %s: %w", h.Name, c.ContainerID, err)
		}
		v.allocs[c.ContainerID+"/"+c.IfName] = a
	}
	return v, nil
}

// checkIPAM compares the views of a mesh's agents that answer: no address is
// owned by two of them or allocated by two of them, and every pod still
// holds its address on its host. It returns the violations found.
func checkIPAM(ctx context.Context, m *mesh) []string {
	var views []*ipamView
	for _, h := range m.hosts {
		if !h.Running() {
			continue
		}
		v, err := fetchView(ctx, h)
		if err != nil {
			continue // restarting, or its disk is full: checked at the next round
		}
		views = append(views, v)
	}
	var out []string
	for i, a := range views {
		for _, b := range views[i+1:] {
			for _, pa := range a.owned {
				for _, pb := range b.owned {
					if pa.Overlaps(pb) {
						out = append(out, fmt.Sprintf("%s owns %s and %s owns %s: two owners of one address", a.host.Name, pa, b.host.Name, pb))
					}
				}
			}
		}
	}
	holder := map[netip.Addr]string{}
	for _, v := range views {
		for key, a := range v.allocs {
			if other, dup := holder[a]; dup {
				out = append(out, fmt.Sprintf("%s allocated twice: %s and %s/%s", a, other, v.host.Name, key))
			}
			holder[a] = v.host.Name + "/" + key
		}
	}
	for _, v := range views {
		for _, p := range m.pods {
			if p.Host != v.host {
				continue
			}
			if got, ok := v.allocs[p.containerID+"/eth0"]; !ok || got != p.Addr {
				out = append(out, fmt.Sprintf("%s lost the allocation of pod %s (%s): has %v", v.host.Name, p.Name, p.Addr, got))
			}
		}
	}
	sort.Strings(out)
	return out
}

// sample is one reading of an agent's /metrics.
type sample struct {
	at         time.Time
	goroutines float64
	rss        float64
}

// readMetrics fetches h's /metrics over a connection dialled inside h's
// namespace (the agent listens on its loopback there).
func readMetrics(ctx context.Context, h *testbed.Host) (sample, error) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := netnstest.Do(h.Netns, func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:6782/metrics", nil)
	if err != nil {
		return sample{}, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return sample{}, err
	}
	defer resp.Body.Close()
	s := sample{at: time.Now(), goroutines: -1, rss: -1}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		switch name {
		case "go_goroutines":
			s.goroutines, _ = strconv.ParseFloat(val, 64)
		case "process_resident_memory_bytes":
			s.rss, _ = strconv.ParseFloat(val, 64)
		}
	}
	if s.goroutines < 0 || s.rss < 0 {
		return sample{}, fmt.Errorf("%s: /metrics without go_goroutines or process_resident_memory_bytes", h.Name)
	}
	return s, sc.Err()
}

// growth bounds: past the warm-up, an agent may hold this many more
// goroutines and this much more memory than at its baseline. A leak of one
// goroutine or a few KiB per packet, fault or restart goes past them within
// minutes; the bounds leave room for sessions re-established and GC slack.
const (
	goroutineSlack = 100
	rssSlack       = 64 << 20
)

// flat checks one host's samples: the baseline is the median of the first
// few, and no later sample may pass baseline*1.5 plus the slack.
func flat(name string, ss []sample) (summary string, violation string) {
	if len(ss) < 4 {
		return fmt.Sprintf("%-6s %d samples (too few to judge)", name, len(ss)), ""
	}
	head := min(len(ss)/4+1, 5)
	base := median(ss[:head])
	var maxG, maxR float64
	for _, s := range ss {
		maxG, maxR = max(maxG, s.goroutines), max(maxR, s.rss)
	}
	last := ss[len(ss)-1]
	summary = fmt.Sprintf("%-6s goroutines %4.0f -> max %4.0f, last %4.0f   RSS %5.1f -> max %5.1f, last %5.1f MiB",
		name, base.goroutines, maxG, last.goroutines, base.rss/(1<<20), maxR/(1<<20), last.rss/(1<<20))
	limG, limR := base.goroutines*1.5+goroutineSlack, base.rss*1.5+rssSlack
	for _, s := range ss[head:] {
		if s.goroutines > limG || s.rss > limR {
			return summary, fmt.Sprintf("%s grew: %.0f goroutines, %.1f MiB RSS at %s, bound %.0f and %.1f MiB",
				name, s.goroutines, s.rss/(1<<20), s.at.Format(time.TimeOnly), limG, limR/(1<<20))
		}
	}
	return summary, ""
}

func median(ss []sample) sample {
	g := make([]float64, len(ss))
	r := make([]float64, len(ss))
	for i, s := range ss {
		g[i], r[i] = s.goroutines, s.rss
	}
	sort.Float64s(g)
	sort.Float64s(r)
	return sample{goroutines: g[len(g)/2], rss: r[len(r)/2]}
}
