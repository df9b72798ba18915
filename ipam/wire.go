package ipam

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
)

// Wire format 2:
//
//	[0] format  [1] sender name length  sender name
//	incarnation (8, big endian)  sequence (8)  JSON body  Ed25519 signature (64)
//
// The signature covers every byte before it. The header comes before the
// body so that a receiver checks who sent it, whether it is a replay and the
// signature before it parses anything. JSON keeps the bodies readable in a
// packet dump; the ring of a large mesh goes by push/pull over TCP, and
// broadcast deltas are chunked to stay small. Format 1 had no signature.
const wireFormat byte = 2

// Bounds on what one message may carry; a larger one is refused whole.
const (
	maxBroadcastEntries = 64   // ring deltas and donation requests
	maxSeeds            = 1024 // seeds and paxos values
	// Keys per ring: a base plus a share per peer. A ring only grows by
	// splits (donations), so this leaves each peer room for hundreds.
	ringKeysBase    = 1024
	ringKeysPerPeer = 64
	// maxEntryJSON bounds one entry's encoded size, signature and grant
	// included, to refuse an oversized body before parsing it.
	maxEntryJSON = 2*maxNameLen + 400
)

// Message types.
const (
	msgRing     = "ring"     // broadcast: changed ring entries (a delta)
	msgGetState = "getstate" // direct: please send me your full state
	msgState    = "state"    // direct or push/pull: full ring
	msgPrepare  = "prepare"  // paxos phase 1a
	msgPromise  = "promise"  // paxos phase 1b (OK false: a nack carrying the promised ballot)
	msgAccept   = "accept"   // paxos phase 2a
	msgAccepted = "accepted" // paxos phase 2b
	msgChosen   = "chosen"   // paxos: the value is chosen, create the ring from it
	msgDonReq   = "donreq"   // direct: please donate some free space
	msgNoDon    = "nodon"    // direct: nothing to donate
	msgHandOver = "handover" // direct: take these ranges, I am leaving; answer ack
	msgAck      = "ack"      // direct: handover applied and persisted
)

// broadcastBudget bounds the entries' bytes in one broadcast, leaving room
// for the envelope (~100 bytes + sender name) under memberlist's ~1000-byte
// UDP budget.
const broadcastBudget = 600

// entryWireSize is an upper bound of one entry's JSON size.
func entryWireSize(e entry) int {
	n := 5*20 + 20 + len(e.Owner) + 100 // fields, signature
	if !e.Grant.isZero() {
		n += 150 + len(e.Grant.From) + len(e.Grant.To)
	}
	return n
}

// ErrBadMessage wraps every decoding failure of untrusted bytes.
var ErrBadMessage = errors.New("malformed ipam message")

type wireEntry struct {
	Start   uint64     `json:"s"`
	End     uint64     `json:"x"`
	Owner   string     `json:"o"`
	Version uint64     `json:"v"`
	Free    uint64     `json:"fr"`
	Grant   *wireGrant `json:"gr,omitempty"`
	Sig     []byte     `json:"sg,omitempty"`
}

type wireGrant struct {
	From    string `json:"f"`
	To      string `json:"t"`
	Version uint64 `json:"v"`
	Reason  uint8  `json:"r"`
	Sig     []byte `json:"sg"`
}

// ballot is a paxos proposal number; ties broken by proposer name.
type ballot struct {
	Round    uint64 `json:"n"`
	Proposer string `json:"p"`
}

func (b ballot) less(o ballot) bool {
	if b.Round != o.Round {
		return b.Round < o.Round
	}
	return b.Proposer < o.Proposer
}

func (b ballot) isZero() bool { return b == ballot{} }

type message struct {
	Type     string      `json:"t"`
	From     string      `json:"-"` // in the signed header
	Inc, Seq uint64      `json:"-"` // in the signed header
	RingID   string      `json:"r,omitempty"`
	Range    string      `json:"rg,omitempty"`
	Size     uint64      `json:"sz,omitempty"`
	Seeds    []string    `json:"sd,omitempty"`
	Entries  []wireEntry `json:"e,omitempty"`
	Ballot   *ballot     `json:"b,omitempty"`
	Accepted *ballot     `json:"ab,omitempty"`
	Promised *ballot     `json:"pb,omitempty"` // a nack's higher promise
	Value    []string    `json:"v,omitempty"`
	OK       bool        `json:"ok,omitempty"`
	Nonce    uint64      `json:"nc,omitempty"`
	// Digest, in a state without entries, stands for the sender's ring
	// (ringDigest): periodic push/pulls carry it instead of the ring.
	Digest string `json:"dg,omitempty"`
}

