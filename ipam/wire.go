package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
)

// Wire format: one format byte, then JSON. JSON keeps the messages readable in
// a packet dump; the ring of a large mesh goes by push/pull over TCP, and
// broadcast deltas are chunked to stay small.
const wireFormat byte = 1

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
func entryWireSize(e entry) int { return 5*20 + 20 + len(e.Owner) }

// ErrBadMessage wraps every decoding failure of untrusted bytes.
var ErrBadMessage = errors.New("malformed ipam message")

type wireEntry struct {
	Start   uint64 `json:"s"`
	End     uint64 `json:"x"`
	Owner   string `json:"o"`
	Version uint64 `json:"v"`
	Free    uint64 `json:"fr"`
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
	From     string      `json:"f"`
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
}

func encodeMessage(m *message) []byte {
	b, err := json.Marshal(m)
	if err != nil {
		// Only plain strings and integers: cannot fail.
		panic(fmt.Sprintf("ipam: encoding message: %v", err))
	}
	return append([]byte{wireFormat}, b...)
}

// decodeMessage parses and checks the shape of a message; checks that need the
// local configuration (range size, ring ID) are the handler's.
func decodeMessage(b []byte) (*message, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrBadMessage)
	}
	if b[0] != wireFormat {
		return nil, fmt.Errorf("%w: format %d, want %d (peer runs another weft version?)", ErrBadMessage, b[0], wireFormat)
	}
	var m message
	if err := json.Unmarshal(b[1:], &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadMessage, err)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%w: %s from %q: %v", ErrBadMessage, m.Type, m.From, err)
	}
	return &m, nil
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
	for i, e := range m.Entries {
		if err := e.toEntry().validate(math.MaxUint64); err != nil {
			return err
		}
		if m.Type == msgState && i > 0 && m.Entries[i-1].Start >= e.Start {
			return fmt.Errorf("state entries not sorted and unique at %d", e.Start)
		}
	}
	needBallot := func() error {
		if m.Ballot == nil {
			return errors.New("no ballot")
		}
		return validName(m.Ballot.Proposer)
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
		if m.RingID == "" { // the sender has no ring yet
			if len(m.Seeds) > 0 || len(m.Entries) > 0 {
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
	case msgGetState, msgDonReq, msgNoDon, msgAck:
	default:
		return fmt.Errorf("unknown type %q", m.Type)
	}
	return nil
}

func (w wireEntry) toEntry() entry {
	return entry{Start: w.Start, End: w.End, Owner: w.Owner, Version: w.Version, Free: w.Free}
}

func toWire(es []entry) []wireEntry {
	out := make([]wireEntry, len(es))
	for i, e := range es {
		out[i] = wireEntry{Start: e.Start, End: e.End, Owner: e.Owner, Version: e.Version, Free: e.Free}
	}
	return out
}

func fromWire(ws []wireEntry) []entry {
	out := make([]entry, len(ws))
	for i, w := range ws {
		out[i] = w.toEntry()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start < out[j].Start })
	return out
}
