package udp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/logx"
)

// batchMax bounds how many messages one system call carries; longer batches
// are cut into several calls.
const batchMax = 128

const (
	ctrlLen    = 64              // room for one UDP_GRO / UDP_SEGMENT control message
	maxIovPerH = 2 * MaxSegments // a datagram may be a head and a part
)

// mmsghdr mirrors struct mmsghdr; x/sys/unix has no type for it.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

type linuxConn struct {
	pc    *net.UDPConn
	rc    syscall.RawConn
	local netip.AddrPort
	v6    bool // the socket is AF_INET6: IPv4 peers are written v4-mapped
	gso   atomic.Bool
	log   *slog.Logger

	// Read state; ReadBatch has a single caller.
	rh     [batchMax]mmsghdr
	riov   [batchMax]unix.Iovec
	rname  [batchMax]unix.RawSockaddrInet6
	rctrl  [batchMax][ctrlLen]byte
	rcount int
	rgot   int
	rerr   error
	readFn func(fd uintptr) bool

	// Write state, guarded by wmu.
	wmu     sync.Mutex
	wh      [batchMax]mmsghdr
	wiov    [batchMax * maxIovPerH]unix.Iovec
	wname   [batchMax]unix.RawSockaddrInet6
	wctrl   [batchMax][ctrlLen]byte
	wstride [batchMax]int // iovecs per datagram of each header
	wcount  int           // headers filled
	wsent   int           // headers sent so far
	werr    error
	writeFn func(fd uintptr) bool
}

// Listen opens the data-plane socket on addr, raises its buffers and turns on
// GRO and GSO when the kernel has them.
func Listen(addr netip.AddrPort, log *slog.Logger) (Conn, error) {
	log = logx.OrDiscard(log)
	network := "udp4"
	if addr.Addr().Is6() && !addr.Addr().Is4In6() {
		network = "udp6"
	}
	pc, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, fmt.Errorf("listen udp %s: %w", addr, err)
	}
	rc, err := pc.SyscallConn()
	if err != nil {
		_ = pc.Close()
		return nil, fmt.Errorf("raw conn of %s: %w", addr, err)
	}
	c := &linuxConn{pc: pc, rc: rc, v6: network == "udp6", log: log}
	c.local = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	c.readFn = c.doRead
	c.writeFn = c.doWrite

	var gro, gso bool
	var rcvbuf, sndbuf int
	if err := rc.Control(func(fd uintptr) {
		s := int(fd)
		rcvbuf = setBuffer(s, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF)
		sndbuf = setBuffer(s, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF)
		gro = unix.SetsockoptInt(s, unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
		_, e := unix.GetsockoptInt(s, unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		gso = e == nil
	}); err != nil {
		_ = pc.Close()
		return nil, fmt.Errorf("configure socket %s: %w", addr, err)
	}
	c.gso.Store(gso)
	for i := range c.rh {
		c.rh[i].hdr.Iov = &c.riov[i]
		c.rh[i].hdr.SetIovlen(1)
		c.rh[i].hdr.Name = (*byte)(unsafe.Pointer(&c.rname[i]))
	}
	log.Info("udp listen", "addr", c.local, "gro", gro, "gso", gso, "rcvbuf", rcvbuf, "sndbuf", sndbuf)
	if rcvbuf < SocketBuffer {
		log.Warn("udp receive buffer below target; expect drops under load (run as root)", "got", rcvbuf, "want", SocketBuffer)
	}
	return c, nil
}

// setBuffer asks for SocketBuffer with the root-only FORCE option and falls
// back to the capped one; it returns what the kernel granted.
func setBuffer(s, force, plain int) int {
	if unix.SetsockoptInt(s, unix.SOL_SOCKET, force, SocketBuffer) != nil {
		_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, plain, SocketBuffer)
	}
	got, _ := unix.GetsockoptInt(s, unix.SOL_SOCKET, plain)
	return got / 2 // the kernel reports twice the usable size
}

func (c *linuxConn) LocalAddr() netip.AddrPort { return c.local }
func (c *linuxConn) Close() error              { return c.pc.Close() }

func (c *linuxConn) Datapath() string {
	if c.gso.Load() {
		return DatapathGSO
	}
	return DatapathMMsg
}