// encodeMessage lays out m signed by sig (see wireFormat).
func encodeMessage(m *message, sig Signer) []byte {
	body, err := json.Marshal(m)
	if err != nil {
		// Only plain strings and integers: cannot fail.
		panic(fmt.Sprintf("ipam: encoding message: %v", err))
	}
	b := make([]byte, 0, 2+len(m.From)+16+len(body)+sigSize)
	b = append(b, wireFormat, byte(len(m.From)))
	b = append(b, m.From...)
	b = binary.BigEndian.AppendUint64(b, m.Inc)
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	b = append(b, body...)
	return append(b, sig.Sign(b)...)
}

// header is the part of a message checked before its body is parsed.
type header struct {
	from     string
	inc, seq uint64
	signed   []byte // every byte the signature covers
	body     []byte
	sig      []byte
}

func parseHeader(b []byte) (header, error) {
	var h header
	if len(b) == 0 {
		return h, fmt.Errorf("%w: empty", ErrBadMessage)
	}
	if b[0] != wireFormat {
		return h, fmt.Errorf("%w: format %d, want %d (peer runs another weft version?)", ErrBadMessage, b[0], wireFormat)
	}
	if len(b) < 2 {
		return h, fmt.Errorf("%w: truncated", ErrBadMessage)
	}
	n := int(b[1])
	if len(b) < 2+n+16+sigSize {
		return h, fmt.Errorf("%w: truncated", ErrBadMessage)
	}
	h.from = string(b[2 : 2+n])
	if err := validName(h.from); err != nil {
		return h, fmt.Errorf("%w: sender: %v", ErrBadMessage, err)
	}
	h.inc = binary.BigEndian.Uint64(b[2+n:])
	h.seq = binary.BigEndian.Uint64(b[2+n+8:])
	h.signed = b[:len(b)-sigSize]
	h.body = b[2+n+16 : len(b)-sigSize]
	h.sig = b[len(b)-sigSize:]
	return h, nil
}

// countObjects counts the JSON objects in b (the '{' outside strings), up to
// just past limit.
func countObjects(b []byte, limit int) int {
	n := 0
	in, esc := false, false
	for _, c := range b {
		switch {
		case esc:
			esc = false
		case in && c == '\\':
			esc = true
		case c == '"':
			in = !in
		case !in && c == '{':
			n++
			if n > limit {
				return n
			}
		}
	}
	return n
}

// decodeBody parses and checks the shape of a message whose header was
// checked; checks that need the local configuration (range size, ring ID)
// are the handler's.
func decodeBody(h header) (*message, error) {
	var m message
	if err := json.Unmarshal(h.body, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadMessage, err)
	}
	m.From, m.Inc, m.Seq = h.from, h.inc, h.seq
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%w: %s from %q: %v", ErrBadMessage, m.Type, m.From, err)
	}
	return &m, nil
}

// decodeMessage parses a message without checking its signature (fuzzing).
func decodeMessage(b []byte) (*message, error) {
	h, err := parseHeader(b)
	if err != nil {
		return nil, err
	}
	return decodeBody(h)
}

func validName(s string) error {
	if s == "" {
		return errors.New("empty peer name")
	}
	if len(s) > maxNameLen {
		return fmt.Errorf("peer name of %d bytes", len(s))
	}
	return nil
}

func validNames(names []string, what string) error {
	if len(names) == 0 {
		return fmt.Errorf("no %s", what)
	}
	if len(names) > maxSeeds {
		return fmt.Errorf("%d %s, at most %d", len(names), what, maxSeeds)
	}
	for i, n := range names {
		if err := validName(n); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if i > 0 && names[i-1] >= n {
			return fmt.Errorf("%s not sorted and unique", what)
		}
	}
	return nil
}

