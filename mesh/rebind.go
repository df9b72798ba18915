package mesh

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// NewTransport makes the gossip transport of a member bound to addr; nil
// means memberlist's own sockets. See Config.Transport.
type NewTransport func(addr netip.AddrPort) (memberlist.NodeAwareTransport, error)

// Bind is the underlay address this member binds and advertises now.
func (m *Mesh) Bind() netip.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.bind
}

// Rebind moves this member to a new underlay address, e.g. after DHCP gave
// the host another one. memberlist can change neither the address it binds
// nor the one it advertises, and peers refuse a live member's new address
// ("conflicting address") unless it left first. So:
//
//  1. the old memberlist stops; its sockets are bound to an address that is
//     gone;
//  2. a short-lived announcer, bound to the new address but advertising the
//     old one, joins the peers, takes over the old incarnation (a member
//     refutes what peers say about it, with a higher incarnation) and
//     leaves: the peers now see this member as left at the old address;
//  3. a new memberlist on the new address joins them: a left member may
//     come back at another address.
//
// The peers then update the address in their membership, which is where
// their data planes take this host's endpoint from. Handlers, join targets
// and subscribers stay as they are.
func (m *Mesh) Rebind(addr netip.Addr, newTransport NewTransport) error {
	m.rebindMu.Lock()
	defer m.rebindMu.Unlock()
	m.mu.Lock()
	old, closing := m.bind, m.closing
	m.mu.Unlock()
	if closing {
		return fmt.Errorf("mesh: rebind to %s: the mesh is shutting down", addr)
	}
	if addr == old {
		return nil
	}
	peers := m.rebindPeers()
	start := time.Now()
	if err := m.ml().Shutdown(); err != nil {
		m.log.Debug("stopping gossip on the old address", "err", err)
	}
	if err := m.announceMove(old, addr, peers, newTransport); err != nil {
		// The peers then keep the old address until they find it dead and
		// forget it; the new member is accepted after that.
		m.log.Warn("could not tell the peers that this host left its old address; they accept the new one once they find the old one dead",
			"old", old, "new", addr, "err", err)
	}
	var transport memberlist.NodeAwareTransport
	if newTransport != nil {
		var err error
		if transport, err = newTransport(netip.AddrPortFrom(addr, uint16(m.cfg.Port))); err != nil {
			return fmt.Errorf("mesh: gossip transport on %s: %w", addr, err)
		}
	}
	mc := m.memberlistConfig(addr, addr, transport)
	d := m.delegate
	mc.Delegate, mc.Events, mc.Alive, mc.Merge, mc.Conflict = d, d, d, d, d
	list, err := memberlist.Create(mc)
	if err != nil {
		if transport != nil {
			_ = transport.Shutdown()
		}
		return fmt.Errorf("mesh: start gossip on %s:%d: %w", addr, m.cfg.Port, err)
	}
	m.listp.Store(list)
	m.mu.Lock()
	m.bind = addr
	m.changedLocked()
	for _, t := range m.targets {
		t.next, t.failures = time.Time{}, 0 // join everyone again at once
	}
	m.mu.Unlock()
	n, err := joinAll(list, peers)
	m.log.Info("gossip moved to the new underlay address", "old", old, "new", addr, "peers_joined", n,
		"took", time.Since(start).Round(time.Millisecond), "err", err)
	return nil
}

// rebindPeers are the gossip addresses of the alive peers: whom to tell of
// the move. Only when none is alive, the join targets. (A stale target costs
// a whole dial timeout; the rejoin loop tries them all later anyway.)
func (m *Mesh) rebindPeers() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for a := range m.aliveAddrsLocked() {
		out = append(out, a)
	}
	if len(out) > 0 {
		return out
	}
	for a := range m.targets {
		out = append(out, a)
	}
	return out
}

// joinAll joins every address at once (memberlist's Join dials them one
// after the other) and returns how many answered.
func joinAll(list *memberlist.Memberlist, addrs []string) (int, error) {
	type result struct {
		n   int
		err error
	}
	results := make(chan result, len(addrs))
	for _, a := range addrs {
		go func() {
			n, err := list.Join([]string{a})
			results <- result{n, err}
		}()
	}
	var joined int
	var errs []error
	for range addrs {
		r := <-results
		joined += r.n
		if r.err != nil {
			errs = append(errs, r.err)
		}
	}
	return joined, errors.Join(errs...)
}

// announceMove runs the announcer of Rebind step 2.
func (m *Mesh) announceMove(old, addr netip.Addr, peers []string, newTransport NewTransport) error {
	if len(peers) == 0 {
		return nil
	}
	var transport memberlist.NodeAwareTransport
	if newTransport != nil {
		var err error
		if transport, err = newTransport(netip.AddrPortFrom(addr, uint16(m.cfg.Port))); err != nil {
			return err
		}
	}
	mc := m.memberlistConfig(addr, old, transport)
	// Only the metadata: peers vet it. No events, no state, no messages:
	// this member is the real one's stand-in for a moment.
	mc.Delegate = announcer{meta: m.delegate.meta.Load()}
	list, err := memberlist.Create(mc)
	if err != nil {
		if transport != nil {
			_ = transport.Shutdown()
		}
		return fmt.Errorf("announcer on %s: %w", net.JoinHostPort(addr.String(), strconv.Itoa(m.cfg.Port)), err)
	}
	defer func() { _ = list.Shutdown() }()
	// The push/pull of the join brings the peers' view of this member; the
	// announcer refutes it with a higher incarnation, so that its leave
	// below outranks what the peers know.
	if n, err := joinAll(list, peers); n == 0 {
		return fmt.Errorf("join %v: %w", peers, err)
	}
	if err := list.Leave(2 * time.Second); err != nil {
		return fmt.Errorf("leave: %w", err)
	}
	return nil
}

// announcer is the delegate of the Rebind announcer: it shows this member's
// metadata and nothing else.
type announcer struct{ meta *[]byte }

func (a announcer) NodeMeta(limit int) []byte {
	if a.meta == nil || len(*a.meta) > limit {
		return nil
	}
	return *a.meta
}
func (announcer) NotifyMsg([]byte)                {}
func (announcer) GetBroadcasts(int, int) [][]byte { return nil }
func (announcer) LocalState(bool) []byte          { return nil }
func (announcer) MergeRemoteState([]byte, bool)   {}
