package tun

import (
	"fmt"

	wgtun "golang.zx2c4.com/wireguard/tun"
)

// offloadDevice adapts wireguard-go's Linux TUN, which does the virtio-net
// header, TSO splitting and GRO coalescing, to Device.
type offloadDevice struct {
	dev  wgtun.Device
	name string
	mtu  int
	done chan struct{}
}

// openOffload creates the TUN with IFF_VNET_HDR. ok is false (and the device
// closed) when the kernel refused TUNSETOFFLOAD, so the caller falls back.
func openOffload(name string, mtu int) (d *offloadDevice, ok bool, err error) {
	dev, err := wgtun.CreateTUN(name, mtu)
	if err != nil {
		return nil, false, fmt.Errorf("create offload tun %q: %w", name, err)
	}
	if dev.BatchSize() <= 1 { // wireguard-go leaves vnet headers off when offloads fail
		_ = dev.Close()
		return nil, false, nil
	}
	real, err := dev.Name()
	if err != nil {
		_ = dev.Close()
		return nil, false, fmt.Errorf("name of tun %q: %w", name, err)
	}
	d = &offloadDevice{dev: dev, name: real, mtu: mtu, done: make(chan struct{})}
	go d.drainEvents()
	return d, true, nil
}

// drainEvents consumes link up/down events, which nobody here needs, so that
// wireguard-go's listeners never block on a full channel.
func (d *offloadDevice) drainEvents() {
	for {
		select {
		case _, ok := <-d.dev.Events():
			if !ok {
				return
			}
		case <-d.done:
			return
		}
	}
}

func (d *offloadDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return d.dev.Read(bufs, sizes, offset)
}

func (d *offloadDevice) Write(bufs [][]byte, offset int) (int, error) {
	return d.dev.Write(bufs, offset)
}

func (d *offloadDevice) BatchSize() int   { return d.dev.BatchSize() }
func (d *offloadDevice) MTU() int         { return d.mtu }
func (d *offloadDevice) Name() string     { return d.name }
func (d *offloadDevice) Datapath() string { return DatapathOffload }

func (d *offloadDevice) Close() error {
	select {
	case <-d.done:
	default:
		close(d.done)
	}
	return d.dev.Close()
}
