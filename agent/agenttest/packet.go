package agenttest

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/weftnet/weft/router/gso"
)

// IPv4UDP builds an IPv4 UDP packet from src to dst with valid checksums, as
// a pod would send it.
func IPv4UDP(src, dst netip.Addr, srcPort, dstPort uint16, payload []byte) []byte {
	const ihl, udpLen = 20, 8
	total := ihl + udpLen + len(payload)
	p := make([]byte, total)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:4], uint16(total))
	p[6] = 0x40 // don't fragment
	p[8] = 64   // TTL
	p[9] = 17   // UDP
	s4, d4 := src.As4(), dst.As4()
	copy(p[12:16], s4[:])
	copy(p[16:20], d4[:])
	binary.BigEndian.PutUint16(p[10:12], ^gso.Fold(gso.Sum(p[:ihl], 0)))

	u := p[ihl:]
	binary.BigEndian.PutUint16(u[0:2], srcPort)
	binary.BigEndian.PutUint16(u[2:4], dstPort)
	binary.BigEndian.PutUint16(u[4:6], uint16(udpLen+len(payload)))
	copy(u[udpLen:], payload)
	// Pseudo-header: addresses, protocol, UDP length.
	acc := gso.Sum(p[12:20], 17+uint64(udpLen+len(payload)))
	c := ^gso.Fold(gso.Sum(u, acc))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:8], c)
	return p
}

// ExpectPacket waits until the agent writes want to its TUN, for a pod on
// this host, skipping other packets; it fails the test after WaitTimeout.
func (n *Node) ExpectPacket(want []byte) {
	t := n.c.T
	t.Helper()
	dev := n.TUN()
	if dev == nil {
		t.Fatalf("%s: no TUN open", n.Name)
	}
	deadline := time.NewTimer(WaitTimeout)
	defer deadline.Stop()
	var others int
	for {
		select {
		case p := <-dev.Written():
			if bytes.Equal(p.Data, want) {
				return
			}
			others++
		case <-deadline.C:
			t.Fatalf("%s: the packet did not come out of the TUN within %v (%d other packets did)", n.Name, WaitTimeout, others)
		}
	}
}
