package ipam

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Trust model of the ring (site/security.md says it for operators):
//
//   - Every message is signed by its sender's long-term Ed25519 key, which
//     membership pins to the sender's name; a message whose signature does
//     not verify under the key of the name in it is dropped, whoever relays
//     it. Each carries the sender's incarnation and sequence number, and a
//     receiver drops old and duplicate ones (replayWindow).
//   - Every ring entry is signed by its writer. A receiver accepts a new
//     version of a key only when its current owner (in the receiver's view)
//     wrote it, or when it carries a grant by which that owner gave it away
//     (donation, hand-over), or by which the taker took it from an owner the
//     receiver does not see alive or suspect (rmpeer, reclaim). A new key is
//     accepted only from the owner of the key it is split from.
//
// So a peer without a pinned key writes nothing, and a peer with one writes
// only what it owns or was given.

const sigSize = ed25519.SignatureSize

// Signer signs with this peer's long-term key (identity.Signer).
type Signer interface {
	Public() ed25519.PublicKey
	Sign(msg []byte) []byte
}

// Reasons a key changes owner.
const (
	reasonNone     uint8 = iota
	reasonDonation       // the owner gave part of its space to a peer short of it
	reasonHandOver       // the owner left (weft reset) and gave everything to a live peer
	reasonTakeover       // a peer took the ranges of a dead one (rmpeer, Kubernetes reclaim)
	reasonMax
)

// grant is the signed record of an owner change of one key: From gave (or,
// for a takeover, To took) key Start at Version. A donation or hand-over is
// signed by From; a takeover by To, and receivers refuse it while they see
// From alive or suspect.
type grant struct {
	From, To string
	Version  uint64
	Reason   uint8
	Sig      [sigSize]byte
}

func (g grant) isZero() bool { return g.Reason == reasonNone }

// signer is who must have signed the grant.
func (g grant) signer() string {
	if g.Reason == reasonTakeover {
		return g.To
	}
	return g.From
}

func (g grant) validate(entryVersion uint64) error {
	if g.isZero() {
		if g != (grant{}) {
			return errors.New("grant without a reason")
		}
		return nil
	}
	switch {
	case g.Reason >= reasonMax:
		return fmt.Errorf("grant of unknown reason %d", g.Reason)
	case validName(g.From) != nil || validName(g.To) != nil || g.From == g.To:
		return errors.New("grant with bad peer names")
	case g.Version == 0 || g.Version > entryVersion:
		return fmt.Errorf("grant at version %d for an entry at version %d", g.Version, entryVersion)
	}
	return nil
}

// The signed payloads: a domain string, the ring, then fixed-size fields and
// the names last, each name with its length so no two payloads collide.
func entryPayload(ringID string, e entry) []byte {
	b := make([]byte, 0, 96+len(e.Owner)+len(e.Grant.From)+len(e.Grant.To))
	b = append(b, "weft-ipam-entry-v1\x00"...)
	b = appendStr(b, ringID)
	b = binary.BigEndian.AppendUint64(b, e.Start)
	b = binary.BigEndian.AppendUint64(b, e.End)
	b = binary.BigEndian.AppendUint64(b, e.Version)
	b = binary.BigEndian.AppendUint64(b, e.Free)
	b = appendStr(b, e.Owner)
	b = binary.BigEndian.AppendUint64(b, e.Grant.Version)
	b = append(b, e.Grant.Reason)
	b = appendStr(b, e.Grant.From)
	return appendStr(b, e.Grant.To)
}

func grantPayload(ringID string, start uint64, g grant) []byte {
	b := make([]byte, 0, 64+len(g.From)+len(g.To))
	b = append(b, "weft-ipam-grant-v1\x00"...)
	b = appendStr(b, ringID)
	b = binary.BigEndian.AppendUint64(b, start)
	b = binary.BigEndian.AppendUint64(b, g.Version)
	b = append(b, g.Reason)
	b = appendStr(b, g.From)
	return appendStr(b, g.To)
}

