package tun

import (
	"errors"
	"fmt"
	"os"

	"github.com/songgao/water"
)

// waterDevice is the portable fallback: one packet per Read and one write
// system call per packet.
type waterDevice struct {
	ifce *water.Interface
	mtu  int
}

func openWater(name string, mtu int) (*waterDevice, error) {
	cfg := water.Config{DeviceType: water.TUN}
	cfg.Name = name
	ifce, err := water.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("open water tun %q: %w", name, err)
	}
	return &waterDevice{ifce: ifce, mtu: mtu}, nil
}

func (d *waterDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := d.ifce.Read(bufs[0][offset:])
	if err != nil {
		if errors.Is(err, os.ErrClosed) {
			return 0, os.ErrClosed
		}
		return 0, fmt.Errorf("read %s: %w", d.ifce.Name(), err)
	}
	sizes[0] = n
	return 1, nil
}

func (d *waterDevice) Write(bufs [][]byte, offset int) (int, error) {
	total := 0
	var errs error
	for _, b := range bufs {
		n, err := d.ifce.Write(b[offset:])
		if errors.Is(err, os.ErrClosed) {
			return total, os.ErrClosed
		}
		if err != nil {
			errs = errors.Join(errs, err)
			continue
		}
		total += n
	}
	return total, errs
}

func (d *waterDevice) BatchSize() int   { return 1 }
func (d *waterDevice) MTU() int         { return d.mtu }
func (d *waterDevice) Name() string     { return d.ifce.Name() }
func (d *waterDevice) Close() error     { return d.ifce.Close() }
func (d *waterDevice) Datapath() string { return DatapathWater }
