package tun

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/songgao/water"

	"github.com/weftnet/weft/router/gso"
)

// errNoOffload is returned when offload metadata is written to a device
// without offloads: the router completes checksums itself for such devices.
var errNoOffload = errors.New("tun: device has no offloads")

// waterDevice is the portable fallback: plain packets, one system call each.
type waterDevice struct {
	ifce *water.Interface
	mtu  int

	mu     sync.Mutex // guards joined: Write is called from both directions
	joined []byte
}

func openWater(name string, mtu int) (*waterDevice, error) {
	cfg := water.Config{DeviceType: water.TUN}
	cfg.Name = name
	persistent(&cfg)
	ifce, err := water.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("open water tun %q: %w", name, err)
	}
	return &waterDevice{ifce: ifce, mtu: mtu}, nil
}

func (d *waterDevice) Read(buf []byte, offset int) ([]byte, gso.Offload, error) {
	n, err := d.ifce.Read(buf[offset:])
	if err != nil {
		if errors.Is(err, os.ErrClosed) {
			return nil, gso.Offload{}, os.ErrClosed
		}
		return nil, gso.Offload{}, fmt.Errorf("read %s: %w", d.ifce.Name(), err)
	}
	return buf[offset : offset+n], gso.Offload{}, nil
}

func (d *waterDevice) Write(vec [][]byte, o gso.Offload) error {
	if o != (gso.Offload{}) {
		return errNoOffload
	}
	pkt := vec[0]
	if len(vec) > 1 {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.joined = d.joined[:0]
		for _, v := range vec {
			d.joined = append(d.joined, v...)
		}
		pkt = d.joined
	}
	if _, err := d.ifce.Write(pkt); err != nil {
		if errors.Is(err, os.ErrClosed) {
			return os.ErrClosed
		}
		return fmt.Errorf("write %s: %w", d.ifce.Name(), err)
	}
	return nil
}

func (d *waterDevice) Offloads() bool   { return false }
func (d *waterDevice) MTU() int         { return d.mtu }
func (d *waterDevice) Name() string     { return d.ifce.Name() }
func (d *waterDevice) Close() error     { return d.ifce.Close() }
func (d *waterDevice) Datapath() string { return DatapathWater }
