package ipam

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"net/netip"
	"slices"
	"sort"
	"time"
)

// Allocate returns the address of (containerID, ifName), allocating one if it
// has none. With no free space of its own this peer asks the alive peer with
// the most free space for a donation and waits, at most until ctx ends.
func (p *IPAM) Allocate(ctx context.Context, containerID, ifName, netns string) (netip.Addr, error) {
	if containerID == "" {
		return netip.Addr{}, errors.New("allocate: empty container ID")
	}
	key := Attachment{containerID, ifName}
	for {
		p.mu.Lock()
		if p.left {
			p.mu.Unlock()
			return netip.Addr{}, fmt.Errorf("%w: this peer has handed its ranges over (weft reset)", ErrNotReady)
		}
		if a, ok := p.allocs[key]; ok {
			p.mu.Unlock()
			return a.Addr, nil
		}
		if p.ring != nil {
			if off, ok := p.findFreeLocked(); ok {
				addr, err := p.recordLocked(key, netns, off)
				clear(p.asked)
				p.flushUnlock()
				return addr, err
			}
		}
		why := p.askDonationLocked()
		wake := p.wake
		p.flushUnlock()
		if errors.Is(why, ErrExhausted) {
			return netip.Addr{}, fmt.Errorf("allocate for %s/%s: %w", containerID, ifName, why)
		}

		retry := time.NewTimer(p.donationRetry)
		select {
		case <-ctx.Done():
			retry.Stop()
			return netip.Addr{}, fmt.Errorf("allocate for %s/%s: %w", containerID, ifName, why)
		case <-wake:
		case <-retry.C:
		}
		retry.Stop()
	}
}

// recordLocked stores an allocation and persists it before anyone sees the
// address: a crash right after must not hand it out again.
func (p *IPAM) recordLocked(key Attachment, netns string, off uint64) (netip.Addr, error) {
	a := &Allocation{ContainerID: key.ContainerID, IfName: key.IfName, Netns: netns,
		Addr: addrAt(p.cfg.Range, off), Created: p.now().UTC()}
	// The undo of checkpointLocked, without copying every allocation.
	ring, dirty := p.ring.clone(), p.dirty
	p.allocs[key] = a
	p.used = insertSorted(p.used, off)
	p.refreshOwnLocked()
	if err := p.persistLocked(); err != nil {
		p.ring, p.dirty = ring, dirty
		delete(p.allocs, key)
		p.used = removeSorted(p.used, off)
		return netip.Addr{}, fmt.Errorf("allocate for %s/%s: %w", key.ContainerID, key.IfName, err)
	}
	return a.Addr, nil
}

// checkpointLocked saves what a local mutation may change (the ring, the
// allocations, the free counts to broadcast) and returns the function that
// puts it back. Every mutation of this peer's own state goes: checkpoint,
// change, persist, and only then publish or gossip; a failed persist (a full
// disk) undoes the change, so memory, disk and peers never disagree about
// which addresses this peer holds.
func (p *IPAM) checkpointLocked() (undo func()) {
	if p.store == nil || p.left {
		return func() {} // persistLocked cannot fail
	}
	var ring *ring
	if p.ring != nil {
		ring = p.ring.clone()
	}
	allocs := maps.Clone(p.allocs)
	used := slices.Clone(p.used)
	reported := maps.Clone(p.reported)
	dirty := p.dirty
	return func() {
		p.ring, p.allocs, p.used, p.reported, p.dirty = ring, allocs, used, reported, dirty
	}
}

// findFreeLocked is the lowest free offset in this peer's ranges.
func (p *IPAM) findFreeLocked() (uint64, bool) {
	idx, ends := p.ring.ownedBy(p.cfg.Name)
	for k, i := range idx {
		var off uint64
		found := false
		p.freeRunsLocked(p.ring.entries[i].Start, ends[k], func(s, _ uint64) bool {
			off, found = s, true
			return false
		})
		if found {
			return off, true
		}
	}
	return 0, false
}

