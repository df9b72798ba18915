package mesh

// State is a peer's membership as this agent sees it. The zero value is
// StateUnknown, so a PeerInfo built by hand never passes for alive.
type State uint8

// Peer states.
const (
	StateUnknown State = iota
	StateAlive         // answering probes
	StateSuspect       // missed probes; not yet declared dead
	StateDead          // declared failed by the mesh
	StateLeft          // announced a clean leave
)

// States lists the states a peer can be reported in, in display order.
func States() []State { return []State{StateAlive, StateSuspect, StateDead, StateLeft} }

// String is the state's name in `weft status peers`, metrics and the API.
func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	default:
		return "unknown"
	}
}

// Reachable reports whether traffic should still go to a peer in state s: a
// suspect peer is often only slow to answer probes.
func (s State) Reachable() bool { return s == StateAlive || s == StateSuspect }

// Gone reports whether the peer is dead or has left.
func (s State) Gone() bool { return s == StateDead || s == StateLeft }
