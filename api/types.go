// Package api holds the JSON types and the client of the agent's local API.
//
// The agent serves these over HTTP on the unix socket <run-dir>/weft.sock; the
// CLI and the CNI shim are its clients. Field names are part of `weft report`'s
// stable JSON: add fields, never rename or remove them.
package api

import (
	"fmt"
	"net/netip"
	"time"
)

// SocketName is the file name of the local API socket inside --run-dir.
const SocketName = "weft.sock"

// Paths of the local API. All are JSON in and out.
const (
	PathStatus      = "/v1/status"      // GET  Status
	PathPeers       = "/v1/peers"       // GET  []Peer
	PathConnections = "/v1/connections" // GET  []Connection
	PathIPAM        = "/v1/ipam"        // GET  IPAMStatus
	PathTargets     = "/v1/targets"     // GET  []string
	PathReport      = "/v1/report"      // GET  Report
	PathConnect     = "/v1/connect"     // POST PeersRequest
	PathForget      = "/v1/forget"      // POST PeersRequest
	PathRmpeer      = "/v1/rmpeer"      // POST RmpeerRequest -> RmpeerResponse
	PathReset       = "/v1/reset"       // POST -> Empty
	PathAllocate    = "/v1/ipam/allocate"
	PathClaim       = "/v1/ipam/claim"
	PathRelease     = "/v1/ipam/release"
	PathGC          = "/v1/ipam/gc"
	PathContainers  = "/v1/containers"    // GET []Container (weft ps)
	PathNetwork     = "/v1/network"       // GET Network (what the CNI shim needs)
	PathCNITiming   = "/v1/cni/timing"    // POST CNITiming (the shim's own latency, for metrics)
	PathMesh        = "/v1/mesh"          // GET MeshHealth (weft status mesh)
	PathPolicy      = "/v1/status/policy" // GET PolicyStatus (weft status policy)
)

