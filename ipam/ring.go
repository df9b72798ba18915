package ipam

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
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
	// Grant is how Owner came to own this key when it was not its creator
	// (donation, hand-over, takeover); it travels with every later version
	// so that a peer that missed the transfer can still check it.
	Grant grant
	// Sig is the writer's signature (see auth.go): the owner's, or for the
	// write that transfers the key, the grant's signer's. Zero only for the
	// seeded keys, which every peer derives alike.
	Sig [sigSize]byte
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
	// digested is ringDigest(entries), or "" when not worked out since
	// they last changed (merge, put: the only writers once made). Every
	// join and periodic push/pull carries the digest at both ends, and at
	// a thousand keys hashing them each time was 5 % of a simulated mesh's
	// CPU.
	digested string
}

// digest is ringDigest of the entries, kept until they change.
func (r *ring) digest() string {
	if r.digested == "" {
		r.digested = ringDigest(r.entries)
	}
	return r.digested
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
	r := &ring{ID: ringID(rangeStr, s), Seeds: s, Size: size, entries: make([]entry, 0, len(s))}
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
	if a.Free != b.Free {
		return a.Free < b.Free
	}
	return bytes.Compare(a.Sig[:], b.Sig[:]) < 0
}

// merge folds remote entries into r, trusting every one of them (local
// writes, tests). It returns whether anything changed and the conflicts.
func (r *ring) merge(remote []entry) (changed bool, conflicts []conflict) {
	changed, conflicts, _ = r.mergeChecked(remote, nil, 0)
	return changed, conflicts
}

// acceptFunc decides whether e may replace cur (exists) or, for a new key,
// be added after prev (hasPrev): the owner-only-writes rule of auth.go.
// cur is the receiver's entry as it was before this merge; prev is the key
// before e as merged so far, or as it was before the merge (see
// mergeChecked).
type acceptFunc func(cur entry, exists bool, prev entry, hasPrev bool, e entry) bool

// mergeChecked folds remote entries into r in one sorted pass, O(n+m): each
// remote entry that wins its key and that accept allows replaces the key;
// new keys are added while the ring stays within maxKeys (0: no cap). It
// returns whether anything changed, the version conflicts, and how many
// entries were refused.
func (r *ring) mergeChecked(remote []entry, accept acceptFunc, maxKeys int) (changed bool, conflicts []conflict, refused int) {
	if !sort.SliceIsSorted(remote, func(i, j int) bool { return remote[i].Start < remote[j].Start }) {
		remote = slices.Clone(remote)
		sort.SliceStable(remote, func(i, j int) bool { return remote[i].Start < remote[j].Start })
	}
	if hasDuplicateStarts(remote) {
		// Several values of one key in one batch: only the winner counts,
		// as if they had come one by one.
		w := make([]entry, 0, len(remote))
		for _, e := range remote {
			if n := len(w); n > 0 && w[n-1].Start == e.Start {
				if wins(e, w[n-1]) {
					w[n-1] = e
				}
				continue
			}
			w = append(w, e)
		}
		remote = w
	}
	type add struct {
		at int // insert before local index at
		k  int // index in remote
	}
	var adds []add
	i := 0
	// The key before e: as merged so far (a key this batch replaced or
	// added counts, as if the batch came one entry at a time), and as it
	// was before the merge. A new key is accepted if either allows it:
	// both are states the receiver could have been in. With only the old
	// one, a full state filled one key of a chain of keys a peer missed
	// per merge, and with only the new one, a batch that shortens a key
	// and adds the key after it would depend on how the writer trimmed.
	var prev, prevOld entry
	hasPrev := false
	var updated entry
	updatedAt := -1
	for k := range remote {
		e := &remote[k]
		for i < len(r.entries) && r.entries[i].Start < e.Start {
			prev, prevOld = r.entries[i], r.entries[i]
			if i == updatedAt {
				prevOld = updated
			}
			hasPrev = true
			i++
		}
		if i < len(r.entries) && r.entries[i].Start == e.Start {
			cur := &r.entries[i]
			if *cur == *e {
				continue
			}
			if !wins(*e, *cur) {
				if cur.Version == e.Version && (accept == nil || accept(*cur, true, prev, hasPrev, *e)) {
					conflicts = append(conflicts, conflict{Local: *cur, Remote: *e})
				}
				continue
			}
			if accept != nil && !accept(*cur, true, prev, hasPrev, *e) {
				refused++
				continue
			}
			if cur.Version == e.Version {
				conflicts = append(conflicts, conflict{Local: *cur, Remote: *e})
			}
			updated, updatedAt = *cur, i
			r.entries[i] = *e
			r.digested = ""
			changed = true
			continue
		}
		if maxKeys > 0 && len(r.entries)+len(adds) >= maxKeys {
			refused++
			continue
		}
		if accept != nil && !accept(entry{}, false, prev, hasPrev, *e) &&
			(prevOld == prev || !accept(entry{}, false, prevOld, hasPrev, *e)) {
			refused++
			continue
		}
		adds = append(adds, add{at: i, k: k})
		prev, prevOld, hasPrev = *e, *e, true
	}
	if len(adds) == 0 {
		return changed, conflicts, refused
	}
	out := make([]entry, 0, len(r.entries)+len(adds))
	j, from := 0, 0
	for j < len(adds) {
		at := adds[j].at
		out = append(out, r.entries[from:at]...)
		from = at
		for ; j < len(adds) && adds[j].at == at; j++ {
			out = append(out, remote[adds[j].k])
		}
	}
	out = append(out, r.entries[from:]...)
	r.entries = out
	r.digested = ""
	return true, conflicts, refused
}