func (c *linuxConn) ReadBatch(msgs []Message) (int, error) {
	n := min(len(msgs), batchMax)
	if n == 0 {
		return 0, nil
	}
	for i := range n {
		b := msgs[i].Buf
		if len(b) == 0 {
			return 0, errors.New("udp read: message with empty buffer")
		}
		h := &c.rh[i].hdr
		c.riov[i].Base = &b[0]
		c.riov[i].SetLen(len(b))
		h.Namelen = uint32(unsafe.Sizeof(c.rname[i]))
		h.Control = &c.rctrl[i][0]
		h.SetControllen(ctrlLen)
		h.Flags = 0
	}
	c.rcount, c.rgot, c.rerr = n, 0, nil
	if err := c.rc.Read(c.readFn); err != nil {
		return 0, fmt.Errorf("udp read: %w", err)
	}
	if c.rerr != nil {
		return 0, fmt.Errorf("udp read: %w", c.rerr)
	}
	for i := range c.rgot {
		m := &msgs[i]
		h := &c.rh[i]
		m.N = int(h.len)
		m.Parts = nil
		m.Addr = sockaddrToAddrPort(&c.rname[i])
		m.SegSize = 0
		if h.hdr.Flags&unix.MSG_TRUNC != 0 {
			m.N = 0 // a truncated train cannot be split safely
			continue
		}
		if seg := groSize(c.rctrl[i][:h.hdr.Controllen]); seg > 0 && seg < m.N {
			m.SegSize = seg
		}
	}
	return c.rgot, nil
}

// doRead runs inside RawConn.Read; false means "would block, wait".
func (c *linuxConn) doRead(fd uintptr) bool {
	r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&c.rh[0])), uintptr(c.rcount), unix.MSG_DONTWAIT, 0, 0)
	if e == unix.EAGAIN || e == unix.EINTR {
		return false
	}
	if e != 0 {
		c.rerr = e
		return true
	}
	c.rgot = int(r)
	return true
}

// groSize returns the segment size from a UDP_GRO control message, or 0.
func groSize(ctrl []byte) int {
	for len(ctrl) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&ctrl[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(ctrl) {
			return 0
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(2) {
			data := ctrl[unix.CmsgLen(0):l]
			if len(data) >= 4 {
				return int(*(*int32)(unsafe.Pointer(&data[0])))
			}
			return int(*(*uint16)(unsafe.Pointer(&data[0])))
		}
		step := unix.CmsgSpace(l - unix.CmsgLen(0))
		if step > len(ctrl) {
			return 0
		}
		ctrl = ctrl[step:]
	}
	return 0
}

func (c *linuxConn) WriteBatch(msgs []Message) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	var first error // a closure recording it would allocate per call
	c.resetWrite()
	for mi := range msgs {
		m := &msgs[mi]
		if m.Parts != nil {
			for i := 0; i < len(m.Parts); {
				if c.wcount == batchMax {
					if err := c.flush(); err != nil && first == nil {
						first = err
					}
				}
				i = c.addParts(m.Addr, m.Heads, m.Parts, i)
			}
			continue
		}
		if m.N <= 0 || m.N > len(m.Buf) {
			if first == nil {
				first = fmt.Errorf("udp write to %s: length %d outside buffer of %d", m.Addr, m.N, len(m.Buf))
			}
			continue
		}
		b := m.Buf[:m.N]
		seg := m.SegSize
		if seg <= 0 || seg >= len(b) {
			seg = len(b)
		}
		for len(b) > 0 {
			if c.wcount == batchMax {
				if err := c.flush(); err != nil && first == nil {
					first = err
				}
			}
			b = c.addContiguous(m.Addr, b, seg)
		}
	}
	if err := c.flush(); err != nil && first == nil {
		first = err
	}
	return first
}

func (c *linuxConn) resetWrite() { c.wcount, c.wsent, c.werr = 0, 0, nil }

// header starts header c.wcount for addr with its iovecs at iovAt.
func (c *linuxConn) header(addr netip.AddrPort, iovAt int) *mmsghdr {
	i := c.wcount
	h := &c.wh[i]
	h.hdr = unix.Msghdr{}
	h.len = 0
	h.hdr.Iov = &c.wiov[iovAt]
	h.hdr.Name = (*byte)(unsafe.Pointer(&c.wname[i]))
	h.hdr.Namelen = c.putSockaddr(&c.wname[i], addr)
	return h
}

// iovStart is where the next header's iovecs begin: each header owns a
// fixed slot of maxIovPerH iovecs, so no bookkeeping is needed.
func (c *linuxConn) iovStart() int { return c.wcount * maxIovPerH }

// addParts adds one header carrying datagrams from index 'from' on: a GSO
// run of equal-size datagrams when GSO is on, else a single one. Datagram j
// is heads[j] (when heads is set) followed by parts[j]. It returns the next
// index.
func (c *linuxConn) addParts(addr netip.AddrPort, heads, parts [][]byte, from int) int {
	at := c.iovStart()
	h := c.header(addr, at)
	stride := 1
	if heads != nil {
		stride = 2
	}
	dlen := func(j int) int {
		if heads != nil {
			return len(heads[j]) + len(parts[j])
		}
		return len(parts[j])
	}
	size := dlen(from)
	n, total := 0, 0
	for j := from; j < len(parts) && n < MaxSegments; j++ {
		l := dlen(j)
		if n > 0 && (!c.gso.Load() || l > size || total+l > MaxDatagram) {
			break
		}
		iov := c.wiov[at+n*stride : at+(n+1)*stride]
		if heads != nil {
			iov[0].Base = unsafe.SliceData(heads[j])
			iov[0].SetLen(len(heads[j]))
		}
		iov[stride-1].Base = unsafe.SliceData(parts[j])
		iov[stride-1].SetLen(len(parts[j]))
		n++
		total += l
		if l < size || l == 0 {
			break // a shorter datagram ends a GSO train
		}
	}
	h.hdr.SetIovlen(n * stride)
	c.wstride[c.wcount] = stride
	if n > 1 {
		c.setSegment(h, size)
	}
	c.wcount++
	return from + n
}

