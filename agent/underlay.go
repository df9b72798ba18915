package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/weftnet/weft/mesh"
	"github.com/weftnet/weft/router/udp"
)

// An underlay address change (DHCP, a cloud re-addressing, an operator):
// --host names the address at start; the link holding it is the underlay
// link. When that address disappears from the link and another global IPv4
// address is there (or comes), the agent follows it: the data socket and
// gossip move to the new address and the peers learn it through gossip
// (mesh.Rebind). An extra address beside the current one changes nothing.

// underlayWatch follows the underlay address on the underlay link.
type underlayWatch struct {
	a    *Agent
	link string // "" when --host is on no link of this host: not followed
	said string // last problem logged, to log each once
}

func (a *Agent) newUnderlayWatch() *underlayWatch {
	host := a.underlayAddr()
	link, err := a.dev.HostNet.UnderlayLink(host)
	if err != nil {
		a.log.Info("the underlay address is on no link of this host (NAT?); a change of it is not followed", "host", host, "err", err)
		return &underlayWatch{a: a}
	}
	a.log.Info("following the underlay address", "host", host, "link", link)
	return &underlayWatch{a: a, link: link}
}

// follow looks at the underlay link's addresses and moves to a new one when
// the current one is gone.
func (u *underlayWatch) follow(ctx context.Context) {
	if u.link == "" || ctx.Err() != nil {
		return
	}
	cur := u.a.underlayAddr()
	addrs, err := u.a.dev.HostNet.LinkAddrs(u.link)
	switch {
	case err != nil:
		u.say("cannot read the underlay link's addresses", "link", u.link, "err", err)
		return
	case slices.Contains(addrs, cur):
		u.said = ""
		return
	case len(addrs) == 0:
		u.say("the underlay address is gone and its link has no other; waiting for a new one", "old", cur, "link", u.link)
		return
	}
	next := addrs[0]
	u.a.log.Warn("the underlay address changed; moving gossip and the data plane to the new one", "old", cur, "new", next, "link", u.link)
	if err := u.a.rebind(next); err != nil {
		u.say("could not move to the new underlay address; will retry", "new", next, "err", err)
		return
	}
	u.a.notify().UnderlayChanged(cur, next)
	u.said = ""
}

func (u *underlayWatch) say(msg string, args ...any) {
	if msg == u.said {
		return
	}
	u.said = msg
	u.a.log.Warn(msg, args...)
}

// rebind moves the data socket, then gossip, to addr: the socket first, so
// that it listens there before the peers learn the address.
func (a *Agent) rebind(addr netip.Addr) error {
	if a.dp != nil {
		dataAddr := netip.AddrPortFrom(addr, uint16(a.cfg.Port+1))
		conn, err := a.dev.ListenUDP(dataAddr, a.log.With("component", "udp"))
		if err != nil {
			return fmt.Errorf("data plane socket %s: %w", dataAddr, err)
		}
		if err := a.dp.conn.swap(conn); err != nil {
			return err
		}
	}
	var nt mesh.NewTransport
	if a.dev.GossipTransport != nil {
		nt = mesh.NewTransport(a.dev.GossipTransport)
	}
	if err := a.mesh.Rebind(addr, nt); err != nil {
		return fmt.Errorf("gossip: %w", err)
	}
	a.mu.Lock()
	a.host = addr
	a.mu.Unlock()
	a.log.Info("moved to the new underlay address", "address", addr)
	return nil
}

// underlayAddr is the underlay address in use now: --host until it changes.
func (a *Agent) underlayAddr() netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.host.IsValid() {
		return a.host
	}
	return a.cfg.Host
}

// swapConn is the data plane's socket, which an underlay address change
// replaces under the running router. The router only sees this one; the
// hot path pays one atomic load per batch.
type swapConn struct {
	cur      atomic.Pointer[connRef]
	datapath string

	mu     sync.Mutex // swap and Close
	closed bool
}

type connRef struct{ udp.Conn }

func newSwapConn(c udp.Conn) *swapConn {
	s := &swapConn{datapath: c.Datapath()}
	s.cur.Store(&connRef{c})
	return s
}

// ReadBatch reads from the current socket; when a swap closed the socket it
// was waiting on, it goes on with the new one.
func (s *swapConn) ReadBatch(msgs []udp.Message) (int, error) {
	for {
		c := s.cur.Load()
		n, err := c.ReadBatch(msgs)
		if err != nil && errors.Is(err, net.ErrClosed) && s.cur.Load() != c {
			continue
		}
		return n, err
	}
}

func (s *swapConn) WriteBatch(msgs []udp.Message) error { return s.cur.Load().WriteBatch(msgs) }
func (s *swapConn) LocalAddr() netip.AddrPort           { return s.cur.Load().LocalAddr() }
func (s *swapConn) Datapath() string                    { return s.datapath }

func (s *swapConn) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return s.cur.Load().Close()
}

// swap makes c the socket and closes the old one (which wakes a reader
// blocked on it).
func (s *swapConn) swap(c udp.Conn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		_ = c.Close()
		return errors.New("data plane socket: closed")
	}
	old := s.cur.Swap(&connRef{c})
	_ = old.Close() // its address is gone; nothing to save
	return nil
}
