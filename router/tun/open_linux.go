package tun

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/songgao/water"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/logx"
)

// Open creates (or attaches to) the TUN device name with the given MTU, sets
// the link up and returns it with its datapath description: "tun-offload",
// or "tun-water" when offloads are unavailable or WEFT_DATAPATH=water.
// Addresses and routes are not its business (hostnet).
func Open(name string, mtu int, log *slog.Logger) (Device, string, error) {
	log = logx.OrDiscard(log)
	if mtu < 576 || mtu > 65535 {
		return nil, "", fmt.Errorf("open tun %q: mtu %d out of range 576..65535", name, mtu)
	}
	var dev Device
	water := os.Getenv(EnvDatapath) == "water"
	reused, err := prepare(name, !water, log)
	if err != nil {
		return nil, "", err
	}
	if water {
		log.Info("tun offloads disabled by environment", "env", EnvDatapath)
	} else {
		od, ok, err := openOffload(name, mtu)
		switch {
		case err != nil:
			log.Warn("tun offloads unavailable, falling back to one packet per call", "err", err)
		case !ok:
			log.Warn("kernel refused tun offloads, falling back to one packet per call")
		default:
			dev = od
		}
	}
	if dev == nil {
		if !water {
			// The offload attempt left a device with a virtio-net header.
			if reused, err = prepare(name, false, log); err != nil {
				return nil, "", err
			}
		}
		wd, err := openWater(name, mtu)
		if err != nil {
			return nil, "", err
		}
		dev = wd
	}
	if err := linkUp(dev.Name(), mtu); err != nil {
		_ = dev.Close()
		return nil, "", err
	}
	dp := DatapathOf(dev)
	log.Info("tun open", "name", dev.Name(), "mtu", mtu, "datapath", dp, "offloads", dev.Offloads(), "reused", reused)
	return dev, dp, nil
}

// ErrNotTUN is returned when the TUN's name is taken by a link of another kind.
var ErrNotTUN = errors.New("link exists and is not a TUN device")

// prepare checks a link already named name before it is attached to. The
// TUN is persistent (TUNSETPERSIST): it stays when the agent exits, and so
// do the kernel's routes through it, so the next agent attaches to it and
// packets never take another route meanwhile. A TUN whose virtio-net header
// flag differs from the kind wanted (the datapath was switched) is deleted,
// to be made again: its offload features would not match the reader. It
// reports whether an existing TUN will be re-attached.
func prepare(name string, vnetHdr bool, log *slog.Logger) (reuse bool, err error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return false, nil
		}
		return false, fmt.Errorf("look up tun %q: %w", name, err)
	}
	tt, ok := link.(*netlink.Tuntap)
	if !ok || tt.Mode == netlink.TUNTAP_MODE_TAP {
		return false, fmt.Errorf("open tun %q: %w (it is a %s)", name, ErrNotTUN, link.Type())
	}
	if tt.Mode == 0 {
		// A kernel that does not describe its TUNs (before 4.15): attach
		// and let TUNSETIFF refuse what does not fit.
		return true, nil
	}
	if (tt.Flags&netlink.TUNTAP_VNET_HDR != 0) == vnetHdr {
		return true, nil
	}
	log.Info("tun left by an earlier agent has other offloads; making it again", "name", name, "vnet_hdr", !vnetHdr)
	if err := netlink.LinkDel(link); err != nil {
		return false, fmt.Errorf("delete tun %q to make it again: %w", name, err)
	}
	return false, nil
}

// Remove deletes the persistent TUN named name (weft reset, uninstall). It
// reports whether there was one; a link of another kind is left alone.
func Remove(name string) (bool, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return false, nil
		}
		return false, fmt.Errorf("look up tun %q: %w", name, err)
	}
	if tt, ok := link.(*netlink.Tuntap); !ok || tt.Mode == netlink.TUNTAP_MODE_TAP {
		return false, fmt.Errorf("remove tun %q: %w (it is a %s)", name, ErrNotTUN, link.Type())
	}
	if err := netlink.LinkDel(link); err != nil {
		return false, fmt.Errorf("delete tun %q: %w", name, err)
	}
	return true, nil
}

// persistent asks water for a persistent device, as the offload device is.
func persistent(cfg *water.Config) { cfg.Persist = true }

// linkUp sets the MTU (water does not) and brings the link up.
func linkUp(name string, mtu int) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find tun link %q: %w", name, err)
	}
	if link.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("set mtu %d on %q: %w", mtu, name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %q up: %w", name, err)
	}
	return nil
}
