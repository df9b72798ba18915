package agent

import "github.com/weftnet/weft/mesh"

// MeshView is how many members an agent sees in each state, itself
// included.
type MeshView struct {
	Known, Alive, Suspect, Dead, Left int
	// FollowUps are the follow-up push/pulls of the last join still to
	// come (mesh.Mesh.FollowUpsPending): a steady state starts after them.
	FollowUps int
}

// MeshView reads the agent's membership without going through the local
// API: a simulation of a thousand agents in one process polls it, where a
// status call each would cost more than what it measures. Zero before the
// agent is up.
func (a *Agent) MeshView() MeshView {
	if !a.running() {
		return MeshView{}
	}
	var v MeshView
	for _, p := range a.mesh.Members() {
		v.Known++
		switch p.State {
		case mesh.StateAlive:
			v.Alive++
		case mesh.StateSuspect:
			v.Suspect++
		case mesh.StateDead:
			v.Dead++
		case mesh.StateLeft:
			v.Left++
		}
	}
	v.FollowUps = a.mesh.FollowUpsPending()
	return v
}

// GossipStateSize is the size in bytes of this agent's state in a push/pull
// exchange (the IPAM ring, signed, beside memberlist's node list), and the
// number of ring entries. Zero before the agent is up.
func (a *Agent) GossipStateSize() (bytes, ringEntries int) {
	if !a.running() {
		return 0, 0
	}
	return a.mesh.StateSize(), a.ipam.RingEntries()
}
