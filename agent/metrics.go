package agent

import (
	"fmt"
	"net"
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/mesh"
	"github.com/weftnet/weft/router"
)

// Metric descriptions. The values are read from the components at scrape
// time, so the data path pays nothing for metrics.
var (
	descPeers = prometheus.NewDesc("weft_peers", "Members of the mesh as this agent sees them, by state (this agent included).",
		[]string{"state"}, nil)
	descGossipMembers = prometheus.NewDesc("weft_gossip_members", "Alive members of the gossip mesh, this agent included.", nil, nil)
	descBcastQueued   = prometheus.NewDesc("weft_gossip_broadcasts_queued", "Subsystem broadcasts waiting in the gossip queue.", nil, nil)
	descBcastDropped  = prometheus.NewDesc("weft_gossip_broadcasts_dropped_total", "Subsystem broadcasts dropped because the gossip queue was full.", nil, nil)
	descConnections   = prometheus.NewDesc("weft_connections", "Data-plane connections to remote peers, by state and encryption.",
		[]string{"state", "encryption"}, nil)
	descTxPackets = prometheus.NewDesc("weft_peer_tx_packets_total", "Packets sent to a peer.", []string{"peer"}, nil)
	descTxBytes   = prometheus.NewDesc("weft_peer_tx_bytes_total", "Bytes of inner packets sent to a peer.", []string{"peer"}, nil)
	descRxPackets = prometheus.NewDesc("weft_peer_rx_packets_total", "Packets received from a peer.", []string{"peer"}, nil)
	descRxBytes   = prometheus.NewDesc("weft_peer_rx_bytes_total", "Bytes of inner packets received from a peer.", []string{"peer"}, nil)
	descDrops     = prometheus.NewDesc("weft_dropped_packets_total", "Packets the data plane refused, by reason.", []string{"reason"}, nil)
	descCrypto    = prometheus.NewDesc("weft_crypto_events_total", "Handshake and decryption events (failures by reason, rekeys, ...).", []string{"event"}, nil)
	descOwned     = prometheus.NewDesc("weft_ipam_addresses_owned", "Addresses of the range owned, by peer reachability as seen from here.",
		[]string{"peer", "reachable"}, nil)
	descInUse   = prometheus.NewDesc("weft_ipam_addresses_in_use", "Addresses allocated to containers on this host.", nil, nil)
	descUnreach = prometheus.NewDesc("weft_ipam_addresses_unreachable", "Addresses owned by peers that are not reachable (candidates for rmpeer).", nil, nil)
	descReady   = prometheus.NewDesc("weft_ready", "1 when this host can network pods.", nil, nil)
	descMTU     = prometheus.NewDesc("weft_mtu", "Overlay MTU of this host.", nil, nil)
	descRepairs = prometheus.NewDesc("weft_repairs_total", "Repairs of the host network by the reconcile loop, by what was broken (bridge, bridge_addr, route, sysctl, nftables, tun).",
		[]string{"what"}, nil)
	descPending = prometheus.NewDesc("weft_ipam_pending_allocations", "Allocation requests waiting (e.g. for a donation).", nil, nil)
	descBuild   = prometheus.NewDesc("weft_build_info", "Always 1; the labels say which weft runs here and on which data path.",
		[]string{"version", "goversion", "datapath"}, nil)
	descPeerDatapath = prometheus.NewDesc("weft_peer_datapath", "Datapath of the pair with a peer: 1 on the named one (fastdp: kernel VXLAN; userspace).",
		[]string{"peer", "datapath"}, nil)
	descFallbacks = prometheus.NewDesc("weft_fastdp_fallbacks_total", "Times the pair with a peer left the kernel fast path for userspace (probe unanswered, peer changed).",
		[]string{"peer"}, nil)
	descFastdpOn      = prometheus.NewDesc("weft_fastdp_enabled", "1 when this host offers the kernel fast path (VXLAN device up).", nil, nil)
	descFastdpPackets = prometheus.NewDesc("weft_fastdp_device_packets_total", "Packets through the VXLAN device, by direction.", []string{"direction"}, nil)
	descFastdpBytes   = prometheus.NewDesc("weft_fastdp_device_bytes_total", "Bytes of inner frames through the VXLAN device, by direction.", []string{"direction"}, nil)
	descFastdpDropped = prometheus.NewDesc("weft_fastdp_device_dropped_total", "Packets the VXLAN device dropped, by direction.", []string{"direction"}, nil)
	descFastdpErrors  = prometheus.NewDesc("weft_fastdp_device_errors_total", "Errors of the VXLAN device, by direction.", []string{"direction"}, nil)
	descPolicyDrops   = prometheus.NewDesc("weft_policy_drops_total", "Packets NetworkPolicy denied on this node, by direction (ingress: to a local pod; egress: from one).",
		[]string{"direction"}, nil)
	descPolicies       = prometheus.NewDesc("weft_policy_policies", "NetworkPolicy objects the enforcement on this node knows (cluster-wide).", nil, nil)
	descPolicySelected = prometheus.NewDesc("weft_policy_selected_pods", "Pods on this node that at least one NetworkPolicy selects (isolated).", nil, nil)
)

