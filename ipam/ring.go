package ipam

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
)

// entry is one key of the ring: the owner of the addresses [Start, End) as of
// Version. Addresses are offsets from the start of the mesh range.
//
// The ring is a map from Start to entry. Keys are never removed (a split adds
// keys, a donation changes an owner), and each key is a register where the
// higher Version wins. That makes merge a join: commutative, associative,
// idempotent, whatever order gossip delivers updates in.
//
// End is explicit, not implied by the next key, so that a peer that has heard
// of a key's newer, shorter version but not yet of the key that follows it does
// not believe the old owner still owns the tail: the tail is then "unknown",
// never "owned by two".
type entry struct {
	Start   uint64
	End     uint64
	Owner   string
	Version uint64
	Free    uint64 // free addresses in [Start, End), as last published by Owner
}

// span is a range with its effective owner, after resolving the keys.
type span struct {
	Start, End uint64
	Owner      string
}

// conflict is two different values of one key at the same version: only the
// owner writes a key, so this means two peers each believed they owned it
// (rmpeer of a live peer, or state restored from an old backup).
type conflict struct {
	Local, Remote entry
}

func (c conflict) String() string {
	return fmt.Sprintf("range key %d version %d is owned by %q (end %d) here but by %q (end %d) remotely",
		c.Local.Start, c.Local.Version, c.Local.Owner, c.Local.End, c.Remote.Owner, c.Remote.End)
}

// ring is the replicated ownership table of the mesh range.
type ring struct {
	// ID names how the ring was seeded; rings with different IDs never merge.
	ID      string
	Seeds   []string // sorted names the range was first split between
	Size    uint64   // number of addresses in the mesh range
	entries []entry  // sorted by Start, Starts unique
}