// Error is the body of every non-2xx answer.
type Error struct {
	// Code is a stable machine-readable reason, e.g. "not-ready", "exhausted".
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Stable error codes.
const (
	CodeNotReady  = "not-ready"   // IPAM cannot allocate yet; try again later
	CodeExhausted = "exhausted"   // no free address anywhere in the mesh
	CodeNotFound  = "not-found"   // unknown container or peer
	CodeBadInput  = "bad-request" // malformed request
	CodeConflict  = "conflict"    // e.g. rmpeer of a live peer, claim of a taken address
	CodeInternal  = "internal"
)

// Status is the overview of `weft status`.
type Status struct {
	Version    string        `json:"version"`
	Name       string        `json:"name"`
	Host       string        `json:"host"`        // underlay address
	Port       int           `json:"port"`        // gossip port; data is Port+1
	Encryption bool          `json:"encryption"`  // gossip and data encrypted
	Protocol   int           `json:"protocol"`    // wire protocol version
	Peers      int           `json:"peers"`       // members known, this one included
	Alive      int           `json:"alive"`       // members alive, this one included
	Targets    int           `json:"targets"`     // addresses this agent keeps joining
	Connected  int           `json:"connections"` // data-plane connections established
	Uptime     time.Duration `json:"uptime_ns"`
	Ready      bool          `json:"ready"`
	NotReady   string        `json:"not_ready,omitempty"` // why not ready, e.g. the host network is broken
	IPAM       *IPAMSummary  `json:"ipam,omitempty"`
	Datapath   string        `json:"datapath,omitempty"` // e.g. "tun-offload+udp-gso", "tun-water+udp-mmsg"
	MTU        int           `json:"mtu,omitempty"`
}

// Peer is one member of the mesh as this agent sees it.
type Peer struct {
	Name     string    `json:"name"`
	Address  string    `json:"address"`   // underlay host:port of gossip
	DataPort int       `json:"data_port"` // UDP port of the data plane
	State    string    `json:"state"`     // alive, suspect, dead, left
	Local    bool      `json:"local"`
	Version  string    `json:"version"`
	Protocol int       `json:"protocol"`
	Since    time.Time `json:"since"` // last state change seen
}

// Peer states.
const (
	StateAlive   = "alive"
	StateSuspect = "suspect"
	StateDead    = "dead"
	StateLeft    = "left"
	// StateUnknown: known from the agent's last run (its state dir), not
	// yet heard of in gossip since the start.
	StateUnknown = "unknown"
)

// Connection is the data-plane view of one remote peer.
type Connection struct {
	Peer       string            `json:"peer"`
	Address    string            `json:"address"` // underlay host:port of data
	State      string            `json:"state"`   // established, connecting, down
	Reason     string            `json:"reason,omitempty"`
	Encrypted  bool              `json:"encrypted"`
	Cipher     string            `json:"cipher,omitempty"`
	Datapath   string            `json:"datapath,omitempty"`
	MTU        int               `json:"mtu"`
	LastHeard  time.Time         `json:"last_heard,omitzero"`
	LastRekey  time.Time         `json:"last_rekey,omitzero"`
	TxPackets  uint64            `json:"tx_packets"`
	TxBytes    uint64            `json:"tx_bytes"`
	RxPackets  uint64            `json:"rx_packets"`
	RxBytes    uint64            `json:"rx_bytes"`
	DropsByWhy map[string]uint64 `json:"drops,omitempty"`

	// DatapathReason says why the pair is not on the kernel fast path
	// (Datapath is then the userspace path's, e.g. "tun-offload"; on the
	// fast path it is "fastdp").
	DatapathReason string `json:"datapath_reason,omitempty"`
}

// IPAMSummary is the line in the overview.
type IPAMSummary struct {
	State string `json:"state"` // e.g. "ready", "awaiting consensus (1 of 3 known, quorum 2)", "observer"
	Range string `json:"range"`
	Ready bool   `json:"ready"`
}

// IPAMStatus is `weft status ipam`.
type IPAMStatus struct {
	IPAMSummary
	Mode    string          `json:"mode"` // seed, consensus, observer, kube
	Entries []IPAMPeerShare `json:"peers"`
}

// IPAMPeerShare is one owner's share of the ring.
type IPAMPeerShare struct {
	Name      string   `json:"name"`
	Owned     uint64   `json:"owned"`  // addresses owned
	Share     float64  `json:"share"`  // fraction of the whole range, 0..1
	InUse     uint64   `json:"in_use"` // known only for the local peer and from gossip
	Free      uint64   `json:"free"`
	Reachable bool     `json:"reachable"`
	Local     bool     `json:"local"`
	Ranges    []string `json:"ranges,omitempty"`
}

// Report is `weft report`: everything, as stable JSON.
type Report struct {
	Status      Status        `json:"status"`
	Peers       []Peer        `json:"peers"`
	Connections []Connection  `json:"connections"`
	IPAM        *IPAMStatus   `json:"ipam,omitempty"`
	Targets     []string      `json:"targets"`
	Containers  []Container   `json:"containers,omitempty"`
	Mesh        *MeshHealth   `json:"mesh,omitempty"`
	Policy      *PolicyStatus `json:"policy,omitempty"`
}

// PolicyStatus is `weft status policy`: NetworkPolicy enforcement on this
// node.
type PolicyStatus struct {
	// Enabled: this agent enforces NetworkPolicy (Kubernetes, and
	// --network-policy not false). Reason says why not, or what it waits for.
	Enabled bool   `json:"enabled"`
	Reason  string `json:"reason,omitempty"`
	// Synced: the first full list of pods, namespaces and policies is in;
	// until then the table a previous agent left stays, and CNI ADD answers
	// "try again".
	Synced       bool `json:"synced"`
	Policies     int  `json:"policies"`      // NetworkPolicy objects known (cluster-wide)
	LocalPods    int  `json:"local_pods"`    // pods on this node with an address
	SelectedPods int  `json:"selected_pods"` // of those, selected by at least one policy (isolated)
	// Sets and Rules are the size of what is programmed in nftables: they
	// grow with the policies, not with pods times policies.
	Sets  int `json:"sets"`
	Rules int `json:"rules"`
	// The last transaction: when, how long it took, and its error if it failed.
	LastApply     time.Time     `json:"last_apply,omitzero"`
	LastApplyTook time.Duration `json:"last_apply_took_ns"`
	LastError     string        `json:"last_error,omitempty"`
	Applies       uint64        `json:"applies"`        // transactions since start
	ApplyFailures uint64        `json:"apply_failures"` // of those, failed (retried)
	DropsIngress  uint64        `json:"drops_ingress"`  // packets denied by ingress rules
	DropsEgress   uint64        `json:"drops_egress"`   // packets denied by egress rules
}

// MeshHealth is `weft status mesh`: each peer's own summary of its health
// and its connections, as gossiped to this agent. Together they are the
// N×N matrix of who reaches whom.
type MeshHealth struct {
	Peers []PeerHealth `json:"peers"`
}

// PeerHealth is one peer's summary of itself.
type PeerHealth struct {
	Name     string `json:"name"`
	Version  string `json:"version"`
	Ready    bool   `json:"ready"`
	Datapath string `json:"datapath,omitempty"`
	// Age is how long ago this agent last heard the summary.
	Age time.Duration `json:"age_ns"`
	// Links and Established count the peer's connections. A summary
	// gossips only its exceptions; Connections fills in the established
	// ones from this agent's view of the members when the counts agree,
	// and leaves them out (unknown) when not, or when Truncated: the peer
	// had more exceptions than a summary carries.
	Links       int        `json:"links"`
	Established int        `json:"established"`
	Truncated   bool       `json:"truncated,omitempty"`
	Connections []PeerLink `json:"connections"`
}

// PeerLink is one connection as the peer that has it sees it.
type PeerLink struct {
	Peer     string `json:"peer"`
	State    string `json:"state"`              // established, connecting, down
	Datapath string `json:"datapath,omitempty"` // of an established connection
}

// PeersRequest names peers for connect and forget: host or host:port.
type PeersRequest struct {
	Peers []string `json:"peers"`
}

// RmpeerRequest asks this agent to take over a dead peer's ranges.
type RmpeerRequest struct {
	Name string `json:"name"`
}

// RmpeerResponse says how many addresses were taken over.
type RmpeerResponse struct {
	Reclaimed uint64 `json:"reclaimed"`
}

// AllocateRequest asks for an address for one interface of one container.
// Allocate is idempotent per (ContainerID, IfName).
type AllocateRequest struct {
	ContainerID string `json:"container_id"`
	IfName      string `json:"ifname"`
	Netns       string `json:"netns,omitempty"` // informational, shown by weft ps
	// PodNamespace and PodName are K8S_POD_NAMESPACE and K8S_POD_NAME from
	// the runtime's CNI_ARGS, when it passed them: shown by weft ps.
	PodNamespace string `json:"pod_namespace,omitempty"`
	PodName      string `json:"pod_name,omitempty"`
	// PodUID is K8S_POD_UID, when passed: the agent's network policy gate
	// waits for this very pod in its cache, not an older one of the name.
	PodUID string `json:"pod_uid,omitempty"`
	// Address, for Claim only: the address (no prefix) the container had.
	Address string `json:"address,omitempty"`
}

// AllocateResponse is what a pod interface needs.
type AllocateResponse struct {
	Address string   `json:"address"` // CIDR form, e.g. 10.32.0.5/32
	Gateway string   `json:"gateway"` // the bridge address on this host
	Routes  []string `json:"routes"`  // destinations routed via Gateway, e.g. 0.0.0.0/0
	MTU     int      `json:"mtu"`
}

// ReleaseRequest frees the address of one container interface. An empty IfName
// releases every interface of the container.
type ReleaseRequest struct {
	ContainerID string `json:"container_id"`
	IfName      string `json:"ifname,omitempty"`
}

// GCRequest releases every allocation not in Valid.
type GCRequest struct {
	Valid []Attachment `json:"valid"`
}

// Attachment names one container interface.
type Attachment struct {
	ContainerID string `json:"container_id"`
	IfName      string `json:"ifname"`
}

// GCResponse says what GC released.
type GCResponse struct {
	Released []Attachment `json:"released"`
}

// Container is one allocation on this host, for `weft ps`.
type Container struct {
	ContainerID string    `json:"container_id"`
	IfName      string    `json:"ifname"`
	Address     string    `json:"address"` // no prefix, e.g. 10.32.0.5; read it with Addr
	Netns       string    `json:"netns,omitempty"`
	Created     time.Time `json:"created"`
	// PodNamespace and PodName, where the runtime named the pod (Kubernetes).
	PodNamespace string `json:"pod_namespace,omitempty"`
	PodName      string `json:"pod_name,omitempty"`
}

// Addr parses Address. It also accepts the CIDR form (10.32.0.5/32), so a
// client keeps working with an agent that writes it either way.
func (c Container) Addr() (netip.Addr, error) {
	if a, err := netip.ParseAddr(c.Address); err == nil {
		return a, nil
	}
	p, err := netip.ParsePrefix(c.Address)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("container %s/%s: address %q: not an IP address", c.ContainerID, c.IfName, c.Address)
	}
	return p.Addr(), nil
}

// Network describes the host network the shim attaches pods to.
type Network struct {
	Bridge  string `json:"bridge"`
	Gateway string `json:"gateway"` // bridge address, no prefix
	Range   string `json:"range"`   // the overlay range
	MTU     int    `json:"mtu"`
}

// CNITiming is what the CNI shim measured of one operation, reported after
// it for weft_cni_add_seconds: only the shim sees a whole ADD.
type CNITiming struct {
	Op      string  `json:"op"` // CNIOpAdd
	Seconds float64 `json:"seconds"`
	Failed  bool    `json:"failed,omitempty"`
}

// CNI operations reported in CNITiming.
const CNIOpAdd = "add"
