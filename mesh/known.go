package mesh

// The peers of the last run, kept in the state directory, so that a
// restarted agent rejoins and reaches its peers at once: with no PEER
// arguments, and before gossip has told it anything.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/weftnet/weft/internal/atomicfile"
)

// KnownPeersFile is the name of the file in the state directory.
const KnownPeersFile = "peers.json"

// knownPeersVersion is the format of KnownPeersFile.
const knownPeersVersion = 1

// Bounds of KnownPeersFile: it is read at every start and must stay small.
const (
	maxKnownPeers   = 10000
	maxKnownNameLen = 255
)

// ErrKnownPeers is wrapped by every error of DecodeKnownPeers.
var ErrKnownPeers = errors.New("invalid known-peers file")

// KnownPeer is what a restarted agent needs to reach a peer before gossip
// has said anything: its gossip address, its data port and its data-plane
// public key.
type KnownPeer struct {
	Name      string     `json:"name"`
	Addr      netip.Addr `json:"addr"`
	Port      uint16     `json:"port"`                 // gossip, TCP and UDP
	DataPort  uint16     `json:"data_port"`            // data plane, UDP
	PublicKey []byte     `json:"public_key,omitempty"` // X25519, 32 bytes; none without a password
}

type knownPeersDoc struct {
	Version int         `json:"version"`
	Peers   []KnownPeer `json:"peers"`
}

// EncodeKnownPeers lays peers out as KnownPeersFile holds them, sorted by name.
func EncodeKnownPeers(peers []KnownPeer) ([]byte, error) {
	ps := append([]KnownPeer(nil), peers...)
	sort.Slice(ps, func(i, j int) bool { return ps[i].Name < ps[j].Name })
	if err := checkKnownPeers(ps); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(knownPeersDoc{Version: knownPeersVersion, Peers: ps}, "", " ")
	if err != nil {
		return nil, fmt.Errorf("encode known peers: %w", err)
	}
	return append(b, '\n'), nil
}

// DecodeKnownPeers parses and checks KnownPeersFile strictly: unknown fields,
// another version, a duplicate or incomplete peer, a key of the wrong size or
// trailing data are errors (wrapping ErrKnownPeers).
func DecodeKnownPeers(b []byte) ([]KnownPeer, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var doc knownPeersDoc
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKnownPeers, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the document", ErrKnownPeers)
	}
	if doc.Version != knownPeersVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrKnownPeers, doc.Version, knownPeersVersion)
	}
	if err := checkKnownPeers(doc.Peers); err != nil {
		return nil, err
	}
	return doc.Peers, nil
}

func checkKnownPeers(peers []KnownPeer) error {
	if len(peers) > maxKnownPeers {
		return fmt.Errorf("%w: %d peers, at most %d", ErrKnownPeers, len(peers), maxKnownPeers)
	}
	seen := make(map[string]bool, len(peers))
	for i, p := range peers {
		switch {
		case p.Name == "" || len(p.Name) > maxKnownNameLen:
			return fmt.Errorf("%w: peer %d: name of %d bytes", ErrKnownPeers, i, len(p.Name))
		case seen[p.Name]:
			return fmt.Errorf("%w: peer %q twice", ErrKnownPeers, p.Name)
		case !p.Addr.IsValid() || p.Addr.IsUnspecified() || p.Addr.Zone() != "":
			return fmt.Errorf("%w: peer %q: address %q", ErrKnownPeers, p.Name, p.Addr)
		case p.Port == 0 || p.DataPort == 0:
			return fmt.Errorf("%w: peer %q: port %d, data port %d", ErrKnownPeers, p.Name, p.Port, p.DataPort)
		case len(p.PublicKey) != 0 && len(p.PublicKey) != 32:
			return fmt.Errorf("%w: peer %q: public key of %d bytes", ErrKnownPeers, p.Name, len(p.PublicKey))
		}
		seen[p.Name] = true
	}
	return nil
}

// LoadKnownPeers reads dir's KnownPeersFile; a missing file is no peers.
func LoadKnownPeers(dir string) ([]KnownPeer, error) {
	path := filepath.Join(dir, KnownPeersFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	peers, err := DecodeKnownPeers(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return peers, nil
}

// saveKnownPeers writes b as dir's KnownPeersFile, atomically.
func saveKnownPeers(dir string, b []byte) error {
	path := filepath.Join(dir, KnownPeersFile)
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// seedKnown makes the peers of the last run join targets and members in
// state unknown, so that the data plane has their endpoints and keys at
// once (Members) and Run joins them without waiting for anyone. Gossip
// replaces all of it as soon as it speaks.
func (m *Mesh) seedKnown(peers []KnownPeer) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, kp := range peers {
		if kp.Name == m.cfg.Name {
			continue
		}
		addr := netip.AddrPortFrom(kp.Addr, kp.Port).String()
		if _, ok := m.targets[addr]; !ok {
			m.targets[addr] = &target{addr: addr, lastAlive: now}
		}
		if _, ok := m.peers[kp.Name]; ok {
			continue
		}
		p := &peer{state: StateUnknown, since: now,
			meta: Meta{DataPort: kp.DataPort, PublicKey: kp.PublicKey}}
		p.node.Name = kp.Name
		p.node.Addr = kp.Addr.AsSlice()
		p.node.Port = kp.Port
		p.addr = p.node.Address()
		m.peers[kp.Name] = p
		m.indexAddrLocked(p)
	}
	m.changedLocked()
}

// knownPeers is what KnownPeersFile should hold now: every peer seen with
// an address, this one left out, and those gone (or not heard of) for
// longer than Timing.TargetExpiry, as the join targets are.
func (m *Mesh) knownPeers() []KnownPeer {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]KnownPeer, 0, len(m.peers))
	for name, p := range m.peers {
		addr, ok := netip.AddrFromSlice(p.node.Addr)
		if name == m.cfg.Name || len(name) > maxKnownNameLen || !ok || p.node.Port == 0 || p.meta.DataPort == 0 || len(out) == maxKnownPeers {
			continue
		}
		if (p.state.Gone() || p.state == StateUnknown) && now.Sub(p.since) > m.cfg.Timing.TargetExpiry {
			continue
		}
		kp := KnownPeer{Name: name, Addr: addr.Unmap(), Port: p.node.Port, DataPort: p.meta.DataPort}
		if len(p.meta.PublicKey) == 32 {
			kp.PublicKey = p.meta.PublicKey
		}
		out = append(out, kp)
	}
	return out
}

// saveKnown writes KnownPeersFile when what it should hold has changed.
func (m *Mesh) saveKnown() {
	if m.cfg.StateDir == "" {
		return
	}
	m.knownDirty, m.knownSavedAt = false, time.Now()
	b, err := EncodeKnownPeers(m.knownPeers())
	if err != nil {
		m.log.Warn("could not encode the known peers", "err", err)
		return
	}
	if bytes.Equal(b, m.savedKnown) {
		return
	}
	if err := saveKnownPeers(m.cfg.StateDir, b); err != nil {
		m.log.Warn("could not save the known peers; a restart rejoins through the PEER arguments only", "err", err)
		return
	}
	m.savedKnown = b
	m.knownWrites.Add(1)
}
