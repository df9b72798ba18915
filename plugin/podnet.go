package plugin

import (
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
)

// hostVethPrefix starts the name of every host-side veth weft-cni creates.
const hostVethPrefix = "vethwe"

// HostVethName is the host end's name for one pod interface. It is derived
// from the container ID and interface name only, so DEL finds the link with
// no state kept between calls. 6 characters of prefix and 9 of base32 hash
// (45 bits) fill IFNAMSIZ (15); the full identity is in the link's alias
// (HostVethOwner), so a hash collision is refused instead of taking over
// another pod's link.
func HostVethName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "\x00" + ifName))
	return hostVethPrefix + vethEncoding.EncodeToString(sum[:6])[:15-len(hostVethPrefix)]
}

var vethEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// HostVethOwner is the alias weft-cni gives the host veth of one pod
// interface: it names the owner in full, where the link name has room for a
// hash only.
func HostVethOwner(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "\x00" + ifName))
	return "weft-cni:" + hex.EncodeToString(sum[:])
}

// ErrVethTaken says a host link with the pod interface's name belongs to
// another container (a hash collision): weft-cni neither deletes nor reuses it.
var ErrVethTaken = errors.New("host veth belongs to another container")

// Attachment is everything needed to wire one pod interface.
type Attachment struct {
	Netns    string       // path of the pod's network namespace
	IfName   string       // interface name inside the pod (CNI_IFNAME)
	HostVeth string       // host end's name, see HostVethName
	Owner    string       // host end's alias, see HostVethOwner
	Bridge   string       // bridge the host end joins
	Address  netip.Prefix // the pod's address, a /32
	Gateway  netip.Addr   // reached by a link-scope route from the pod
	Routes   []netip.Prefix
	MTU      int // 0 leaves the kernel default
}

// Links describes what Attach made, for the CNI result.
type Links struct {
	HostMAC net.HardwareAddr
	PodMAC  net.HardwareAddr
}

// ErrNoBridge says the bridge is missing: deleted a moment ago, the agent
// re-creates it (its reconcile loop), so ADD answers "try again".
var ErrNoBridge = errors.New("the weft bridge is missing")

// ErrNetnsGone says the pod's network namespace no longer exists.
var ErrNetnsGone = errors.New("network namespace does not exist")

// PodNetwork does the kernel work of the shim. The netlink implementation is
// the real one; tests put a fake in its place to exercise the CNI logic
// without root.
type PodNetwork interface {
	// Attach creates and configures both ends. It is all or nothing: on error
	// nothing it made is left behind.
	Attach(a Attachment) (Links, error)
	// Detach removes the pod interface. Idempotent: a missing link or netns
	// is success. A host veth whose alias is not owner is another
	// container's and is left alone.
	Detach(netnsPath, ifName, hostVeth, owner string) error
	// Check verifies that what Attach made is still in place.
	Check(a Attachment) error
}