func (m *message) validate() error {
	if err := validName(m.From); err != nil {
		return fmt.Errorf("sender: %w", err)
	}
	if (m.Type == msgRing || m.Type == msgDonReq) && len(m.Entries) > maxBroadcastEntries {
		return fmt.Errorf("%d entries, at most %d", len(m.Entries), maxBroadcastEntries)
	}
	if len(m.Seeds) > maxSeeds || len(m.Value) > maxSeeds {
		return fmt.Errorf("more than %d seeds", maxSeeds)
	}
	for i, w := range m.Entries {
		e, err := w.toEntry()
		if err != nil {
			return err
		}
		if err := e.validate(math.MaxUint64); err != nil {
			return err
		}
		if i > 0 && m.Entries[i-1].Start >= w.Start {
			return fmt.Errorf("entries not sorted and unique at %d", w.Start)
		}
	}
	checkBallot := func(b *ballot) error {
		if err := validName(b.Proposer); err != nil {
			return err
		}
		if b.Round > maxRound {
			return fmt.Errorf("ballot round %d above the bound %d", b.Round, uint64(maxRound))
		}
		return nil
	}
	for _, b := range []*ballot{m.Accepted, m.Promised} {
		if b != nil {
			if err := checkBallot(b); err != nil {
				return err
			}
		}
	}
	needBallot := func() error {
		if m.Ballot == nil {
			return errors.New("no ballot")
		}
		return checkBallot(m.Ballot)
	}
	switch m.Type {
	case msgRing, msgHandOver:
		if m.RingID == "" || len(m.Entries) == 0 {
			return errors.New("no ring ID or no entries")
		}
	case msgState:
		if m.Range == "" || m.Size == 0 {
			return errors.New("no range or size")
		}
		if m.Digest != "" && (len(m.Digest) != 2*sha256.Size || len(m.Entries) > 0) {
			return errors.New("a digest of the wrong size, or with entries")
		}
		if m.RingID == "" { // the sender has no ring yet
			if len(m.Seeds) > 0 || len(m.Entries) > 0 || m.Digest != "" {
				return errors.New("entries without a ring ID")
			}
			return nil
		}
		if err := validNames(m.Seeds, "seeds"); err != nil {
			return err
		}
	case msgChosen:
		if err := validNames(m.Value, "chosen peers"); err != nil {
			return err
		}
		return needBallot()
	case msgPrepare:
		return needBallot()
	case msgAccept:
		if err := validNames(m.Value, "proposed peers"); err != nil {
			return err
		}
		return needBallot()
	case msgPromise, msgAccepted:
		if err := needBallot(); err != nil {
			return err
		}
		if m.Accepted != nil {
			if err := validName(m.Accepted.Proposer); err != nil {
				return fmt.Errorf("accepted ballot: %w", err)
			}
			if err := validNames(m.Value, "accepted peers"); err != nil {
				return err
			}
		}
	case msgDonReq:
		if m.RingID == "" || m.Nonce == 0 {
			return errors.New("donation request without ring ID or id")
		}
	case msgGetState, msgNoDon, msgAck:
	default:
		return fmt.Errorf("unknown type %q", m.Type)
	}
	return nil
}

func (w wireEntry) toEntry() (entry, error) {
	e := entry{Start: w.Start, End: w.End, Owner: w.Owner, Version: w.Version, Free: w.Free}
	if len(w.Sig) != 0 && len(w.Sig) != sigSize {
		return e, fmt.Errorf("entry signature of %d bytes", len(w.Sig))
	}
	copy(e.Sig[:], w.Sig)
	if g := w.Grant; g != nil {
		if len(g.Sig) != sigSize || g.Reason == reasonNone {
			return e, errors.New("grant without signature or reason")
		}
		e.Grant = grant{From: g.From, To: g.To, Version: g.Version, Reason: g.Reason}
		copy(e.Grant.Sig[:], g.Sig)
	}
	return e, nil
}

func toWire(es []entry) []wireEntry {
	// The signatures are copied into one block (the wire form may outlive
	// the ring's lock): slicing a loop variable's array made each entry a
	// heap copy of its own, about 300 bytes an entry at every encoding.
	out := make([]wireEntry, len(es))
	sigs := make([]byte, 0, sigSize*len(es))
	grants := 0
	for i := range es {
		if !es[i].Grant.isZero() {
			grants++
		}
	}
	var gs []wireGrant
	var gsigs []byte
	if grants > 0 {
		gs = make([]wireGrant, 0, grants)
		gsigs = make([]byte, 0, sigSize*grants)
	}
	for i := range es {
		e := &es[i]
		out[i] = wireEntry{Start: e.Start, End: e.End, Owner: e.Owner, Version: e.Version, Free: e.Free}
		if e.Sig != ([sigSize]byte{}) {
			sigs = append(sigs, e.Sig[:]...)
			out[i].Sig = sigs[len(sigs)-sigSize : len(sigs) : len(sigs)]
		}
		if g := &e.Grant; !g.isZero() {
			gsigs = append(gsigs, g.Sig[:]...)
			gs = append(gs, wireGrant{From: g.From, To: g.To, Version: g.Version, Reason: g.Reason, Sig: gsigs[len(gsigs)-sigSize : len(gsigs) : len(gsigs)]})
			out[i].Grant = &gs[len(gs)-1]
		}
	}
	return out
}

// fromWire converts entries that validate already checked (sorted, well formed).
func fromWire(ws []wireEntry) []entry {
	out := make([]entry, 0, len(ws))
	for _, w := range ws {
		if e, err := w.toEntry(); err == nil {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start < out[j].Start })
	return out
}