// askDonationLocked sends a donation request to the best donor (not too
// often) and returns the error to give if the caller's deadline passes.
func (p *IPAM) askDonationLocked() error {
	now := p.now()
	if p.ring == nil {
		if p.cfg.Init.Mode == ModeObserver {
			p.askForRingLocked(now, p.donationRetry)
		}
		return fmt.Errorf("%w: %s", ErrNotReady, p.stateLocked())
	}
	free := p.freeByPeerLocked()
	type cand struct {
		name string
		free uint64
	}
	var cands []cand
	var unreachable uint64
	waiting := false // a donor with space refused lately: try again later
	for name, f := range free {
		if name == p.cfg.Name || f == 0 {
			continue
		}
		if !p.cfg.Alive(name) {
			unreachable += f
			continue
		}
		// A donor gives at most half its free space: one address is none.
		if f < 2 {
			continue
		}
		if t, ok := p.refused[name]; ok && now.Sub(t) < refusalMemory {
			waiting = true
			continue
		}
		cands = append(cands, cand{name, f})
	}
	if len(cands) == 0 {
		if waiting || !p.ringCompleteLocked() {
			return fmt.Errorf("%w: no free address here and no alive peer with free space to donate", ErrNotReady)
		}
		if unreachable > 0 {
			return fmt.Errorf("%w: no live peer has a free address; %d are owned by unreachable peers (`weft rmpeer` a peer that is gone for good to reuse its space)", ErrExhausted, unreachable)
		}
		return fmt.Errorf("%w: no peer has a free address", ErrExhausted)
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].free != cands[j].free {
			return cands[i].free > cands[j].free
		}
		return cands[i].name < cands[j].name
	})
	donor := cands[0].name
	if q, ok := p.asked[donor]; !ok || now.Sub(q.at) >= p.donationRetry {
		if ok && q.times >= 2 {
			// Asked twice, still nothing: it may be gone without membership
			// noticing yet. Try the next donor for a while.
			delete(p.asked, donor)
			p.refused[donor] = now
			return fmt.Errorf("%w: donor %s does not answer", ErrNotReady, donor)
		}
		p.asked[donor] = askedDonor{at: now, times: q.times + 1}
		// The request carries our own keys (their free counts show the
		// donor we are short of space) and an id, so a replay is one request.
		own := p.ownEntriesLocked()
		if len(own) > maxBroadcastEntries {
			own = own[:maxBroadcastEntries]
		}
		p.nonce++
		p.sendLocked(donor, &message{Type: msgDonReq, RingID: p.ring.ID, Entries: toWire(own), Nonce: p.nonce})
		p.log.Debug("asked for a donation", "donor", donor, "donor_free", cands[0].free)
	}
	return fmt.Errorf("%w: waiting for a donation from %s", ErrNotReady, donor)
}

type askedDonor struct {
	at    time.Time
	times int
}

// freeByPeerLocked sums the published free counts per owner.
func (p *IPAM) freeByPeerLocked() map[string]uint64 {
	out := map[string]uint64{}
	for i, e := range p.ring.entries {
		end := min(e.End, p.size)
		if i+1 < len(p.ring.entries) {
			end = min(end, p.ring.entries[i+1].Start)
		}
		if end > e.Start {
			out[e.Owner] += min(e.Free, end-e.Start)
		}
	}
	return out
}

func (p *IPAM) ringCompleteLocked() bool { return p.ring.complete() }

// handleDonationRequestLocked gives at most half of this peer's free space,
// carved from its largest free block, to a requester that is short of space.
// Each request id is answered once.
func (p *IPAM) handleDonationRequestLocked(m *message) error {
	to := m.From
	if p.ring == nil || p.left || m.RingID != p.ring.ID {
		p.sendLocked(to, &message{Type: msgNoDon})
		return nil
	}
	s := p.senders[to]
	if s == nil {
		return nil
	}
	if s.donInc != m.Inc { // the requester restarted: its ids start again
		s.donInc, s.donated = m.Inc, 0
	}
	if m.Nonce <= s.donated {
		return nil // answered already
	}
	s.donated = m.Nonce
	es := fromWire(m.Entries)
	for _, e := range es {
		if e.Owner != to {
			return fmt.Errorf("%w: donation request from %s carries a key of %s", ErrBadMessage, to, e.Owner)
		}
	}
	if len(es) > 0 {
		if err := p.mergeLocked(to, es, false); err != nil {
			p.log.Debug("donation request: merging the requester's keys", "from", to, "err", err)
		}
	}
	if f := p.freeByPeerLocked()[to]; f > 0 {
		p.log.Debug("refused a donation to a peer that has free space", "peer", to, "free", f)
		p.sendLocked(to, &message{Type: msgNoDon})
		return nil
	}
	if len(p.ring.entries)+2 > p.ringCapLocked() {
		p.log.Warn("no donation: the ring has as many keys as this mesh allows", "peer", to, "keys", len(p.ring.entries))
		p.sendLocked(to, &message{Type: msgNoDon})
		return nil
	}
	start, end, ok := p.pickDonationLocked()
	if !ok {
		p.sendLocked(to, &message{Type: msgNoDon})
		return nil
	}
	undo := p.checkpointLocked()
	changed := p.giveLocked(start, end, to)
	if err := p.persistLocked(); err != nil {
		// Our state on disk still owns the block: so must memory, and no
		// one may hear of the donation (the requester asks elsewhere).
		undo()
		p.sendLocked(to, &message{Type: msgNoDon})
		return fmt.Errorf("donation to %s not made: %w", to, err)
	}
	p.publishLocked()
	p.log.Info("donated addresses", "to", to, "from", addrAt(p.cfg.Range, start), "count", end-start)
	p.sendLocked(to, &message{Type: msgRing, RingID: p.ring.ID, Entries: toWire(changed)})
	p.broadcastEntriesLocked(changed)
	return nil
}

