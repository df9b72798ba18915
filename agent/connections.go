package agent

import (
	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/mesh"
	"github.com/weftnet/weft/router"
	"github.com/weftnet/weft/router/crypto"
)

// Connection states of `weft status connections`.
const (
	connEstablished = "established"
	connConnecting  = "connecting"
	connDown        = "down"
)

// connections joins membership, the forwarder's counters and crypto's
// sessions into one line per remote peer, with the reason when it is not
// established.
func (a *Agent) connections() []api.Connection {
	out := []api.Connection{}
	if !a.running() || a.dp == nil {
		return out
	}
	stats := map[string]router.PeerStats{}
	for _, s := range a.dp.router.Stats() {
		stats[s.Peer] = s
	}
	sessions := map[string]crypto.SessionInfo{}
	if a.dp.crypto != nil {
		for _, s := range a.dp.crypto.Sessions() {
			sessions[s.Peer] = s
		}
	}
	for _, m := range a.mesh.Members() {
		if m.Name == a.cfg.Name {
			continue
		}
		s := stats[m.Name]
		c := api.Connection{
			Peer: m.Name, Encrypted: a.dp.crypto != nil, Datapath: a.dp.router.Datapath(), MTU: a.dp.mtu,
			LastHeard: s.LastHeard, TxPackets: s.TxPackets, TxBytes: s.TxBytes,
			RxPackets: s.RxPackets, RxBytes: s.RxBytes, DropsByWhy: s.Drops,
		}
		if fast, why := a.fp.decision(m.Name); fast {
			c.Datapath = pairFastdp
		} else {
			c.DatapathReason = why
		}
		if ep, ok := a.routes.endpoint(m.Name); ok {
			c.Address = ep.String()
		} else if m.Addr.IsValid() {
			c.Address = m.Addr.String()
		}
		switch {
		case m.State.Gone():
			c.State, c.Reason = connDown, "peer "+m.State.String()+" in gossip"
		case m.State == mesh.StateUnknown:
			c.State, c.Reason = connConnecting, "known from the last run, not yet heard of in gossip"
		case a.dp.crypto != nil:
			sess, ok := sessions[m.Name]
			c.Cipher, c.LastRekey = sess.Cipher, sess.LastRekey
			switch {
			case ok && sess.State == crypto.SessionEstablished:
				c.State = connEstablished
			case ok && sess.State == crypto.SessionHandshake:
				c.State, c.Reason = connConnecting, "handshake in progress"
			default:
				c.State, c.Reason = connConnecting, "no session yet (starts with the first packet)"
			}
			if ok && sess.HandshakeFailures > 0 && c.State != connEstablished {
				c.Reason += ", handshakes failed: check that every host has the same password"
			}
		case m.State == mesh.StateSuspect:
			c.State, c.Reason = connConnecting, "peer suspect in gossip"
		default:
			c.State = connEstablished
		}
		out = append(out, c)
	}
	return out
}
