// Package tun is the TUN device of weft's data plane.
//
// Two implementations sit behind Device:
//   - the offload device (Linux): IFF_VNET_HDR with checksum and TCP/IPv4
//     segmentation offloads. One Read hands over a whole TCP super-packet
//     (up to 64 KiB) with its virtio-net metadata, and one Write takes a
//     super-packet assembled from several buffers (writev), so the router
//     cuts and joins segments without copying them (router/gso).
//   - the water device (github.com/songgao/water): plain packets, one per
//     call, the portable fallback.
//
// The offload device's readv and writev are made with RawSyscall, for the
// reason given in router/udp: the descriptor is non-blocking, and waiting is
// left to Go's network poller.
//
// Open picks the offload device and falls back to water when the kernel
// refuses offloads, or when WEFT_DATAPATH=water forces it.
package tun

import (
	"github.com/weftnet/weft/router/gso"
)

// EnvDatapath names the environment variable that forces the fallback:
// WEFT_DATAPATH=water.
const EnvDatapath = "WEFT_DATAPATH"

// Datapath descriptions returned by Open and Device.Datapath.
const (
	DatapathOffload = "tun-offload"
	DatapathWater   = "tun-water"
)

// MaxWriteVec is the most pieces one Write takes.
const MaxWriteVec = gso.MaxCoalesce + 1

// Device is a TUN device.
type Device interface {
	// Read reads one packet into buf[offset:] and returns it with its
	// offload metadata; buf[:offset] is left for the caller's headers. With
	// offloads the packet may be a TCP super-packet (o.GSO) or carry a
	// partial checksum (o.NeedsCsum); buf should then have room for
	// gso.MaxPacket bytes behind offset. Without offloads o is zero.
	Read(buf []byte, offset int) (pkt []byte, o gso.Offload, err error)
	// Write writes one packet, the concatenation of vec (at most
	// MaxWriteVec pieces), with its metadata. A device without offloads
	// refuses a non-zero o.
	Write(vec [][]byte, o gso.Offload) error
	// Offloads reports whether Read may return, and Write accepts,
	// super-packets and partial checksums.
	Offloads() bool
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
