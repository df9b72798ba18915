package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/weftnet/weft/internal/atomicfile"
)

// StateFileName is the IPAM state file inside --state-dir.
const StateFileName = "ipam.json"

const stateFormat = 1

// persisted is the state file: everything this peer must not forget across a
// restart. The ring is there so that our own entries come back at the version
// we last published; allocations so that every container keeps its address;
// paxos so that an acceptor never breaks a promise it made before a crash.
type persisted struct {
	Format      int                `json:"format"`
	Name        string             `json:"name"`
	Range       string             `json:"range"`
	Ring        *persistedRing     `json:"ring,omitempty"`
	Allocations []Allocation       `json:"allocations"`
	Paxos       *persistedAcceptor `json:"paxos,omitempty"`
	Left        bool               `json:"left,omitempty"` // handed everything over (weft reset)
}

type persistedRing struct {
	ID      string      `json:"id"`
	Seeds   []string    `json:"seeds"`
	Size    uint64      `json:"size"`
	Entries []wireEntry `json:"entries"`
}

type persistedAcceptor struct {
	Promised ballot   `json:"promised"`
	Accepted ballot   `json:"accepted"`
	Value    []string `json:"value,omitempty"`
}

// tempFile is the part of *os.File the store writes through; tests swap it to
// simulate a full disk.
type tempFile interface {
	Write([]byte) (int, error)
	Sync() error
	Close() error
	Name() string
}

// store reads and atomically replaces the state file.
type store struct {
	dir      string
	openTemp func(dir string) (tempFile, error)
}

func newStore(dir string) *store {
	return &store{dir: dir, openTemp: func(dir string) (tempFile, error) {
		return os.CreateTemp(dir, "."+StateFileName+".tmp-*")
	}}
}

func (s *store) path() string { return filepath.Join(s.dir, StateFileName) }

// load returns nil, nil when there is no state file yet.
func (s *store) load() (*persisted, error) {
	b, err := os.ReadFile(s.path())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading IPAM state %s: %w", s.path(), err)
	}
	p, err := decodeState(b)
	if err != nil {
		return nil, fmt.Errorf("IPAM state %s is corrupt (move it away to start this peer afresh; its allocations are then forgotten): %w", s.path(), err)
	}
	return p, nil
}

// decodeState parses and validates a state file.
func decodeState(b []byte) (*persisted, error) {
	var p persisted
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, err
	}
	if p.Format != stateFormat {
		return nil, fmt.Errorf("format %d, want %d", p.Format, stateFormat)
	}
	if err := validName(p.Name); err != nil {
		return nil, err
	}
	pfx, err := netip.ParsePrefix(p.Range)
	if err != nil {
		return nil, fmt.Errorf("range: %w", err)
	}
	size, err := rangeSize(pfx)
	if err != nil {
		return nil, err
	}
	if p.Ring != nil {
		for _, w := range p.Ring.Entries {
			if _, err := w.toEntry(); err != nil {
				return nil, fmt.Errorf("ring: %w", err)
			}
		}
		r := p.Ring.toRing()
		if r.Size != size {
			return nil, fmt.Errorf("ring of %d addresses for range %s of %d", r.Size, p.Range, size)
		}
		if err := validNames(r.Seeds, "ring seeds"); err != nil {
			return nil, err
		}
		if r.ID != ringID(p.Range, r.Seeds) {
			return nil, fmt.Errorf("ring ID %q does not match its seeds", r.ID)
		}
		if err := r.validate(); err != nil {
			return nil, fmt.Errorf("ring: %w", err)
		}
	}
	if err := validAllocations(p.Allocations, pfx, size); err != nil {
		return nil, err
	}
	if p.Paxos != nil && p.Paxos.Value != nil {
		if err := validNames(p.Paxos.Value, "accepted paxos value"); err != nil {
			return nil, err
		}
	}
	return &p, nil
}

