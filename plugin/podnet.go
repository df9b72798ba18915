package plugin

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
)

// hostVethPrefix starts the name of every host-side veth weft-cni creates.
const hostVethPrefix = "vethwe"

// HostVethName is the host end's name for one pod interface. It is derived
// from the container ID and interface name only, so DEL finds the link with
// no state kept between calls. 6+8 characters fit IFNAMSIZ (15).
func HostVethName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "\x00" + ifName))
	return hostVethPrefix + hex.EncodeToString(sum[:4])
}

// Attachment is everything needed to wire one pod interface.
type Attachment struct {
	Netns    string       // path of the pod's network namespace
	IfName   string       // interface name inside the pod (CNI_IFNAME)
	HostVeth string       // host end's name, see HostVethName
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
	// is success.
	Detach(netnsPath, ifName, hostVeth string) error
	// Check verifies that what Attach made is still in place.
	Check(a Attachment) error
}