// Termination reasons of weft_connection_terminations_total: why a remote
// peer this agent had as alive stopped being reachable.
const (
	termPeerFailed  = "peer-failed"  // gossip declared it dead (no answer to probes)
	termPeerLeft    = "peer-left"    // it left the mesh cleanly (shutdown, reset)
	termPeerRemoved = "peer-removed" // it vanished from the member list (reaped, rmpeer)
)

// terminationReasons are exported at zero from the start, so that rate()
// and alerts see the series before the first flap.
var terminationReasons = []string{termPeerFailed, termPeerLeft, termPeerRemoved}

// latencyBuckets span a fast local allocation (~100 µs) to an ADD that
// waited for a donation from another host (seconds).
var latencyBuckets = prometheus.ExponentialBuckets(0.0001, 2.5, 14)

// agentMetrics are the metrics that are events rather than state read at
// scrape time: latencies and connection terminations.
type agentMetrics struct {
	cniAdd       prometheus.Histogram
	ipamAllocate prometheus.Histogram
	terminations *prometheus.CounterVec
	policyApply  prometheus.Histogram

	mu   sync.Mutex
	last map[string]mesh.State // remote members' states at the last change
}

func newAgentMetrics() *agentMetrics {
	m := &agentMetrics{
		cniAdd: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "weft_cni_add_seconds",
			Help: "Duration of CNI ADD as the weft-cni shim measured it, allocation and pod attachment included.", Buckets: latencyBuckets}),
		ipamAllocate: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "weft_ipam_allocate_seconds",
			Help: "Duration of address allocations for pods (successful or not), waiting for a donation included.", Buckets: latencyBuckets}),
		terminations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "weft_connection_terminations_total",
			Help: "Connections to remote peers lost, by reason (a rising rate is flapping)."}, []string{"reason"}),
		policyApply: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "weft_policy_apply_seconds",
			Help: "Duration of NetworkPolicy transactions into nftables (informer batches and CNI ADDs).", Buckets: latencyBuckets}),
		last: map[string]mesh.State{},
	}
	for _, r := range terminationReasons {
		m.terminations.WithLabelValues(r)
	}
	return m
}

// membersChanged counts the remote peers that were reachable at the last
// change and are not any more. self is this agent's name.
func (m *agentMetrics) membersChanged(self string, members []mesh.PeerInfo) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := make(map[string]mesh.State, len(members))
	for _, p := range members {
		if p.Name == self {
			continue
		}
		now[p.Name] = p.State
		was, ok := m.last[p.Name]
		if !ok || was.Gone() || !p.State.Gone() {
			continue
		}
		if p.State == mesh.StateLeft {
			m.terminations.WithLabelValues(termPeerLeft).Inc()
		} else {
			m.terminations.WithLabelValues(termPeerFailed).Inc()
		}
	}
	for name, was := range m.last {
		if _, ok := now[name]; !ok && !was.Gone() {
			m.terminations.WithLabelValues(termPeerRemoved).Inc()
		}
	}
	m.last = now
}