func appendStr(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// entrySigner is who must have signed e: the grant's signer for the write
// that transfers the key, else the owner.
func entrySigner(e entry) string {
	if !e.Grant.isZero() && e.Grant.Version == e.Version {
		return e.Grant.signer()
	}
	return e.Owner
}

// keyOf is the verified signing key of a peer.
func (p *IPAM) keyOf(name string) (ed25519.PublicKey, bool) {
	if name == p.cfg.Name {
		return p.cfg.Signer.Public(), true
	}
	if p.cfg.PeerKey == nil {
		return nil, false
	}
	k, ok := p.cfg.PeerKey(name)
	return k, ok && len(k) == ed25519.PublicKeySize
}

func (p *IPAM) verify(name string, payload []byte, sig *[sigSize]byte) bool {
	k, ok := p.keyOf(name)
	return ok && ed25519.Verify(k, payload, sig[:])
}

// writeLocked writes key start of r as this peer: its own key, a key it
// gives to owner (reasonDonation, reasonHandOver), or a dead peer's key it
// takes (reasonTakeover). Versions saturate.
func (p *IPAM) writeLocked(r *ring, start, end uint64, owner string, free uint64, reason uint8) entry {
	i, ok := r.find(start)
	var cur entry
	if ok {
		cur = r.entries[i]
	}
	e := entry{Start: start, End: end, Owner: owner, Version: 1, Free: free}
	if ok {
		e.Version = nextVersion(cur.Version)
	}
	switch {
	case reason == reasonTakeover:
		e.Version = takeoverVersion(cur.Version)
		e.Grant = grant{From: cur.Owner, To: owner, Version: e.Version, Reason: reasonTakeover}
	case owner != p.cfg.Name:
		e.Grant = grant{From: p.cfg.Name, To: owner, Version: e.Version, Reason: reason}
	case ok && cur.Owner == p.cfg.Name:
		e.Grant = cur.Grant // how we got it still vouches for us
	}
	if e.Version == cur.Version {
		p.log.Error("IPAM key version saturated; the write may not propagate", "start", start, "version", e.Version)
	}
	if !e.Grant.isZero() && e.Grant.Version == e.Version {
		copy(e.Grant.Sig[:], p.cfg.Signer.Sign(grantPayload(r.ID, start, e.Grant)))
	}
	copy(e.Sig[:], p.cfg.Signer.Sign(entryPayload(r.ID, e)))
	r.put(i, ok, e)
	p.ownWritten = p.now()
	return e
}

// acceptEntryLocked is the owner-only-writes rule (an acceptFunc): may e
// replace cur, or be added as a new key after prev? The cheap checks of
// authority come first; signatures are verified only for entries that
// claim it, and after maxBadSigs bad ones the rest of the batch is refused
// unverified: an honest peer never sends one.
//
// fillGaps is set for a full state this peer asked for: a new key that
// starts where this peer knows no owner (a gap: it missed the key's
// creation, and the key before has been split again since, so its owner is
// no longer the key's creator) is then taken on the sender's word, its
// signatures checked, as a ring-less peer takes a whole ring
// (acceptAdoptedLocked). Without it such a gap was never filled.
func (p *IPAM) acceptEntryLocked(ringID string, fillGaps bool) acceptFunc {
	bad := 0
	return func(cur entry, exists bool, prev entry, hasPrev bool, e entry) bool {
		if bad >= maxBadSigs {
			return false
		}
		var u uint64 // the version e must beat
		var auth [2]string
		gap := false
		if exists {
			u = cur.Version
			auth[0] = cur.Owner
		} else {
			// A new key is split from the key before it: its owner, or
			// the peer that just gave that key away (the key right after
			// a donated block is the donor's), may create it.
			if !hasPrev || e.Start > prev.End {
				if !fillGaps {
					return false
				}
				gap = true
			} else {
				auth[0] = prev.Owner
				if e.Start == prev.End {
					gap = fillGaps
					if !prev.Grant.isZero() {
						auth[1] = prev.Grant.From
					}
				}
			}
		}
		authorised := func(name string) bool { return name != "" && (name == auth[0] || name == auth[1]) }
		check := func(name string, payload []byte, sig *[sigSize]byte) bool {
			if p.verify(name, payload, sig) {
				return true
			}
			bad++
			return false
		}
		g := e.Grant
		if authorised(e.Owner) && (g.isZero() || g.Version != e.Version) {
			// The owner's own write.
			return check(e.Owner, entryPayload(ringID, e), &e.Sig)
		}
		if gap && g.isZero() {
			// In a gap, on the asked sender's word: the owner's own key,
			// signed with its pinned key (an unknown signer's cannot be
			// checked, so the key is not taken).
			return check(e.Owner, entryPayload(ringID, e), &e.Sig)
		}
		if g.isZero() || g.To != e.Owner || !(gap || authorised(g.From)) || g.Version <= u && !(g.Version == u && e.Version == u) {
			return false
		}
		// A takeover of this peer itself is accepted only just after it
		// started: it was removed while down, everyone else has taken the
		// takeover, and keeping the range would give addresses out twice
		// (checkLost tells the operator). While it runs it is alive to the
		// others, who refuse any takeover of it; so does it.
		self := g.From == p.cfg.Name
		if g.Reason == reasonTakeover && (!self && p.reachable(g.From) || self && p.now().Sub(p.started) > selfTakeoverWindow) {
			if now := p.now(); now.Sub(p.takeoverWarned) >= time.Minute { // a flood logs once a minute
				p.takeoverWarned = now
				p.log.Warn("refused a takeover of a peer this one sees alive or suspect (rmpeer of a live peer?)",
					"taker", g.To, "peer", g.From, "start", addrAt(p.cfg.Range, e.Start))
			}
			return false
		}
		ok := check(g.signer(), grantPayload(ringID, e.Start, g), &g.Sig) &&
			check(entrySigner(e), entryPayload(ringID, e), &e.Sig)
		if ok && g.Reason == reasonTakeover && g.Version == e.Version && !self && len(p.takenOver) < maxSenders {
			p.takenOver[g.From] = true
		}
		return ok
	}
}

// acceptAdoptedLocked checks the entries of a ring learnt whole: every
// signature whose signer this peer knows must verify; the chain of owners is
// the sender's word.
func (p *IPAM) acceptAdoptedLocked(ringID string) acceptFunc {
	bad := 0
	check := func(name string, payload []byte, sig *[sigSize]byte) bool {
		if _, known := p.keyOf(name); !known {
			return true
		}
		if p.verify(name, payload, sig) {
			return true
		}
		bad++
		return false
	}
	return func(_ entry, _ bool, _ entry, _ bool, e entry) bool {
		if bad >= maxBadSigs {
			return false
		}
		if g := e.Grant; !g.isZero() && !check(g.signer(), grantPayload(ringID, e.Start, g), &g.Sig) {
			return false
		}
		return check(entrySigner(e), entryPayload(ringID, e), &e.Sig)
	}
}

// maxBadSigs bounds the signature checks one batch can cost once it has
// shown itself forged.
const maxBadSigs = 8

// selfTakeoverWindow is how long after its start a peer accepts a takeover
// of its own ranges (see acceptEntryLocked): the first push/pull after a
// relaunch comes within seconds.
const selfTakeoverWindow = 2 * time.Minute

// reachable: alive or suspect in this peer's membership view.
func (p *IPAM) reachable(name string) bool {
	if name == p.cfg.Name {
		return true
	}
	if p.cfg.Reachable != nil {
		return p.cfg.Reachable(name)
	}
	return p.cfg.Alive(name)
}

// replayWindow drops old and duplicate messages of one sender: the highest
// (incarnation, sequence) seen and a bitmap of the replayWindowSize before it,
// since gossip reorders broadcasts and direct messages.
type replayWindow struct {
	inc, top uint64
	bits     [replayWindowSize / 64]uint64
}

const replayWindowSize = 2048

// fresh reports whether (inc, seq) has not been seen and is not too old.
func (w *replayWindow) fresh(inc, seq uint64) bool {
	switch {
	case seq == 0:
		return false
	case inc != w.inc:
		return inc > w.inc
	case seq > w.top:
		return true
	case w.top-seq >= replayWindowSize:
		return false
	}
	return w.bits[(seq/64)%uint64(len(w.bits))]&(1<<(seq%64)) == 0
}

// mark records (inc, seq); call only after fresh and the signature check.
func (w *replayWindow) mark(inc, seq uint64) {
	if inc != w.inc {
		*w = replayWindow{inc: inc}
	}
	if seq > w.top {
		if seq-w.top >= replayWindowSize {
			w.bits = [replayWindowSize / 64]uint64{}
		} else {
			for s := w.top + 1; s < seq; s++ {
				w.bits[(s/64)%uint64(len(w.bits))] &^= 1 << (s % 64)
			}
		}
		w.top = seq
	}
	w.bits[(seq/64)%uint64(len(w.bits))] |= 1 << (seq % 64)
}

// sender is what this peer keeps per authenticated peer: bounded by
// maxSenders and dropped by ForgetPeer.
type sender struct {
	win     replayWindow
	donated uint64 // highest donation request id answered
	donInc  uint64 // the incarnation donated counts in
}

// maxSenders bounds the per-sender table; only senders with a pinned key
// get an entry, so it is reached only by a mesh of that size.
const maxSenders = 4096

// ForgetPeer drops what this peer keeps about name (weft rmpeer): its replay
// state and donation bookkeeping, so a reinstalled host starts afresh.
func (p *IPAM) ForgetPeer(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.senders, name)
	delete(p.refused, name)
	delete(p.asked, name)
}
