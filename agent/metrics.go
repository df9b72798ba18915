package agent

import (
	"fmt"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

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
	descInUse        = prometheus.NewDesc("weft_ipam_addresses_in_use", "Addresses allocated to containers on this host.", nil, nil)
	descUnreach      = prometheus.NewDesc("weft_ipam_addresses_unreachable", "Addresses owned by peers that are not reachable (candidates for rmpeer).", nil, nil)
	descReady        = prometheus.NewDesc("weft_ready", "1 when this host can network pods.", nil, nil)
	descMTU          = prometheus.NewDesc("weft_mtu", "Overlay MTU of this host.", nil, nil)
	descPeerDatapath = prometheus.NewDesc("weft_peer_datapath", "Datapath of the pair with a peer: 1 on the named one (fastdp: kernel VXLAN; userspace).",
		[]string{"peer", "datapath"}, nil)
	descFallbacks = prometheus.NewDesc("weft_fastdp_fallbacks_total", "Times the pair with a peer left the kernel fast path for userspace (probe unanswered, peer changed).",
		[]string{"peer"}, nil)
	descFastdpOn      = prometheus.NewDesc("weft_fastdp_enabled", "1 when this host offers the kernel fast path (VXLAN device up).", nil, nil)
	descFastdpPackets = prometheus.NewDesc("weft_fastdp_device_packets_total", "Packets through the VXLAN device, by direction.", []string{"direction"}, nil)
	descFastdpBytes   = prometheus.NewDesc("weft_fastdp_device_bytes_total", "Bytes of inner frames through the VXLAN device, by direction.", []string{"direction"}, nil)
	descFastdpDropped = prometheus.NewDesc("weft_fastdp_device_dropped_total", "Packets the VXLAN device dropped, by direction.", []string{"direction"}, nil)
	descFastdpErrors  = prometheus.NewDesc("weft_fastdp_device_errors_total", "Errors of the VXLAN device, by direction.", []string{"direction"}, nil)
	descPending       = prometheus.NewDesc("weft_ipam_pending_allocations", "Allocation requests waiting (e.g. for a donation).", nil, nil)
)

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
	gauge(descPending, float64(a.pendingAllocs.Load()))
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
		for _, cn := range a.connections() {
			dp := pairUserspace
			if cn.Datapath == pairFastdp {
				dp = pairFastdp
			}
			gauge(descPeerDatapath, 1, cn.Peer, dp)
		}
		c.fastPath(gauge, counter)
		for _, s := range a.dp.router.Stats() {
			counter(descTxPackets, s.TxPackets, s.Peer)
			counter(descTxBytes, s.TxBytes, s.Peer)
			counter(descRxPackets, s.RxPackets, s.Peer)
			counter(descRxBytes, s.RxBytes, s.Peer)
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
		for _, e := range st.Entries {
			gauge(descOwned, float64(e.Owned), e.Name, fmt.Sprint(e.Reachable))
			if e.Local {
				gauge(descInUse, float64(e.InUse))
			}
			if !e.Reachable {
				unreachable += e.Owned
			}
		}
		gauge(descUnreach, float64(unreachable))
	}
}

// serveMetrics serves Prometheus /metrics on --metrics-addr.
func (a *Agent) serveMetrics() (*httpServer, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{a}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ln, err := net.Listen("tcp", a.cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
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
	if fp == nil {
		return
	}
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
	for peer, n := range fp.fallbackCounts() {
		counter(descFallbacks, n, peer)
	}
}
