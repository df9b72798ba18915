// Package tuntest is an in-memory tun.Device for tests: the test plays the
// kernel, injecting packets the device "reads" and taking those written to it.
// It answers as the Linux offload device does (metadata both ways) or, with
// NoOffloads, as the water device (metadata refused).
package tuntest

import (
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/router/gso"
)

// Packet is a packet crossing the device with its offload metadata.
type Packet struct {
	Data []byte
	O    gso.Offload
}

// Device is a fake tun.Device. Inbound (Inject) and outbound (Written) queues
// hold 1024 packets each; when Written is full a further Write is dropped, as
// a kernel drops on a full backlog, so a test that does not drain it never
// stalls the router.
type Device struct {
	name     string
	in       chan Packet
	written  chan Packet
	mtu      int
	offloads bool
	once     sync.Once
	closed   chan struct{}
}

// Option changes a new Device.
type Option func(*Device)

// NoOffloads makes the device behave like water: plain packets only.
func NoOffloads() Option { return func(d *Device) { d.offloads = false } }

// Name sets the device name (default "fake-tun").
func Name(n string) Option { return func(d *Device) { d.name = n } }

// New returns an open device with the given MTU.
func New(mtu int, opts ...Option) *Device {
	d := &Device{name: "fake-tun", in: make(chan Packet, 1024), written: make(chan Packet, 1024),
		mtu: mtu, offloads: true, closed: make(chan struct{})}
	for _, o := range opts {
		o(d)
	}
	return d
}

// Inject queues a plain packet for the router to read.
func (d *Device) Inject(pkt []byte) { d.InjectOffload(pkt, gso.Offload{}) }

// InjectOffload queues a packet with metadata, e.g. a TCP super-packet.
func (d *Device) InjectOffload(pkt []byte, o gso.Offload) {
	select {
	case d.in <- Packet{Data: pkt, O: o}:
	case <-d.closed:
	}
}

// Written is where packets written by the router arrive.
func (d *Device) Written() <-chan Packet { return d.written }

// Read implements tun.Device.
func (d *Device) Read(buf []byte, offset int) ([]byte, gso.Offload, error) {
	select {
	case p := <-d.in:
		n := copy(buf[offset:], p.Data)
		return buf[offset : offset+n], p.O, nil
	case <-d.closed:
		return nil, gso.Offload{}, os.ErrClosed
	}
}

// Write implements tun.Device; the pieces are copied.
func (d *Device) Write(vec [][]byte, o gso.Offload) error {
	select {
	case <-d.closed:
		return os.ErrClosed
	default:
	}
	if !d.offloads && o != (gso.Offload{}) {
		return errors.New("tuntest: offload metadata on a device without offloads")
	}
	var b []byte
	for _, v := range vec {
		b = append(b, v...)
	}
	select {
	case d.written <- Packet{Data: b, O: o}:
	default: // full: dropped
	}
	return nil
}

func (d *Device) Offloads() bool { return d.offloads }
func (d *Device) MTU() int       { return d.mtu }
func (d *Device) Name() string   { return d.name }

// Close makes pending and later Reads return os.ErrClosed.
func (d *Device) Close() error {
	d.once.Do(func() { close(d.closed) })
	return nil
}

// ExpectWritten returns the next packet written, failing t when none comes
// within 5 s.
func (d *Device) ExpectWritten(t testing.TB) Packet {
	t.Helper()
	select {
	case p := <-d.written:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("tuntest: no packet written to the TUN within 5s")
		return Packet{}
	}
}

// ExpectNothingWritten fails t if a packet is waiting in Written.
func (d *Device) ExpectNothingWritten(t testing.TB) {
	t.Helper()
	select {
	case p := <-d.written:
		t.Fatalf("tuntest: unexpected packet written to the TUN: % x", p.Data)
	default:
	}
}
