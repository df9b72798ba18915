package plugin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/vishvananda/netns"
	"github.com/weftnet/weft/internal/nlconv"
	"golang.org/x/sys/unix"
)

// NetlinkPodNetwork is the real PodNetwork. The host end lives in the network
// namespace of the calling process; the pod end is reached through a netlink
// handle bound to the pod's namespace, so no thread ever switches namespace.
type NetlinkPodNetwork struct{}

var _ PodNetwork = NetlinkPodNetwork{}

// podHandle opens a netlink handle inside the namespace at path.
func podHandle(path string) (*netlink.Handle, netns.NsHandle, error) {
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, 0, fmt.Errorf("netns %s: %w", path, ErrNetnsGone)
		}
		return nil, 0, fmt.Errorf("open netns %s: %w", path, err)
	}
	// A path whose bind mount is gone is a plain file: the namespace is dead.
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(nsh), &fs); err == nil && fs.Type != unix.NSFS_MAGIC && fs.Type != unix.PROC_SUPER_MAGIC {
		nsh.Close()
		return nil, 0, fmt.Errorf("netns %s is not a namespace file: %w", path, ErrNetnsGone)
	}
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		nsh.Close()
		return nil, 0, fmt.Errorf("netlink handle in netns %s: %w", path, err)
	}
	return h, nsh, nil
}

func (NetlinkPodNetwork) Attach(a Attachment) (_ Links, err error) {
	pod, nsh, err := podHandle(a.Netns)
	if err != nil {
		return Links{}, err
	}
	defer nsh.Close()
	defer pod.Close()

	br, err := netlink.LinkByName(a.Bridge)
	if err != nil {
		return Links{}, fmt.Errorf("%w: bridge %s (is the weft agent set up?): %w", ErrNoBridge, a.Bridge, err)
	}
	if br.Type() != "bridge" {
		return Links{}, fmt.Errorf("link %s is a %s, not a bridge", a.Bridge, br.Type())
	}

	// A link with our name and our alias is the leftover of an ADD of the
	// same container interface that died half-way: clear it. One with
	// another alias is another pod's (a hash collision): refuse.
	if err := deleteVeth(netlink.LinkByName, netlink.LinkDel, a.HostVeth, a.Owner); err != nil {
		return Links{}, fmt.Errorf("remove stale %s: %w", a.HostVeth, err)
	}

	// The pod end is created straight inside the pod namespace, so its name
	// never collides with a host link.
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{
			Name:        a.HostVeth,
			Alias:       a.Owner, // kernels that take it at creation; set again below for the others
			MTU:         a.MTU,
			MasterIndex: br.Attrs().Index,
		},
		PeerName:      a.IfName,
		PeerNamespace: netlink.NsFd(int(nsh)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		// LinkAdd sets the master after creating the pair; a failure there
		// leaves the pair behind.
		_ = deleteVeth(netlink.LinkByName, netlink.LinkDel, a.HostVeth, a.Owner)
		if errors.Is(err, unix.EEXIST) {
			return Links{}, fmt.Errorf("create veth %s/%s: %s already exists in the pod: %w", a.HostVeth, a.IfName, a.IfName, err)
		}
		return Links{}, fmt.Errorf("create veth %s/%s: %w", a.HostVeth, a.IfName, err)
	}
	defer func() {
		if err != nil {
			// Deleting one end deletes both.
			if derr := deleteVeth(netlink.LinkByName, netlink.LinkDel, a.HostVeth, a.Owner); derr != nil {
				err = fmt.Errorf("%w (and rollback: %v)", err, derr)
			}
		}
	}()

	host, err := netlink.LinkByName(a.HostVeth)
	if err != nil {
		return Links{}, fmt.Errorf("find host veth %s: %w", a.HostVeth, err)
	}
	if host.Attrs().Alias != a.Owner {
		if err := netlink.LinkSetAlias(host, a.Owner); err != nil {
			return Links{}, fmt.Errorf("name the owner of %s: %w", a.HostVeth, err)
		}
	}
	// Hairpin, as the CNI bridge plugin's hairpinMode: a frame may leave by
	// the port it came in on, so a pod whose Service sends it back to itself
	// (kube-proxy DNAT to its own address) gets the answer.
	if err := netlink.LinkSetHairpin(host, true); err != nil {
		return Links{}, fmt.Errorf("hairpin mode on %s: %w", a.HostVeth, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return Links{}, fmt.Errorf("set %s up: %w", a.HostVeth, err)
	}

	podLink, err := configurePod(pod, a)
	if err != nil {
		return Links{}, err
	}
	return Links{HostMAC: host.Attrs().HardwareAddr, PodMAC: podLink.Attrs().HardwareAddr}, nil
}

// configurePod gives the pod end its address and routes:
//
//	ip addr add <addr>/32 dev <if>; ip link set <if> up; ip link set lo up
//	ip route add <gw> dev <if> scope link
//	ip route add <route> via <gw> dev <if>   (each route)
func configurePod(pod *netlink.Handle, a Attachment) (netlink.Link, error) {
	link, err := pod.LinkByName(a.IfName)
	if err != nil {
		return nil, fmt.Errorf("find %s in pod: %w", a.IfName, err)
	}
	if err := pod.AddrAdd(link, &netlink.Addr{IPNet: nlconv.IPNet(a.Address)}); err != nil {
		return nil, fmt.Errorf("add address %s to %s: %w", a.Address, a.IfName, err)
	}
	if err := pod.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set %s up: %w", a.IfName, err)
	}
	lo, err := pod.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo in pod: %w", err)
	}
	if err := pod.LinkSetUp(lo); err != nil {
		return nil, fmt.Errorf("set lo up: %w", err)
	}
	idx := link.Attrs().Index
	gw := net.IP(a.Gateway.AsSlice())
	if err := pod.RouteAdd(&netlink.Route{
		LinkIndex: idx,
		Dst:       nlconv.IPNet(netip.PrefixFrom(a.Gateway, a.Gateway.BitLen())),
		Scope:     netlink.SCOPE_LINK,
	}); err != nil {
		return nil, fmt.Errorf("add route to gateway %s: %w", a.Gateway, err)
	}
	for _, r := range a.Routes {
		if err := pod.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: nlconv.IPNet(r), Gw: gw}); err != nil {
			return nil, fmt.Errorf("add route %s via %s: %w", r, a.Gateway, err)
		}
	}
	return link, nil
}

