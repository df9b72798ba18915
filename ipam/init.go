package ipam

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Bootstrap modes of --ipalloc-init.
const (
	ModeSeed      = "seed"
	ModeConsensus = "consensus"
	ModeObserver  = "observer"
)

// Init is how this peer helps create the ring when none exists yet.
type Init struct {
	Mode   string   // ModeSeed, ModeConsensus or ModeObserver
	Seeds  []string // seed: the peers the range is first split between, sorted
	Quorum int      // consensus: the number of initial peers; a majority of them must agree
}

// ParseInit decodes --ipalloc-init. An empty s means consensus among
// defaultQuorum peers (the number of PEER arguments + 1).
func ParseInit(s string, defaultQuorum int) (Init, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		if defaultQuorum < 1 {
			return Init{}, fmt.Errorf("ipalloc-init: default consensus size %d must be at least 1", defaultQuorum)
		}
		return Init{Mode: ModeConsensus, Quorum: defaultQuorum}, nil
	}
	mode, arg, hasArg := strings.Cut(s, "=")
	switch mode {
	case ModeObserver:
		if hasArg {
			return Init{}, fmt.Errorf("ipalloc-init %q: observer takes no value", s)
		}
		return Init{Mode: ModeObserver}, nil
	case ModeConsensus:
		if !hasArg {
			return Init{}, fmt.Errorf("ipalloc-init %q: want consensus=N, N the number of initial peers", s)
		}
		n, err := strconv.Atoi(arg)
		if err != nil || n < 1 {
			return Init{}, fmt.Errorf("ipalloc-init %q: consensus size must be a whole number >= 1", s)
		}
		return Init{Mode: ModeConsensus, Quorum: n}, nil
	case ModeSeed:
		if !hasArg || arg == "" {
			return Init{}, fmt.Errorf("ipalloc-init %q: want seed=NAME,NAME,... (peer names)", s)
		}
		var seeds []string
		seen := map[string]bool{}
		for _, name := range strings.Split(arg, ",") {
			name = strings.TrimSpace(name)
			if name == "" {
				return Init{}, fmt.Errorf("ipalloc-init %q: empty peer name in seed list", s)
			}
			if len(name) > maxNameLen {
				return Init{}, fmt.Errorf("ipalloc-init %q: peer name longer than %d bytes", s, maxNameLen)
			}
			if seen[name] {
				return Init{}, fmt.Errorf("ipalloc-init %q: peer %q named twice", s, name)
			}
			seen[name] = true
			seeds = append(seeds, name)
		}
		sort.Strings(seeds)
		return Init{Mode: ModeSeed, Seeds: seeds}, nil
	default:
		return Init{}, fmt.Errorf("ipalloc-init %q: unknown mode %q, want seed=NAME,..., consensus=N or observer", s, mode)
	}
}

// majority is how many of the n initial peers must agree on the ring.
func majority(n int) int { return n/2 + 1 }
