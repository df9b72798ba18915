// Package fastdp is weft's kernel fast path: unencrypted pod traffic between
// two hosts goes through an in-kernel VXLAN device instead of the userspace
// data plane (TUN, router, UDP).
//
// The layout is flannel's: one VXLAN device per host ("weft-vx"), and for
// every peer on the fast path
//
//	<peer's range> via <peer's underlay address> dev weft-vx onlink   (route, proto 87)
//	<peer's underlay address> lladdr <peer's VTEP MAC> PERMANENT      (neighbour)
//	<peer's VTEP MAC> dst <peer's underlay address> self permanent    (FDB)
//
// The routes are more specific than the whole-range route to the TUN, so
// removing a peer's routes falls that peer back to the userspace path at
// once, and adding them moves it to the kernel. Nothing is per pod: the IPAM
// ring is the routing table, as it is for the userspace path.
//
// The peer's underlay address serves as the next hop only as a key for the
// neighbour entry: the route is onlink, so the kernel never looks for that
// address on weft-vx itself, and the inner packet keeps its pod addresses.
//
// Everything is reached through Sync(desired), which is idempotent: the
// agent computes the desired state (Plan) from membership, the ring and the
// probes, and Sync converges the kernel to it. The device and its entries
// outlive the agent on purpose, so a restarted agent leaves fast-path
// traffic untouched; `weft reset` removes them (Remove).
package fastdp

import (
	"crypto/sha256"
	"errors"
	"net"
)

// Defaults. The VNI and port differ from flannel's (VNI 1, port 8472) and
// from the IANA VXLAN port 4789 that the kernel and most tools default to,
// so weft can run on a host that also runs those.
const (
	DefaultDevice = "weft-vx"
	DefaultVNI    = 6786
	DefaultPort   = 6786
	// Overhead is what VXLAN over IPv4 adds to an inner IP packet: outer
	// IPv4 (20), UDP (8), VXLAN (8) and the inner Ethernet header (14).
	Overhead = 50
	// RouteMetric of the fast-path routes. Lower than the TUN's whole-range
	// route (it is more specific anyway); higher than a local range route on
	// the bridge (metric 0), which wins while a range changes hands.
	RouteMetric = 50
)

// Errors at the package's boundary.
var (
	// ErrUnsupported: the kernel cannot make a VXLAN device (no module, no
	// permission). The agent then runs the userspace path only.
	ErrUnsupported = errors.New("fastdp: the kernel cannot create a VXLAN device")
	// ErrInvalid: a configuration or desired state that cannot be applied.
	ErrInvalid = errors.New("fastdp: invalid")
)

// MAC is the VTEP MAC of the peer named name: locally administered, unicast,
// and derived from the name, so that it stays the same when the device is
// re-created and peers' neighbour entries never go stale.
func MAC(name string) net.HardwareAddr {
	sum := sha256.Sum256([]byte("weft-vtep\x00" + name))
	mac := net.HardwareAddr(append([]byte(nil), sum[:6]...))
	mac[0] = mac[0]&0xfe | 0x02 // unicast, locally administered
	return mac
}