// addContiguous adds one header for the front of b, a GSO train cut every
// seg bytes (or a single datagram without GSO); it returns the rest of b.
func (c *linuxConn) addContiguous(addr netip.AddrPort, b []byte, seg int) []byte {
	at := c.iovStart()
	h := c.header(addr, at)
	take := min(seg, len(b))
	if c.gso.Load() && seg < len(b) {
		take = max(seg, min(len(b), seg*MaxSegments, MaxDatagram/seg*seg))
	}
	c.wiov[at].Base = &b[0]
	c.wiov[at].SetLen(take)
	h.hdr.SetIovlen(1)
	c.wstride[c.wcount] = 1
	if take > seg {
		c.setSegment(h, seg)
	}
	c.wcount++
	return b[take:]
}

func (c *linuxConn) setSegment(h *mmsghdr, seg int) {
	ctrl := c.wctrl[c.wcount][:]
	cm := (*unix.Cmsghdr)(unsafe.Pointer(&ctrl[0]))
	cm.Level = unix.IPPROTO_UDP
	cm.Type = unix.UDP_SEGMENT
	cm.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(ctrl[unix.CmsgLen(0):], uint16(seg))
	h.hdr.Control = &ctrl[0]
	h.hdr.SetControllen(unix.CmsgSpace(2))
}

// flush sends the filled headers. A datagram the kernel refuses is skipped
// so the rest of the batch still goes out. EIO on a GSO message means the
// route's device cannot checksum-offload: GSO is turned off for good (that
// one train is lost; TCP inside the tunnel resends it).
func (c *linuxConn) flush() error {
	var first error
	for c.wsent < c.wcount {
		c.werr = nil
		if err := c.rc.Write(c.writeFn); err != nil {
			c.resetWrite()
			return fmt.Errorf("udp write: %w", err)
		}
		if c.werr != nil {
			bad := &c.wh[c.wsent]
			gsoMsg := bad.hdr.Controllen > 0
			if gsoMsg && c.werr == unix.EIO && c.gso.Swap(false) {
				c.log.Warn("udp gso refused by the kernel (EIO); sending without it")
			}
			// A train whose datagrams exceed the route MTU is refused as a
			// whole (EINVAL); one by one the kernel fragments them instead.
			if gsoMsg && (c.werr == unix.EINVAL || c.werr == unix.EMSGSIZE || c.werr == unix.EIO) {
				c.werr = c.sendEach(bad, c.wstride[c.wsent])
			}
			if c.werr != nil && first == nil {
				first = fmt.Errorf("udp write: %w", c.werr)
			}
			c.wsent++ // that message is dealt with
		}
	}
	c.resetWrite()
	return first
}

// sendEach sends the datagrams of GSO message h, stride iovecs each, one
// sendmsg at a time.
func (c *linuxConn) sendEach(h *mmsghdr, stride int) error {
	iovs := unsafe.Slice(h.hdr.Iov, h.hdr.Iovlen)
	var first error
	for i := 0; i+stride <= len(iovs); i += stride {
		one := h.hdr
		one.Iov = &iovs[i]
		one.SetIovlen(stride)
		one.Control = nil
		one.SetControllen(0)
		var errno syscall.Errno
		err := c.rc.Write(func(fd uintptr) bool {
			_, _, errno = unix.Syscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&one)), 0)
			return errno != unix.EAGAIN
		})
		if err == nil && errno != 0 {
			err = errno
		}
		if err != nil && first == nil {
			first = err
		}
	}
	return first
}

// doWrite runs inside RawConn.Write; false means "would block, wait".
func (c *linuxConn) doWrite(fd uintptr) bool {
	r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&c.wh[c.wsent])), uintptr(c.wcount-c.wsent), 0, 0, 0)
	if e == unix.EAGAIN || e == unix.EINTR {
		return false
	}
	if e != 0 {
		c.werr = e
		return true
	}
	c.wsent += int(r)
	return true
}

func (c *linuxConn) putSockaddr(sa *unix.RawSockaddrInet6, ap netip.AddrPort) uint32 {
	a := ap.Addr()
	if !c.v6 {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.Unmap().As4()}
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:], ap.Port())
		return unix.SizeofSockaddrInet4
	}
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16()}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], ap.Port())
	return unix.SizeofSockaddrInet6
}

func sockaddrToAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
	}
	return netip.AddrPort{}
}
