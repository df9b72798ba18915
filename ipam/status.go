package ipam

import (
	"fmt"
	"net/netip"
	"sort"
)

// Ready reports whether Allocate can succeed now: this peer owns free space,
// or the ring exists and an alive peer has free space to donate.
func (p *IPAM) Ready() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.readyLocked()
}

func (p *IPAM) readyLocked() bool {
	if p.ring == nil || p.left {
		return false
	}
	// As freeByPeerLocked, without its map: Ready is polled (readiness
	// probes, the agent's start), and at a thousand keys the map was 4 % of
	// a simulated mesh's CPU. This peer's own space first, then any alive
	// peer's.
	for _, own := range []bool{true, false} {
		for i, e := range p.ring.entries {
			if (e.Owner == p.cfg.Name) != own {
				continue
			}
			end := min(e.End, p.size)
			if i+1 < len(p.ring.entries) {
				end = min(end, p.ring.entries[i+1].Start)
			}
			if end > e.Start && min(e.Free, end-e.Start) > 0 && (own || p.cfg.Alive(e.Owner)) {
				return true
			}
		}
	}
	return false
}

// State is Status().State alone, without the shares and prefixes of every
// peer that Status works out: the agent shows it while it waits for the
// ring, and a thousand agents starting at once spent 15 % of their CPU in
// Status there.
func (p *IPAM) State() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stateLocked()
}

// stateLocked is the one-line IPAM state of `weft status`.
func (p *IPAM) stateLocked() string {
	switch {
	case p.left:
		return "left (ranges handed over)"
	case p.ring == nil && p.cfg.Init.Mode == ModeConsensus:
		return fmt.Sprintf("awaiting consensus (%d of %d known, quorum %d)",
			len(p.alivePeersLocked())+1, p.cfg.Init.Quorum, majority(p.cfg.Init.Quorum))
	case p.ring == nil:
		return "observer (awaiting the ring from a peer)"
	case p.readyLocked():
		return "ready"
	case p.ringCompleteLocked() && sumFree(p.freeByPeerLocked()) == 0:
		return "exhausted"
	default:
		return "idle (no free space here and no alive peer with free space)"
	}
}

func sumFree(m map[string]uint64) (n uint64) {
	for _, f := range m {
		n += f
	}
	return n
}

// Status is this peer's view of the ring, for `weft status ipam` and metrics.
type Status struct {
	State   string // one line: "ready", "awaiting consensus (1 of 3 known, quorum 2)", ...
	Range   string // the whole pod range
	Ready   bool   // Allocate can succeed now
	Mode    string // ModeSeed, ModeConsensus or ModeObserver
	Entries []Share
}

// Share is one owner's part of the ring.
type Share struct {
	Name      string
	Owned     uint64  // addresses owned
	Share     float64 // fraction of the whole range, 0..1
	InUse     uint64  // exact for the local peer; for others, derived from their gossiped free count
	Free      uint64
	Reachable bool // the local peer, or alive in the mesh
	Local     bool
	Ranges    []netip.Prefix // the fewest CIDR blocks covering what it owns
}

// Status is `weft status ipam`: per owner, sorted, the local peer first.
func (p *IPAM) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := Status{State: p.stateLocked(), Range: p.rangeStr, Ready: p.readyLocked(), Mode: p.cfg.Init.Mode}
	if p.ring == nil {
		return st
	}
	shares := map[string]*Share{}
	var prefixes = map[string][]netip.Prefix{}
	free := p.freeByPeerLocked()
	for _, s := range p.ring.spans() {
		sh := shares[s.Owner]
		if sh == nil {
			sh = &Share{Name: s.Owner, Local: s.Owner == p.cfg.Name,
				Reachable: s.Owner == p.cfg.Name || p.cfg.Alive(s.Owner), Free: free[s.Owner]}
			shares[s.Owner] = sh
		}
		sh.Owned += s.End - s.Start
		prefixes[s.Owner] = cidrCover(prefixes[s.Owner], p.cfg.Range, s.Start, s.End)
	}
	if shares[p.cfg.Name] == nil {
		// An observer, or a peer whose ranges were taken: still list it, owning nothing.
		shares[p.cfg.Name] = &Share{Name: p.cfg.Name, Local: true, Reachable: true}
	}
	for name, sh := range shares {
		sh.Share = float64(sh.Owned) / float64(p.size)
		reservedOwned := uint64(0)
		for _, off := range []uint64{0, p.size - 1} {
			if reserved(off, p.size) {
				if t := p.owners.Load(); t != nil {
					if o, ok := t.lookup(off); ok && o == name {
						reservedOwned++
					}
				}
			}
		}
		if sh.Local {
			sh.InUse = uint64(len(p.allocs))
		} else if sh.Owned >= reservedOwned+sh.Free {
			sh.InUse = sh.Owned - reservedOwned - sh.Free
		}
		sh.Ranges = prefixes[name]
		st.Entries = append(st.Entries, *sh)
	}
	sort.Slice(st.Entries, func(i, j int) bool {
		a, b := st.Entries[i], st.Entries[j]
		if a.Local != b.Local {
			return a.Local
		}
		return a.Name < b.Name
	})
	return st
}

// SavedRing returns the seeds of the ring saved in stateDir, and whether there
// is one. A restarting peer with a saved ring needs no bootstrap (which in
// Kubernetes needs the API server): it comes up from its own state.
func SavedRing(stateDir string) (seeds []string, ok bool, err error) {
	st, err := newStore(stateDir).load()
	if err != nil || st == nil || st.Ring == nil || st.Left {
		return nil, false, err
	}
	return st.Ring.Seeds, true, nil
}

// RingEntries is the number of keys of the ring this peer holds (0 without one).
func (p *IPAM) RingEntries() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ring == nil {
		return 0
	}
	return len(p.ring.entries)
}