// pickDonationLocked chooses [start,end): a power-of-two block, aligned if it
// can be (fewer routes), of at most half the free space, from the largest
// free block.
func (p *IPAM) pickDonationLocked() (uint64, uint64, bool) {
	var total, bs, be uint64 // total free, largest free block [bs,be)
	idx, ends := p.ring.ownedBy(p.cfg.Name)
	for k, i := range idx {
		p.freeRunsLocked(p.ring.entries[i].Start, ends[k], func(s, e uint64) bool {
			total += e - s
			if e-s > be-bs {
				bs, be = s, e
			}
			return true
		})
	}
	give := min(total/2, be-bs)
	if give == 0 {
		return 0, 0, false
	}
	size := uint64(1) << (63 - bits.LeadingZeros64(give))
	start := (be - size) &^ (size - 1)
	if start < bs {
		start = be - size
	}
	return start, start + size, true
}

// freeRunsLocked calls each for every maximal run of free offsets in
// [start,end), in order, until each returns false.
func (p *IPAM) freeRunsLocked(start, end uint64, each func(s, e uint64) bool) {
	if reserved(0, p.size) {
		start = max(start, 1)
		end = min(end, p.size-1)
	}
	j := sort.Search(len(p.used), func(j int) bool { return p.used[j] >= start })
	run := start
	for ; j < len(p.used) && p.used[j] < end; j++ {
		if p.used[j] > run && !each(run, p.used[j]) {
			return
		}
		run = p.used[j] + 1
	}
	if end > run {
		each(run, end)
	}
}

// giveLocked makes [start,end), inside one of our keys, owned by to. It
// returns the keys written.
func (p *IPAM) giveLocked(start, end uint64, to string) []entry {
	idx, ends := p.ring.ownedBy(p.cfg.Name)
	var out []entry
	for k, i := range idx {
		ks, ke := p.ring.entries[i].Start, ends[k]
		if start < ks || end > ke {
			continue
		}
		if start > ks {
			out = append(out, p.writeLocked(p.ring, ks, start, p.cfg.Name, freeIn(ks, start, p.size, p.used), reasonNone))
		}
		out = append(out, p.writeLocked(p.ring, start, end, to, freeIn(start, end, p.size, p.used), reasonDonation))
		if end < ke {
			out = append(out, p.writeLocked(p.ring, end, ke, p.cfg.Name, freeIn(end, ke, p.size, p.used), reasonNone))
		}
		break
	}
	return out
}

// Claim records addr for (containerID, ifName), e.g. after a restart of the
// container runtime. It waits for the ring, at most until ctx ends.
func (p *IPAM) Claim(ctx context.Context, containerID, ifName, netns string, addr netip.Addr) error {
	if containerID == "" {
		return errors.New("claim: empty container ID")
	}
	off, ok := offsetOf(p.cfg.Range, addr)
	if !ok {
		return fmt.Errorf("claim %s: outside the range %s", addr, p.cfg.Range)
	}
	if reserved(off, p.size) {
		return fmt.Errorf("claim %s: reserved address of the range %s", addr, p.cfg.Range)
	}
	key := Attachment{containerID, ifName}
	for {
		p.mu.Lock()
		if a, ok := p.allocs[key]; ok {
			p.mu.Unlock()
			if a.Addr == addr {
				return nil
			}
			return fmt.Errorf("%w: %s/%s already has %s, not %s", ErrConflict, containerID, ifName, a.Addr, addr)
		}
		for _, a := range p.allocs {
			if a.Addr == addr {
				p.mu.Unlock()
				return fmt.Errorf("%w: %s is taken by %s/%s", ErrConflict, addr, a.ContainerID, a.IfName)
			}
		}
		if p.left {
			p.mu.Unlock()
			return fmt.Errorf("claim %s: %w: this peer has handed its ranges over (weft reset)", addr, ErrNotReady)
		}
		var owner string
		if t := p.owners.Load(); t != nil && p.ring != nil {
			owner, _ = t.lookup(off)
		}
		if owner == p.cfg.Name {
			_, err := p.recordLocked(key, netns, off)
			p.flushUnlock()
			return err
		}
		if owner != "" {
			p.mu.Unlock()
			return fmt.Errorf("%w: %s belongs to peer %s's range", ErrConflict, addr, owner)
		}
		wake := p.wake
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return fmt.Errorf("claim %s: %w: owner of the address not known yet", addr, ErrNotReady)
		case <-wake:
		}
	}
}