// ringID is a digest of what makes two rings compatible: the range and the
// peers it was first split between. Two peers seeding the same way get the
// same ring, so they need not have talked.
func ringID(rangeStr string, seeds []string) string {
	h := sha256.New()
	fmt.Fprintf(h, "weft-ring-v1\x00%s\x00%s", rangeStr, strings.Join(seeds, "\x00"))
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// newSeededRing splits [0,size) evenly between the sorted seeds.
func newSeededRing(rangeStr string, size uint64, seeds []string) *ring {
	s := append([]string(nil), seeds...)
	sort.Strings(s)
	r := &ring{ID: ringID(rangeStr, s), Seeds: s, Size: size}
	n := uint64(len(s))
	for i, name := range s {
		start, end := size*uint64(i)/n, size*uint64(i+1)/n
		if start == end {
			continue
		}
		r.entries = append(r.entries, entry{Start: start, End: end, Owner: name, Version: 1,
			Free: freeIn(start, end, size, nil)})
	}
	return r
}

// reserved reports whether offset off is never handed out: the first and last
// address of the mesh range (network and broadcast of the whole range).
func reserved(off, size uint64) bool {
	return size >= 4 && (off == 0 || off == size-1)
}

// freeIn counts the addresses of [start,end) that are neither reserved nor in
// the sorted slice used.
func freeIn(start, end, size uint64, used []uint64) uint64 {
	n := end - start
	if reserved(0, size) && start == 0 && end > 0 {
		n--
	}
	if reserved(size-1, size) && end == size && start < size-1 {
		n--
	}
	lo := sort.Search(len(used), func(i int) bool { return used[i] >= start })
	hi := sort.Search(len(used), func(i int) bool { return used[i] >= end })
	return n - uint64(hi-lo)
}

func (r *ring) clone() *ring {
	c := *r
	c.Seeds = append([]string(nil), r.Seeds...)
	c.entries = append([]entry(nil), r.entries...)
	return &c
}

// find returns the index of key start and whether it exists.
func (r *ring) find(start uint64) (int, bool) {
	i := sort.Search(len(r.entries), func(i int) bool { return r.entries[i].Start >= start })
	return i, i < len(r.entries) && r.entries[i].Start == start
}

// wins reports whether a should replace b for the same key. On a version tie
// with different values the order is arbitrary but fixed, so every peer keeps
// the same one and the ring still converges; the tie is reported as a conflict.
func wins(a, b entry) bool {
	if a.Version != b.Version {
		return a.Version > b.Version
	}
	if a.Owner != b.Owner {
		return a.Owner > b.Owner
	}
	if a.End != b.End {
		return a.End < b.End
	}
	return a.Free < b.Free
}

// merge folds remote entries into r. It returns whether anything changed and
// the version conflicts it found.
func (r *ring) merge(remote []entry) (changed bool, conflicts []conflict) {
	for _, e := range remote {
		i, ok := r.find(e.Start)
		if !ok {
			r.entries = append(r.entries, entry{})
			copy(r.entries[i+1:], r.entries[i:])
			r.entries[i] = e
			changed = true
			continue
		}
		cur := r.entries[i]
		if cur == e {
			continue
		}
		if cur.Version == e.Version {
			conflicts = append(conflicts, conflict{Local: cur, Remote: e})
		}
		if wins(e, cur) {
			r.entries[i] = e
			changed = true
		}
	}
	return changed, conflicts
}

// set writes one key as its owner: a new key starts at version 1, an existing
// key's version is bumped.
func (r *ring) set(start, end uint64, owner string, free uint64) entry {
	i, ok := r.find(start)
	e := entry{Start: start, End: end, Owner: owner, Version: 1, Free: free}
	if ok {
		e.Version = r.entries[i].Version + 1
		r.entries[i] = e
		return e
	}
	r.entries = append(r.entries, entry{})
	copy(r.entries[i+1:], r.entries[i:])
	r.entries[i] = e
	return e
}

// takeOver is set for a range taken from a peer that is gone (rmpeer,
// reclaim). It starts a new epoch in the version's high 32 bits, so the
// takeover beats every write the dead owner made, including ones that reached
// only some peers before it died; ordinary changes count in the low bits.
func (r *ring) takeOver(start, end uint64, owner string, free uint64) entry {
	e := r.set(start, end, owner, free)
	e.Version = (e.Version>>32 + 1) << 32
	i, _ := r.find(start)
	r.entries[i] = e
	return e
}

// spans resolves the keys into who owns what: each key owns from its Start up
// to its End or the next key, whichever comes first. Gaps are unknown.
func (r *ring) spans() []span {
	out := make([]span, 0, len(r.entries))
	for i, e := range r.entries {
		end := min(e.End, r.Size)
		if i+1 < len(r.entries) {
			end = min(end, r.entries[i+1].Start)
		}
		if end <= e.Start {
			continue
		}
		if n := len(out); n > 0 && out[n-1].Owner == e.Owner && out[n-1].End == e.Start {
			out[n-1].End = end
			continue
		}
		out = append(out, span{Start: e.Start, End: end, Owner: e.Owner})
	}
	return out
}

// ownedBy returns the indexes of keys whose effective range belongs to name,
// with their effective ends.
func (r *ring) ownedBy(name string) (idx []int, ends []uint64) {
	for i, e := range r.entries {
		if e.Owner != name {
			continue
		}
		end := min(e.End, r.Size)
		if i+1 < len(r.entries) {
			end = min(end, r.entries[i+1].Start)
		}
		if end > e.Start {
			idx = append(idx, i)
			ends = append(ends, end)
		}
	}
	return idx, ends
}

// validate checks what any ring, local or received, must satisfy.
func (r *ring) validate() error {
	if r.Size == 0 {
		return fmt.Errorf("ring of size 0")
	}
	for i, e := range r.entries {
		if err := e.validate(r.Size); err != nil {
			return err
		}
		if i > 0 && r.entries[i-1].Start >= e.Start {
			return fmt.Errorf("ring keys not sorted and unique at %d", e.Start)
		}
	}
	return nil
}

func (e entry) validate(size uint64) error {
	switch {
	case e.Start >= e.End:
		return fmt.Errorf("range entry [%d,%d) is empty", e.Start, e.End)
	case e.End > size:
		return fmt.Errorf("range entry [%d,%d) ends beyond the range of %d addresses", e.Start, e.End, size)
	case e.Owner == "":
		return fmt.Errorf("range entry [%d,%d) has no owner", e.Start, e.End)
	case len(e.Owner) > maxNameLen:
		return fmt.Errorf("range entry [%d,%d) owner name of %d bytes", e.Start, e.End, len(e.Owner))
	case e.Version == 0:
		return fmt.Errorf("range entry [%d,%d) has version 0", e.Start, e.End)
	case e.Free > e.End-e.Start:
		return fmt.Errorf("range entry [%d,%d) claims %d free", e.Start, e.End, e.Free)
	}
	return nil
}

const maxNameLen = 255
