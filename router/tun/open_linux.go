package tun

import (
	"fmt"
	"log/slog"
	"os"

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
	if os.Getenv(EnvDatapath) == "water" {
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
	log.Info("tun open", "name", dev.Name(), "mtu", mtu, "datapath", dp, "offloads", dev.Offloads())
	return dev, dp, nil
}

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