// Release frees the address of one interface, or of all the container's
// interfaces when ifName is "".
func (p *IPAM) Release(containerID, ifName string) error {
	p.mu.Lock()
	var keys []Attachment
	for k := range p.allocs {
		if k.ContainerID == containerID && (ifName == "" || k.IfName == ifName) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		p.mu.Unlock()
		return fmt.Errorf("release %s/%s: %w", containerID, ifName, ErrNotFound)
	}
	err := p.releaseLocked(keys)
	p.flushUnlock()
	return err
}

// releaseLocked frees keys only once the state file says so: on a failed
// write (a full disk) the allocations stay, in memory as on disk, so the
// caller's DEL fails and its retry releases them for real instead of finding
// nothing while the old state brings them back at the next restart.
func (p *IPAM) releaseLocked(keys []Attachment) error {
	undo := p.checkpointLocked()
	for _, k := range keys {
		off, _ := offsetOf(p.cfg.Range, p.allocs[k].Addr)
		p.used = removeSorted(p.used, off)
		delete(p.reported, off)
		delete(p.allocs, k)
	}
	p.refreshOwnLocked()
	if err := p.persistLocked(); err != nil {
		undo()
		return fmt.Errorf("release of %d allocations not made: %w", len(keys), err)
	}
	p.publishLocked()
	return nil
}

// GC releases every allocation not in valid, except the host's own, and
// returns what it released.
func (p *IPAM) GC(valid []Attachment) ([]Attachment, error) {
	keep := make(map[Attachment]bool, len(valid))
	for _, a := range valid {
		keep[a] = true
	}
	p.mu.Lock()
	var gone []Attachment
	for k := range p.allocs {
		if !keep[k] && k.ContainerID != HostContainerID {
			gone = append(gone, k)
		}
	}
	sort.Slice(gone, func(i, j int) bool {
		if gone[i].ContainerID != gone[j].ContainerID {
			return gone[i].ContainerID < gone[j].ContainerID
		}
		return gone[i].IfName < gone[j].IfName
	})
	var err error
	if len(gone) > 0 {
		err = p.releaseLocked(gone)
	}
	p.flushUnlock()
	return gone, err
}

// Allocations lists this peer's allocations, sorted by address.
func (p *IPAM) Allocations() []Allocation {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.allocationsLocked()
}

func (p *IPAM) allocationsLocked() []Allocation {
	out := make([]Allocation, 0, len(p.allocs))
	for _, a := range p.allocs {
		out = append(out, *a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr.Less(out[j].Addr) })
	return out
}

// RemovePeer takes over the ranges of a dead peer (weft rmpeer) and returns
// how many addresses it took. It refuses while the peer is alive; a second
// call finds nothing left and returns 0.
func (p *IPAM) RemovePeer(name string) (uint64, error) {
	if name == p.cfg.Name {
		return 0, fmt.Errorf("rmpeer %s: that is this peer (use weft reset)", name)
	}
	if p.cfg.Alive(name) {
		return 0, fmt.Errorf("rmpeer %s: %w; stop it first, or run `weft reset` on it", name, ErrPeerAlive)
	}
	if p.reachable(name) {
		// Routing still sends to it and it may still allocate: taking its
		// ranges now could give its addresses out twice.
		return 0, fmt.Errorf("rmpeer %s: %w; wait until membership declares it dead", name, ErrPeerSuspect)
	}
	p.mu.Lock()
	if p.ring == nil || p.left {
		p.mu.Unlock()
		return 0, fmt.Errorf("rmpeer %s: %w: no ring", name, ErrNotReady)
	}
	undo := p.checkpointLocked()
	idx, ends := p.ring.ownedBy(name)
	var changed []entry
	var n uint64
	for k, i := range idx {
		e := p.ring.entries[i]
		changed = append(changed, p.writeLocked(p.ring, e.Start, ends[k], p.cfg.Name, freeIn(e.Start, ends[k], p.size, p.used), reasonTakeover))
		n += ends[k] - e.Start
	}
	if n == 0 {
		p.mu.Unlock()
		return 0, nil
	}
	if err := p.persistLocked(); err != nil {
		undo()
		p.mu.Unlock()
		return 0, fmt.Errorf("rmpeer %s: %w", name, err)
	}
	p.log.Warn("took over the ranges of a dead peer", "peer", name, "addresses", n)
	p.takenOver[name] = true
	p.publishLocked()
	p.broadcastEntriesLocked(changed)
	p.flushUnlock()
	return n, nil
}

