//go:build !linux

package udp

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/weftnet/weft/internal/logx"
)

// portableConn sends and receives one datagram per system call; it exists
// so the package builds off Linux, not for speed.
type portableConn struct {
	pc    *net.UDPConn
	local netip.AddrPort

	mu     sync.Mutex // guards joined: WriteBatch may be called concurrently
	joined []byte
}

// Listen opens a plain UDP socket on addr.
func Listen(addr netip.AddrPort, log *slog.Logger) (Conn, error) {
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, fmt.Errorf("listen udp %s: %w", addr, err)
	}
	_ = pc.SetReadBuffer(SocketBuffer)
	_ = pc.SetWriteBuffer(SocketBuffer)
	logx.OrDiscard(log).Info("udp listen", "addr", pc.LocalAddr(), "datapath", "udp-plain")
	return &portableConn{pc: pc, local: pc.LocalAddr().(*net.UDPAddr).AddrPort()}, nil
}

func (c *portableConn) ReadBatch(msgs []Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	n, from, err := c.pc.ReadFromUDPAddrPort(msgs[0].Buf)
	if err != nil {
		return 0, fmt.Errorf("udp read: %w", err)
	}
	msgs[0].N, msgs[0].Addr, msgs[0].SegSize, msgs[0].Parts = n, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), 0, nil
	return 1, nil
}

func (c *portableConn) WriteBatch(msgs []Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var first error
	send := func(b []byte, to netip.AddrPort) {
		if _, err := c.pc.WriteToUDPAddrPort(b, to); err != nil && first == nil {
			first = fmt.Errorf("udp write: %w", err)
		}
	}
	for _, m := range msgs {
		if m.Parts != nil {
			for i := range m.Parts {
				c.joined = m.AppendDatagram(c.joined[:0], i)
				send(c.joined, m.Addr)
			}
			continue
		}
		b := m.Buf[:m.N]
		seg := m.SegSize
		if seg <= 0 {
			seg = len(b)
		}
		for len(b) > 0 {
			k := min(seg, len(b))
			send(b[:k], m.Addr)
			b = b[k:]
		}
	}
	return first
}

func (c *portableConn) LocalAddr() netip.AddrPort { return c.local }
func (c *portableConn) Close() error              { return c.pc.Close() }
func (c *portableConn) Datapath() string          { return "udp-plain" }