func (NetlinkPodNetwork) Detach(netnsPath, ifName, hostVeth, owner string) error {
	// A host veth of another container under our name stays; the pod end
	// is still removed below.
	if err := deleteVeth(netlink.LinkByName, netlink.LinkDel, hostVeth, owner); err != nil && !errors.Is(err, ErrVethTaken) {
		return fmt.Errorf("delete host veth %s: %w", hostVeth, err)
	}
	if netnsPath == "" {
		return nil // the runtime says the namespace is already gone
	}
	pod, nsh, err := podHandle(netnsPath)
	if errors.Is(err, ErrNetnsGone) {
		return nil
	}
	if err != nil {
		return err
	}
	defer nsh.Close()
	defer pod.Close()
	// Normally gone with its peer; this catches a pod end whose host end was
	// removed by someone else and re-created under another name.
	if err := deleteVeth(pod.LinkByName, pod.LinkDel, ifName, ""); err != nil {
		return fmt.Errorf("delete %s in pod: %w", ifName, err)
	}
	return nil
}

// deleteVeth deletes the veth called name if there is one and, unless owner
// is "", its alias is owner or empty. A link of any other type, or another owner's
// veth (ErrVethTaken), is left alone and reported.
func deleteVeth(byName func(string) (netlink.Link, error), del func(netlink.Link) error, name, owner string) error {
	l, err := byName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	if l.Type() != "veth" {
		return fmt.Errorf("link %s is a %s, not a veth: not touching it", name, l.Type())
	}
	// No alias at all: an ADD of ours that died between creating the link
	// and naming its owner; weft-cni's links of this name length always
	// get one.
	if owner != "" && l.Attrs().Alias != owner && l.Attrs().Alias != "" {
		return fmt.Errorf("%w: %s has alias %q, want %q; not touching it", ErrVethTaken, name, l.Attrs().Alias, owner)
	}
	if err := del(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return err
	}
	return nil
}

func (NetlinkPodNetwork) Check(a Attachment) error {
	pod, nsh, err := podHandle(a.Netns)
	if err != nil {
		return err
	}
	defer nsh.Close()
	defer pod.Close()

	link, err := pod.LinkByName(a.IfName)
	if err != nil {
		return fmt.Errorf("interface %s in pod: %w", a.IfName, err)
	}
	if link.Type() != "veth" {
		return fmt.Errorf("interface %s in pod is a %s, not a veth", a.IfName, link.Type())
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("interface %s in pod is down", a.IfName)
	}
	if a.MTU > 0 && link.Attrs().MTU != a.MTU {
		return fmt.Errorf("interface %s in pod has MTU %d, want %d", a.IfName, link.Attrs().MTU, a.MTU)
	}

	addrs, err := nlconv.RetryDump(func() ([]netlink.Addr, error) { return pod.AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", a.IfName, err)
	}
	if !slices.ContainsFunc(addrs, func(ad netlink.Addr) bool { return nlconv.Prefix(ad.IPNet) == a.Address }) {
		return fmt.Errorf("interface %s in pod lacks address %s", a.IfName, a.Address)
	}

	routes, err := nlconv.RetryDump(func() ([]netlink.Route, error) { return pod.RouteList(link, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("list routes of %s: %w", a.IfName, err)
	}
	gwPrefix := netip.PrefixFrom(a.Gateway, a.Gateway.BitLen())
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		return nlconv.RouteDst(r) == gwPrefix && r.Scope == netlink.SCOPE_LINK
	}) {
		return fmt.Errorf("pod lacks link route to gateway %s on %s", a.Gateway, a.IfName)
	}
	for _, want := range a.Routes {
		if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
			gw, _ := netip.AddrFromSlice(r.Gw)
			return nlconv.RouteDst(r) == want && gw.Unmap() == a.Gateway
		}) {
			return fmt.Errorf("pod lacks route %s via %s on %s", want, a.Gateway, a.IfName)
		}
	}

	host, err := netlink.LinkByName(a.HostVeth)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", a.HostVeth, err)
	}
	if host.Type() != "veth" {
		return fmt.Errorf("host link %s is a %s, not a veth", a.HostVeth, host.Type())
	}
	if host.Attrs().Alias != a.Owner {
		return fmt.Errorf("%w: %s has alias %q, want %q", ErrVethTaken, a.HostVeth, host.Attrs().Alias, a.Owner)
	}
	if link.Attrs().ParentIndex != host.Attrs().Index {
		return fmt.Errorf("interface %s in pod is not the peer of host veth %s", a.IfName, a.HostVeth)
	}
	br, err := netlink.LinkByName(a.Bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", a.Bridge, err)
	}
	if host.Attrs().MasterIndex != br.Attrs().Index {
		return fmt.Errorf("host veth %s is not attached to bridge %s", a.HostVeth, a.Bridge)
	}
	return nil
}