// HandOver gives all of this peer's ranges to a live peer and waits for it
// to confirm, then forgets this peer's state (weft reset). Allocation stops.
func (p *IPAM) HandOver(ctx context.Context) error {
	p.mu.Lock()
	if p.left {
		p.mu.Unlock()
		return nil
	}
	if p.ring == nil || len(p.ownEntriesLocked()) == 0 {
		return p.leaveUnlock(nil)
	}
	peers := p.alivePeersLocked()
	p.mu.Unlock()
	if len(peers) == 0 {
		return fmt.Errorf("hand over: %w: no alive peer to take this peer's ranges; stop it and run `weft rmpeer %s` on another peer later", ErrNotReady, p.cfg.Name)
	}
	var lastErr error
	for _, to := range peers {
		p.mu.Lock()
		next := p.ring.clone()
		idx, ends := next.ownedBy(p.cfg.Name)
		var es []entry
		for k, i := range idx {
			e := next.entries[i]
			es = append(es, p.writeLocked(next, e.Start, ends[k], to, freeIn(e.Start, ends[k], p.size, nil), reasonHandOver))
		}
		p.nonce++
		nonce := p.nonce
		ack := make(chan struct{})
		p.acks[nonce] = ack
		msg := p.encodeLocked(&message{Type: msgHandOver, RingID: next.ID, Entries: toWire(es), Nonce: nonce})
		p.mu.Unlock()

		err := p.cfg.Transport.SendTo(to, msg)
		if err == nil {
			wait, cancel := context.WithTimeout(ctx, 5*time.Second)
			select {
			case <-ack:
				cancel()
				p.mu.Lock()
				p.ring.merge(es)
				p.broadcastEntriesLocked(es)
				p.log.Info("handed all ranges over", "to", to, "keys", len(es))
				return p.leaveUnlock(nil)
			case <-wait.Done():
				err = fmt.Errorf("%s did not confirm", to)
			}
			cancel()
		}
		p.mu.Lock()
		delete(p.acks, nonce)
		p.mu.Unlock()
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return fmt.Errorf("hand over: %w", lastErr)
}

// leaveUnlock stops allocation, forgets the state file and unlocks.
func (p *IPAM) leaveUnlock(err error) error {
	p.left = true
	p.allocs = map[Attachment]*Allocation{}
	p.used = nil
	p.publishLocked()
	if p.store != nil {
		if rerr := p.store.remove(); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	p.flushUnlock()
	return err
}

// handleHandOverLocked takes a leaving peer's ranges, persists, then confirms.
func (p *IPAM) handleHandOverLocked(m *message) error {
	if p.ring == nil || p.left {
		return fmt.Errorf("hand over from %s refused: %w", m.From, ErrNotReady)
	}
	if m.RingID != p.ring.ID {
		return p.mismatchErr(m.From, m.RingID, nil)
	}
	es := fromWire(m.Entries)
	for _, e := range es {
		if e.Owner != p.cfg.Name {
			return fmt.Errorf("%w: hand over from %s names %s as owner", ErrBadMessage, m.From, e.Owner)
		}
	}
	undo := p.checkpointLocked()
	if err := p.mergeLocked(m.From, es, false); err != nil && p.store != nil {
		// Not confirmed: the leaving peer keeps its state and retries, maybe
		// with another peer. Unless the merge is on disk, forget it, or
		// that peer and this one would both own the ranges.
		var pe *persistError
		if errors.As(err, &pe) {
			undo()
			p.publishLocked()
		}
		return fmt.Errorf("hand over from %s: %w", m.From, err)
	}
	p.log.Info("took over the ranges of a leaving peer", "peer", m.From, "keys", len(es))
	p.sendLocked(m.From, &message{Type: msgAck, Nonce: m.Nonce})
	p.broadcastEntriesLocked(p.ownEntriesLocked())
	return nil
}

func (p *IPAM) ownEntriesLocked() []entry {
	idx, _ := p.ring.ownedBy(p.cfg.Name)
	out := make([]entry, 0, len(idx))
	for _, i := range idx {
		out = append(out, p.ring.entries[i])
	}
	return out
}
