package policy

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// FlushNeighbours deletes the neighbour (ARP/NDP) entries of addrs on every
// link of the Engine's network namespace, and reports how many went.
//
// Why: a packet forwarded to an address no pod holds yet passes the rules
// (nothing isolates the address) and then waits in the kernel's neighbour
// queue of the bridge. Once the CNI ADD has isolated the address and the
// pod answers ARP, that packet would be delivered past the policy, and the
// pod's reply would make its flow established. Deleting the entry frees
// its queue; call this after the Apply that isolates a new pod's address
// and before the pod gets its network. Permanent and NOARP entries are
// left alone: nothing queues on them and someone put them there.
func (e *Engine) FlushNeighbours(addrs ...netip.Addr) (int, error) {
	set := map[netip.Addr]bool{}
	for _, a := range addrs {
		set[a.Unmap()] = true
	}
	if len(set) == 0 {
		return 0, nil
	}
	return e.kern.flushNeighbours(set)
}

func flushNeighbours(cfg Config, addrs map[netip.Addr]bool) (int, error) {
	h, err := netlinkHandle(cfg.NetNS, unix.NETLINK_ROUTE)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	var v4, v6 bool
	for a := range addrs {
		v4, v6 = v4 || a.Is4(), v6 || a.Is6()
	}
	n := 0
	var errs []error
	for _, fam := range []struct {
		want   bool
		family int
	}{{v4, netlink.FAMILY_V4}, {v6, netlink.FAMILY_V6}} {
		if !fam.want {
			continue
		}
		// Link 0: the entries of every link (the bridge, and whatever
		// else may have queued for the address).
		list, err := h.NeighList(0, fam.family)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			errs = append(errs, fmt.Errorf("policy: list neighbours: %w", err))
			continue
		}
		for i := range list {
			nb := &list[i]
			a, ok := netip.AddrFromSlice(nb.IP)
			if !ok || !addrs[a.Unmap()] || nb.State&(netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0 {
				continue
			}
			if err := h.NeighDel(nb); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("policy: delete neighbour %s on link %d: %w", a, nb.LinkIndex, err))
				continue
			}
			n++
		}
	}
	return n, errors.Join(errs...)
}
