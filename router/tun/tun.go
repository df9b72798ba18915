// Package tun is the TUN device of weft's data plane behind a batch interface.
//
// Two implementations sit behind Device:
//   - the offload device (Linux, golang.zx2c4.com/wireguard/tun): IFF_VNET_HDR
//     and TUNSETOFFLOAD, so one Read hands over a TSO super-packet already
//     split into MTU-sized packets and one Write coalesces TCP/UDP segments
//     into GRO super-packets. This is the fast path (about 6x).
//   - the water device (github.com/songgao/water): one packet per call, the
//     portable fallback.
//
// Open picks the offload device and falls back to water when the kernel
// refuses offloads, or when WEFT_DATAPATH=water forces it.
package tun

import (
	"io"
	"log/slog"
)

// Headroom is the minimum offset callers must leave in front of packet data
// in Read and Write: the offload device puts a 10-byte virtio-net header
// there. Callers that also frame packets (router) leave more.
const Headroom = 10

// EnvDatapath names the environment variable that forces the fallback:
// WEFT_DATAPATH=water.
const EnvDatapath = "WEFT_DATAPATH"

// Datapath descriptions returned by Open and Device.Datapath.
const (
	DatapathOffload = "tun-offload"
	DatapathWater   = "tun-water"
)

// Device is a TUN device that moves packets in batches.
type Device interface {
	// Read reads one or more packets. Packet i lands at
	// bufs[i][offset:offset+sizes[i]]; n is the number of packets. Every
	// bufs[i] must hold offset+MTU bytes. len(bufs) should be BatchSize().
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)
	// Write writes the packets bufs[i][offset:]; offset must be at least
	// Headroom. The offload device may coalesce packets into the spare
	// capacity of earlier buffers (give them cap of 64 KiB+2*offset to
	// allow it) and scribbles over bufs[i][offset-Headroom:offset].
	// It returns the bytes written; per-packet errors are joined.
	Write(bufs [][]byte, offset int) (int, error)
	// BatchSize is the most packets one Read returns (1 for water).
	BatchSize() int
	MTU() int
	Name() string
	Close() error
}

// DatapathOf returns the description of d's kind ("tun-offload", "tun-water"),
// or "tun" for a Device from elsewhere (a test fake).
func DatapathOf(d Device) string {
	if dp, ok := d.(interface{ Datapath() string }); ok {
		return dp.Datapath()
	}
	return "tun"
}

func orDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return log
}
