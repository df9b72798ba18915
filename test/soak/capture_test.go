package soak

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netnstest"
)

// capture reads every frame that crosses the underlay namespace (each host's
// cable, both directions) through an AF_PACKET socket, and counts those that
// carry a mesh's marker in the clear. The plaintext mesh's marker must show
// up (proof that the capture sees pod traffic); the encrypted mesh's never.
type capture struct {
	fd     int
	secret []byte
	plain  []byte
	leaks  atomic.Uint64
	plainN atomic.Uint64
	frames atomic.Uint64
	stop   atomic.Bool
	done   chan struct{}
	onLeak func(desc string)
}

func startCapture(underlayNetns string, secret, plain string, onLeak func(string)) (*capture, error) {
	c := &capture{fd: -1, secret: []byte(secret), plain: []byte(plain), done: make(chan struct{}), onLeak: onLeak}
	err := netnstest.Do(underlayNetns, func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		return nil, err
	}
	// A large buffer so bursts are not dropped, and a read timeout so the
	// reader sees stop.
	_ = unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(c.fd)
		return nil, fmt.Errorf("capture timeout: %w", err)
	}
	go c.run()
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *capture) run() {
	defer close(c.done)
	buf := make([]byte, 1<<16)
	for !c.stop.Load() {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		c.frames.Add(1)
		frame := buf[:n]
		if bytes.Contains(frame, c.plain) {
			c.plainN.Add(1)
		}
		if bytes.Contains(frame, c.secret) {
			if c.leaks.Add(1) <= 3 {
				c.onLeak(describe(frame))
			}
		}
	}
}

// describe names an Ethernet/IPv4 frame by its addresses.
func describe(f []byte) string {
	if len(f) < 34 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_IP {
		return fmt.Sprintf("non-IPv4 frame of %d bytes", len(f))
	}
	src, _ := netip.AddrFromSlice(f[26:30])
	dst, _ := netip.AddrFromSlice(f[30:34])
	return fmt.Sprintf("IPv4 proto %d %s -> %s, %d bytes", f[23], src, dst, len(f))
}

// close stops the reader and returns the kernel's drop count.
func (c *capture) close() (drops uint32) {
	c.stop.Store(true)
	<-c.done
	if st, err := unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
		drops = st.Drops
	}
	unix.Close(c.fd)
	return drops
}