// observeCNI records one CNI operation the shim reported.
func (m *agentMetrics) observeCNI(t api.CNITiming) {
	if t.Op == api.CNIOpAdd && t.Seconds >= 0 {
		m.cniAdd.Observe(t.Seconds)
	}
}

func (m *agentMetrics) observePolicyApply(d time.Duration) {
	m.policyApply.Observe(d.Seconds())
}

func (m *agentMetrics) observeAllocate(start time.Time) {
	m.ipamAllocate.Observe(time.Since(start).Seconds())
}

type collector struct{ a *Agent }

func (c collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c collector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	ready := 0.0
	if a.Ready() {
		ready = 1
	}
	gauge(descReady, ready)
	datapath := "starting"
	if a.running() {
		datapath = "none"
		if a.dp != nil {
			datapath = a.dp.router.Datapath()
		}
	}
	gauge(descBuild, 1, api.Version, runtime.Version(), datapath)
	gauge(descPending, float64(a.pendingAllocs.Load()))
	a.repairs.each(func(what string, n uint64) { counter(descRepairs, n, what) })
	if a.policy != nil {
		st := a.policy.status()
		counter(descPolicyDrops, st.DropsIngress, "ingress")
		counter(descPolicyDrops, st.DropsEgress, "egress")
		gauge(descPolicies, float64(st.Policies))
		gauge(descPolicySelected, float64(st.SelectedPods))
	}
	if a.running() {
		byState := map[mesh.State]int{}
		for _, p := range a.mesh.Peers() {
			byState[p.State]++
		}
		for _, st := range mesh.States() {
			gauge(descPeers, float64(byState[st]), st.String())
		}
		_, alive := a.mesh.Counts()
		gauge(descGossipMembers, float64(alive))
		bs := a.mesh.BroadcastStats()
		gauge(descBcastQueued, float64(bs.Queued))
		counter(descBcastDropped, bs.Dropped)
	}
	if a.running() && a.dp != nil {
		gauge(descMTU, float64(a.dp.mtu))
		conns := map[[2]string]int{}
		for _, cn := range a.connections() {
			enc := "none"
			if cn.Encrypted {
				enc = "encrypted"
			}
			conns[[2]string{cn.State, enc}]++
		}
		for k, n := range conns {
			gauge(descConnections, float64(n), k[0], k[1])
		}
		if a.cfg.NoPerPeerMetrics {
			// One series per datapath for all peers: per-peer series grow
			// as N² across a cluster (--metrics-per-peer=false).
			pairs := map[string]float64{}
			for _, cn := range a.connections() {
				pairs[pairDatapath(cn.Datapath)]++
			}
			for dp, n := range pairs {
				gauge(descPeerDatapath, n, "", dp)
			}
		} else {
			for _, cn := range a.connections() {
				gauge(descPeerDatapath, 1, cn.Peer, pairDatapath(cn.Datapath))
			}
		}
		c.fastPath(gauge, counter)
		if a.cfg.NoPerPeerMetrics {
			// One series for all peers: per-peer series grow as N² across
			// a cluster (--metrics-per-peer=false).
			var sum router.PeerStats
			for _, s := range a.dp.router.Stats() {
				sum.TxPackets += s.TxPackets
				sum.TxBytes += s.TxBytes
				sum.RxPackets += s.RxPackets
				sum.RxBytes += s.RxBytes
			}
			counter(descTxPackets, sum.TxPackets, "")
			counter(descTxBytes, sum.TxBytes, "")
			counter(descRxPackets, sum.RxPackets, "")
			counter(descRxBytes, sum.RxBytes, "")
		} else {
			for _, s := range a.dp.router.Stats() {
				counter(descTxPackets, s.TxPackets, s.Peer)
				counter(descTxBytes, s.TxBytes, s.Peer)
				counter(descRxPackets, s.RxPackets, s.Peer)
				counter(descRxBytes, s.RxBytes, s.Peer)
			}
		}
		drops := a.dp.router.Drops()
		for _, why := range router.DropReasons() {
			counter(descDrops, drops[why], why)
		}
		if a.dp.crypto != nil {
			for ev, n := range a.dp.crypto.Counters() {
				counter(descCrypto, n, ev)
			}
		}
	}
	if a.running() {
		st := a.ipam.Status()
		var unreachable uint64
		owned := map[bool]uint64{} // by reachability, without --metrics-per-peer
		for _, e := range st.Entries {
			if a.cfg.NoPerPeerMetrics {
				owned[e.Reachable] += e.Owned
			} else {
				gauge(descOwned, float64(e.Owned), e.Name, fmt.Sprint(e.Reachable))
			}
			if e.Local {
				gauge(descInUse, float64(e.InUse))
			}
			if !e.Reachable {
				unreachable += e.Owned
			}
		}
		gauge(descUnreach, float64(unreachable))
		if a.cfg.NoPerPeerMetrics {
			for _, r := range []bool{true, false} {
				gauge(descOwned, float64(owned[r]), "", fmt.Sprint(r))
			}
		}
	}
}