// validAllocations refuses what restore could not hold without giving an
// address out twice or losing one: an address held by two entries, an
// interface holding two addresses (restore would keep only one, and the
// other would look free), and the range's reserved addresses, which no
// allocation ever gets (a hand-edited or corrupted file). Errors name the
// entry, so an operator can fix the file.
func validAllocations(as []Allocation, pfx netip.Prefix, size uint64) error {
	byAddr := make(map[netip.Addr]int, len(as))
	byKey := make(map[Attachment]int, len(as))
	for i, a := range as {
		name := fmt.Sprintf("allocation %d (%s of %s/%s)", i, a.Addr, a.ContainerID, a.IfName)
		if a.ContainerID == "" {
			return fmt.Errorf("%s: no container ID", name)
		}
		if !pfx.Contains(a.Addr) {
			return fmt.Errorf("%s: outside range %s", name, pfx)
		}
		off, _ := offsetOf(pfx, a.Addr)
		if reserved(off, size) {
			return fmt.Errorf("%s: reserved address of range %s (its first and last are never allocated)", name, pfx)
		}
		if j, dup := byAddr[a.Addr]; dup {
			return fmt.Errorf("%s: address also held by allocation %d (%s/%s)", name, j, as[j].ContainerID, as[j].IfName)
		}
		key := Attachment{a.ContainerID, a.IfName}
		if j, dup := byKey[key]; dup {
			return fmt.Errorf("%s: interface also holds %s (allocation %d)", name, as[j].Addr, j)
		}
		byAddr[a.Addr], byKey[key] = i, i
	}
	return nil
}

func (pr *persistedRing) toRing() *ring {
	return &ring{ID: pr.ID, Seeds: pr.Seeds, Size: pr.Size, entries: fromWire(pr.Entries)}
}

// save replaces the state file atomically: a crash leaves the old or the new
// file, never a torn one, and a failed write leaves the old one in place.
func (s *store) save(p *persisted) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encoding IPAM state: %w", err)
	}
	w := atomicfile.Writer{CreateTemp: func(dir, _ string) (atomicfile.File, error) { return s.openTemp(dir) }}
	if err := w.WriteFunc(s.path(), 0o600, func(f io.Writer) error {
		_, err := f.Write(b)
		return err
	}); err != nil {
		return fmt.Errorf("writing IPAM state: %w", err)
	}
	return nil
}

func (s *store) remove() error {
	if err := atomicfile.Remove(s.path()); err != nil {
		return fmt.Errorf("removing IPAM state: %w", err)
	}
	return nil
}

// Allocation is one container interface's address on this peer.
type Allocation struct {
	ContainerID string     `json:"container_id"`
	IfName      string     `json:"ifname"`
	Netns       string     `json:"netns,omitempty"`
	Addr        netip.Addr `json:"addr"`
	Created     time.Time  `json:"created"`
}

// Attachment names one container interface.
type Attachment struct {
	ContainerID string `json:"container_id"`
	IfName      string `json:"ifname"`
}

// IncarnationFileName keeps this peer's incarnation inside --state-dir. It is
// not the state file: `weft reset` removes that, and the sequence numbers of
// a host that comes back must still be new to its peers.
const IncarnationFileName = "ipam.incarnation"

// nextIncarnation reads, bumps and saves the incarnation before anything is
// sent. It never goes below the clock's seconds, so a lost file still gives
// a new incarnation unless the clock went back too.
func (s *store) nextIncarnation() (uint64, error) {
	path := filepath.Join(s.dir, IncarnationFileName)
	var last uint64
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		last, err = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("IPAM incarnation %s is corrupt (move it away; peers then accept this host again once the clock passes the old value): %w", path, err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return 0, fmt.Errorf("reading IPAM incarnation: %w", err)
	}
	inc := max(last+1, uint64(time.Now().Unix()))
	if err := atomicfile.Write(path, []byte(strconv.FormatUint(inc, 10)+"\n"), 0o600); err != nil {
		return 0, fmt.Errorf("saving IPAM incarnation: %w", err)
	}
	return inc, nil
}
