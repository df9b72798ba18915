package tun

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/router/gso"
)

// ErrShortRead means the kernel handed over less than a virtio-net header.
var ErrShortRead = errors.New("tun: read shorter than the virtio header")

// offloadDevice is a TUN opened with IFF_VNET_HDR and the checksum and
// TCP/IPv4 segmentation offloads. Every packet crossing it is preceded by a
// virtio-net header; Read and Write keep that header in a buffer of their
// own (readv/writev), so callers' buffers hold only packet bytes.
type offloadDevice struct {
	f      *os.File
	rc     syscall.RawConn
	name   string
	mtu    int
	closed atomic.Bool

	// Read state: Read has one caller at a time (the router's TUN reader).
	rhdr   [gso.VirtioHdrLen]byte
	riov   [2]unix.Iovec
	rn     int
	rerr   error
	readFn func(fd uintptr) bool

	// Write state, guarded by wmu: both directions write (ICMP replies).
	wmu     sync.Mutex
	whdr    [gso.VirtioHdrLen]byte
	wiov    [MaxWriteVec + 1]unix.Iovec
	wcount  int
	werr    error
	writeFn func(fd uintptr) bool
}

// offloadFlags are the offloads asked of the kernel: checksums and TSO for
// IPv4. IPv6 and UDP segmentation stay off, so the kernel never hands over
// super-packets of a kind weft does not cut.
const offloadFlags = unix.TUN_F_CSUM | unix.TUN_F_TSO4

// openOffload creates the TUN with IFF_VNET_HDR. ok is false (and nothing
// left open) when the kernel refused the offloads, so the caller falls back.
func openOffload(name string, mtu int) (d *offloadDevice, ok bool, err error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, false, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		_ = unix.Close(fd)
		return nil, false, fmt.Errorf("tun name %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		_ = unix.Close(fd)
		return nil, false, fmt.Errorf("create tun %q: %w", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, offloadFlags); err != nil {
		_ = unix.Close(fd)
		return nil, false, nil
	}
	// Persistent: the device, and the kernel's routes through it, outlive
	// this descriptor, so a restarting agent finds them in place.
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		_ = unix.Close(fd)
		return nil, false, fmt.Errorf("make tun %q persistent: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), "/dev/net/tun") // non-blocking: Go's poller waits for it
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return nil, false, fmt.Errorf("raw conn of tun %q: %w", name, err)
	}
	d = &offloadDevice{f: f, rc: rc, name: ifr.Name(), mtu: mtu}
	d.readFn = d.doRead
	d.writeFn = d.doWrite
	d.riov[0].Base = &d.rhdr[0]
	d.riov[0].SetLen(gso.VirtioHdrLen)
	d.wiov[0].Base = &d.whdr[0]
	d.wiov[0].SetLen(gso.VirtioHdrLen)
	return d, true, nil
}

func (d *offloadDevice) Read(buf []byte, offset int) ([]byte, gso.Offload, error) {
	b := buf[offset:]
	if len(b) == 0 {
		return nil, gso.Offload{}, errors.New("tun read: no room behind the offset")
	}
	d.riov[1].Base = &b[0]
	d.riov[1].SetLen(len(b))
	d.rn, d.rerr = 0, nil
	if err := d.rc.Read(d.readFn); err != nil {
		return nil, gso.Offload{}, d.wrap("read", err)
	}
	if d.rerr != nil {
		return nil, gso.Offload{}, d.wrap("read", d.rerr)
	}
	n := d.rn - gso.VirtioHdrLen
	if n < 0 {
		return nil, gso.Offload{}, ErrShortRead
	}
	o, err := gso.ParseVirtio(d.rhdr[:])
	return b[:n], o, err
}

func (d *offloadDevice) doRead(fd uintptr) bool {
	r, _, e := unix.RawSyscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&d.riov[0])), 2)
	if e == unix.EAGAIN || e == unix.EINTR {
		return false
	}
	if e != 0 {
		d.rerr = e
		return true
	}
	d.rn = int(r)
	return true
}

func (d *offloadDevice) Write(vec [][]byte, o gso.Offload) error {
	if len(vec) == 0 || len(vec) > MaxWriteVec {
		return fmt.Errorf("tun write: %d pieces, want 1..%d", len(vec), MaxWriteVec)
	}
	d.wmu.Lock()
	defer d.wmu.Unlock()
	o.PutVirtio(d.whdr[:])
	for i, v := range vec {
		d.wiov[i+1].Base = unsafe.SliceData(v)
		d.wiov[i+1].SetLen(len(v))
	}
	d.wcount, d.werr = len(vec)+1, nil
	err := d.rc.Write(d.writeFn)
	for i := range vec {
		d.wiov[i+1].Base = nil // do not keep callers' buffers reachable
	}
	if err != nil {
		return d.wrap("write", err)
	}
	if d.werr != nil {
		return d.wrap("write", d.werr)
	}
	return nil
}

func (d *offloadDevice) doWrite(fd uintptr) bool {
	_, _, e := unix.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&d.wiov[0])), uintptr(d.wcount))
	if e == unix.EAGAIN || e == unix.EINTR {
		return false
	}
	if e != 0 {
		d.werr = e
	}
	return true
}

// wrap names the device in err and turns any error after Close into
// os.ErrClosed, which is how the router learns to stop.
func (d *offloadDevice) wrap(op string, err error) error {
	if d.closed.Load() {
		return os.ErrClosed
	}
	return fmt.Errorf("tun %s %s: %w", op, d.name, err)
}

func (d *offloadDevice) Offloads() bool   { return true }
func (d *offloadDevice) MTU() int         { return d.mtu }
func (d *offloadDevice) Name() string     { return d.name }
func (d *offloadDevice) Datapath() string { return DatapathOffload }

func (d *offloadDevice) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	return d.f.Close()
}
