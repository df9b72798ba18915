// Package udp is weft's batched UDP transport for data-plane datagrams.
//
// On Linux one ReadBatch is one recvmmsg and one WriteBatch is one sendmmsg
// (repeated only on partial sends). Where the kernel has them, UDP GRO hands
// over trains of equal-size datagrams in one buffer, and UDP GSO (UDP_SEGMENT)
// sends a train of equal-size datagrams as one message, taken from several
// buffers without copying them together. Socket buffers are raised to 8 MiB
// (SO_RCVBUFFORCE/SO_SNDBUFFORCE as root): at the default size the receiver
// drops datagrams under load and TCP inside the tunnel collapses.
//
// The hot system calls (recvmmsg, sendmmsg) are made with RawSyscall: the
// socket is non-blocking, so they never sleep, and skipping the scheduler's
// syscall bookkeeping saves thread handoffs that, measured with `make
// bench` on two shared cores, cost about a tenth of the throughput. Waiting
// for data is left to Go's network poller.
package udp

import (
	"net/netip"
)

// Sizes that callers plan their buffers with.
const (
	// MaxDatagram is the largest UDP payload over IPv4.
	MaxDatagram = 65507
	// RecvBufSize is the receive buffer size that never truncates a GRO
	// train; smaller buffers work but the kernel then truncates trains
	// (those messages come back with N == 0).
	RecvBufSize = 65535
	// MaxSegments is the most datagrams one GSO send carries (the kernel's
	// UDP_MAX_SEGMENTS).
	MaxSegments = 64
	// SocketBuffer is the send and receive socket buffer size asked for.
	SocketBuffer = 8 << 20
)

// Datapath descriptions.
const (
	DatapathGSO  = "udp-gso"  // sendmmsg/recvmmsg + UDP GSO/GRO
	DatapathMMsg = "udp-mmsg" // sendmmsg/recvmmsg only
)

// Message is one entry of a batch.
//
// Receive: the caller sets Buf (its len is the space to fill); ReadBatch sets
// N, Addr (the sender) and SegSize. SegSize > 0 means the kernel coalesced a
// train (GRO): Buf[:N] holds datagrams of SegSize bytes each, the last one
// possibly shorter. SegSize == 0 means Buf[:N] is one datagram.
//
// Send: Addr is the destination. When Parts is nil, Buf[:N] is sent: one
// datagram, or, with SegSize > 0, a train cut every SegSize bytes. When Parts
// is set, each part is one datagram (Buf, N and SegSize are ignored), or,
// when Heads is set too (as long as Parts), datagram i is Heads[i] followed
// by Parts[i]. Runs of equal-size datagrams (a shorter last one allowed) go
// out as one GSO message without being copied together.
type Message struct {
	Buf     []byte
	N       int
	Addr    netip.AddrPort
	SegSize int
	Parts   [][]byte
	Heads   [][]byte
}

// Conn is a batched UDP socket. ReadBatch is called from one goroutine;
// WriteBatch may be called from several.
type Conn interface {
	// ReadBatch blocks until at least one datagram arrived and fills
	// msgs[:n]. A closed Conn returns net.ErrClosed.
	ReadBatch(msgs []Message) (n int, err error)
	// WriteBatch sends every message, trying all of them even when some
	// fail; it returns the first error (net.ErrClosed once closed).
	WriteBatch(msgs []Message) error
	LocalAddr() netip.AddrPort
	Close() error
	// Datapath says which offloads are in use: "udp-gso" or "udp-mmsg".
	Datapath() string
}

// AppendDatagram appends datagram i of a Parts message (Heads[i], when set,
// then Parts[i]) to dst. For fallbacks and tests; the Linux path never
// joins them.
func (m *Message) AppendDatagram(dst []byte, i int) []byte {
	if m.Heads != nil {
		dst = append(dst, m.Heads[i]...)
	}
	return append(dst, m.Parts[i]...)
}