func hasDuplicateStarts(sorted []entry) bool {
	for i := 1; i < len(sorted); i++ {
		if sorted[i-1].Start == sorted[i].Start {
			return true
		}
	}
	return false
}

// put stores e as key e.Start (index i, ok from find).
func (r *ring) put(i int, ok bool, e entry) {
	r.digested = ""
	if ok {
		r.entries[i] = e
		return
	}
	r.entries = append(r.entries, entry{})
	copy(r.entries[i+1:], r.entries[i:])
	r.entries[i] = e
}

// Versions and ballot rounds saturate at these bounds instead of wrapping, and
// anything above them is refused on receipt: a write never needs more (a
// takeover adds 2^32, an ordinary write 1), so a larger one is hostile.
const (
	maxVersion = 1 << 56
	maxRound   = 1 << 40
)

// nextVersion is v+1, saturating.
func nextVersion(v uint64) uint64 { return min(v+1, maxVersion) }

// takeoverVersion starts a new epoch in the high 32 bits, so that a takeover
// beats every write the dead owner made, including ones that reached only
// some peers before it died; ordinary changes count in the low bits.
func takeoverVersion(v uint64) uint64 { return min((v>>32+1)<<32, maxVersion) }

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

// complete reports whether every address of the range has a known owner:
// the keys, each up to its End or the next key, leave no gap. Every write
// keeps an honest ring complete (a split writes both halves, a trim stops
// at the next key), so a gap is a change this peer missed.
func (r *ring) complete() bool {
	_, gap := r.firstGap()
	return !gap
}

// firstGap reports whether the ring has a gap and the owner of the key
// right after the first one ("" when the gap runs to the end).
func (r *ring) firstGap() (after string, gap bool) {
	var next uint64
	for i, e := range r.entries {
		if e.Start > next {
			return e.Owner, true
		}
		end := min(e.End, r.Size)
		if i+1 < len(r.entries) {
			end = min(end, r.entries[i+1].Start)
		}
		next = max(next, end)
	}
	return "", next < r.Size
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
	case e.Version > maxVersion:
		return fmt.Errorf("range entry [%d,%d) has version %d, above the bound %d", e.Start, e.End, e.Version, uint64(maxVersion))
	case e.Free > e.End-e.Start:
		return fmt.Errorf("range entry [%d,%d) claims %d free", e.Start, e.End, e.Free)
	}
	if err := e.Grant.validate(e.Version); err != nil {
		return fmt.Errorf("range entry [%d,%d): %w", e.Start, e.End, err)
	}
	return nil
}

const maxNameLen = 255

// ringDigest stands for the ring's entries as they are, signatures and
// grants included: two peers with the same digest hold the same ring. A
// periodic push/pull carries it instead of every entry (the ring of a
// thousand peers is some 100 kB), and a peer whose digest differs asks for
// the full state.
func ringDigest(es []entry) string {
	h := sha256.New()
	var b []byte
	for _, e := range es {
		b = b[:0]
		b = binary.BigEndian.AppendUint64(b, e.Start)
		b = binary.BigEndian.AppendUint64(b, e.End)
		b = binary.BigEndian.AppendUint64(b, e.Version)
		b = binary.BigEndian.AppendUint64(b, e.Free)
		b = append(b, byte(len(e.Owner)))
		b = append(b, e.Owner...)
		b = append(b, byte(len(e.Grant.From)))
		b = append(b, e.Grant.From...)
		b = append(b, byte(len(e.Grant.To)))
		b = append(b, e.Grant.To...)
		b = binary.BigEndian.AppendUint64(b, e.Grant.Version)
		b = append(b, e.Grant.Reason)
		b = append(b, e.Grant.Sig[:]...)
		b = append(b, e.Sig[:]...)
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))
}
