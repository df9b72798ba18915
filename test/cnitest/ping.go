package cnitest

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/weftnet/weft/internal/netnstest"
)

// Ping sends ICMP echo requests from inside the namespace at netnsPath to
// addr until one is answered or ctx ends (each attempt waits at most 1 s).
// It needs no ping binary: the raw socket is opened inside the namespace
// and stays there.
func Ping(ctx context.Context, netnsPath string, addr netip.Addr) error {
	var conn *icmp.PacketConn
	err := netnstest.Do(netnsPath, func() error {
		var err error
		conn, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return fmt.Errorf("ping %s from %s: open socket: %w", addr, netnsPath, err)
	}
	defer conn.Close()

	var idb [2]byte
	_, _ = rand.Read(idb[:])
	id := int(binary.BigEndian.Uint16(idb[:]))
	dst := &net.IPAddr{IP: net.IP(addr.AsSlice())}
	buf := make([]byte, 1500)
	for seq := 1; ; seq++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("ping %s from %s: no reply: %w", addr, netnsPath, err)
		}
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("weft-cnitest")}}
		b, err := msg.Marshal(nil)
		if err != nil {
			return err
		}
		if _, err := conn.WriteTo(b, dst); err != nil {
			return fmt.Errorf("ping %s from %s: send: %w", addr, netnsPath, err)
		}
		deadline := time.Now().Add(time.Second)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		_ = conn.SetReadDeadline(deadline)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				break // timed out: send again
			}
			reply, err := icmp.ParseMessage(1, buf[:n])
			if err != nil || reply.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			echo, ok := reply.Body.(*icmp.Echo)
			if ok && echo.ID == id && from.String() == addr.String() {
				return nil
			}
		}
	}
}
