//go:build !linux

package tun

import (
	"log/slog"

	"github.com/songgao/water"

	"github.com/weftnet/weft/internal/logx"
)

// Open creates the TUN device with water, the only device on this platform.
// The MTU and link state are left to the operating system's tools.
func Open(name string, mtu int, log *slog.Logger) (Device, string, error) {
	d, err := openWater(name, mtu)
	if err != nil {
		return nil, "", err
	}
	logx.OrDiscard(log).Info("tun open", "name", d.Name(), "datapath", DatapathWater)
	return d, DatapathWater, nil
}

// persistent leaves water's defaults: persistence is a Linux feature.
func persistent(*water.Config) {}

// Remove does nothing where devices are not persistent.
func Remove(name string) (bool, error) { return false, nil }