// MetricsHandler serves this agent's metrics in the Prometheus format, as
// /metrics does; tests scrape an in-process agent through it.
func (a *Agent) MetricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{a}, a.met.cniAdd, a.met.ipamAllocate, a.met.terminations, a.met.policyApply,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

// serveMetrics serves Prometheus /metrics on --metrics-addr.
func (a *Agent) serveMetrics() (*httpServer, error) {
	ln, err := net.Listen("tcp", a.cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", a.MetricsHandler())
	a.log.Info("metrics listening", "address", ln.Addr().String())
	return serve(ln, mux), nil
}

// fastPath reports the kernel fast path: on or off, the device's own
// counters, and the fall-backs per peer.
func (c collector) fastPath(gauge func(*prometheus.Desc, float64, ...string), counter func(*prometheus.Desc, uint64, ...string)) {
	fp := c.a.fp
	on := 0.0
	if fp.enabled() {
		on = 1
	}
	gauge(descFastdpOn, on)
	if st, ok := fp.stats(); ok {
		for _, d := range []struct {
			dir                      string
			packets, bytes, drop, er uint64
		}{
			{"rx", st.RxPackets, st.RxBytes, st.RxDropped, st.RxErrors},
			{"tx", st.TxPackets, st.TxBytes, st.TxDropped, st.TxErrors},
		} {
			counter(descFastdpPackets, d.packets, d.dir)
			counter(descFastdpBytes, d.bytes, d.dir)
			counter(descFastdpDropped, d.drop, d.dir)
			counter(descFastdpErrors, d.er, d.dir)
		}
	}
	c.fallbacks(counter)
}

// pairDatapath is the datapath label of a pair: fastdp or userspace.
func pairDatapath(d string) string {
	if d == pairFastdp {
		return pairFastdp
	}
	return pairUserspace
}

// fallbacks exports weft_fastdp_fallbacks_total for every peer with a
// connection, from zero (one sum with --metrics-per-peer=false), so that
// rate() and alerts see the series before the first fall-back.
func (c collector) fallbacks(counter func(*prometheus.Desc, uint64, ...string)) {
	var counts map[string]uint64
	if c.a.fp != nil {
		counts = c.a.fp.fallbackCounts()
	}
	if c.a.cfg.NoPerPeerMetrics {
		var sum uint64
		for _, n := range counts {
			sum += n
		}
		counter(descFallbacks, sum, "")
		return
	}
	for _, cn := range c.a.connections() {
		counter(descFallbacks, counts[cn.Peer], cn.Peer)
	}
}
