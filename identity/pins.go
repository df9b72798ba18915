package identity

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/weftnet/weft/internal/atomicfile"
	"github.com/weftnet/weft/internal/logx"
)

// PinsFile holds the name→key pins inside the state directory.
const PinsFile = "pins.json"

// MaxPins bounds the pin table: a mesh never has this many distinct names,
// and a flood of made-up names must not grow it without end.
const MaxPins = 16384

// ErrTooManyPins is returned when the table is full.
var ErrTooManyPins = errors.New("too many pinned peers")

// Pins maps peer names to the signing key first seen for them. Safe for
// concurrent use.
type Pins struct {
	path string // "" = in memory only
	log  *slog.Logger

	mu        sync.Mutex
	keys      map[string]ed25519.PublicKey
	authority Authority
	authDown  bool   // the authority failed last time (logged once per outage)
	version   uint64 // of keys, counts changes
	saving    bool   // a background save is started and has not read keys yet

	saveMu  sync.Mutex // serialises writes of the file; taken before mu
	written uint64     // version of keys on disk
}

// Authority is an outside source of truth for peers' signing keys (in
// Kubernetes, the annotation on each Node). It answers ok=false when it knows
// nothing of name, and an error when it cannot be asked (then Check falls back
// to trust on first use). It may block briefly; Check calls it without any
// lock held.
type Authority func(name string) (key ed25519.PublicKey, ok bool, err error)

// SetAuthority makes Check consult a before its pins: a key the authority
// holds for a name is pinned (replacing an older pin), and any other key is
// refused, also on first contact. nil removes it.
func (p *Pins) SetAuthority(a Authority) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.authority = a
}

// NewPins is an in-memory table (tests).
func NewPins() *Pins {
	return &Pins{keys: map[string]ed25519.PublicKey{}, log: logx.OrDiscard(nil)}
}

// LoadPins reads stateDir/pins.json (none yet is an empty table). A corrupt
// file is an error: starting with no pins would trust every key afresh.
func LoadPins(stateDir string, log *slog.Logger) (*Pins, error) {
	log = logx.OrDiscard(log)
	p := &Pins{path: filepath.Join(stateDir, PinsFile), keys: map[string]ed25519.PublicKey{}, log: log}
	b, err := os.ReadFile(p.path)
	if errors.Is(err, fs.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pinned peer keys: %w", err)
	}
	var raw map[string]string
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, p.path, err)
	}
	if len(raw) > MaxPins {
		return nil, fmt.Errorf("%w: %s: %d pins", ErrCorrupt, p.path, len(raw))
	}
	for name, h := range raw {
		k, err := hex.DecodeString(h)
		if err != nil || len(k) != ed25519.PublicKeySize || name == "" {
			return nil, fmt.Errorf("%w: %s: key of %q", ErrCorrupt, p.path, name)
		}
		p.keys[name] = k
	}
	return p, nil
}

// Check pins key to name on first sight and refuses a different key for a
// known name with ErrKeyMismatch. With an authority that knows name, the
// authority decides instead: its key is pinned, any other is refused.
func (p *Pins) Check(name string, key []byte) error {
	if len(key) != ed25519.PublicKeySize {
		return fmt.Errorf("signing key of %d bytes", len(key))
	}
	p.mu.Lock()
	auth := p.authority
	p.mu.Unlock()
	if auth != nil {
		want, ok, err := auth(name)
		p.noteAuthority(name, err)
		if err == nil && ok {
			return p.checkAuthoritative(name, key, want)
		}
		// Unreachable authority, or one that does not know name: a peer must
		// still be able to join, so the local pins decide as without one.
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if old, ok := p.keys[name]; ok {
		if bytes.Equal(old, key) {
			return nil
		}
		return fmt.Errorf("%w: %s pinned %s…, announces %s… (a reinstalled host? `weft rmpeer %s` clears the pin)",
			ErrKeyMismatch, name, hex.EncodeToString(old[:6]), hex.EncodeToString(key[:6]), name)
	}
	if len(p.keys) >= MaxPins {
		return ErrTooManyPins
	}
	p.keys[name] = append(ed25519.PublicKey(nil), key...)
	p.saveSoonLocked()
	return nil
}

// saveSoonLocked persists the table in the background. Check runs inside
// memberlist's callbacks with its node lock held: a whole-file rewrite and
// fsync there, once per new peer, stalled gossip while a mesh of 100 formed
// (alive messages dropped, joins timed out). Pins that arrive together are
// written together. A pin not yet on disk when the agent dies is trusted on
// first use again, as it was moments before; Flush writes at once.
func (p *Pins) saveSoonLocked() {
	p.version++
	if p.path == "" || p.saving {
		return
	}
	p.saving = true
	go func() {
		if err := p.flush(); err != nil {
			// Keep the pins in memory: refusing peers for a full disk helps nobody.
			p.log.Error("could not persist pinned peer keys", "err", err)
		}
	}()
}

// Flush writes pins not yet on disk.
func (p *Pins) Flush() error {
	if p.path == "" {
		return nil
	}
	return p.flush()
}

// flush writes the table as it is once the previous write is done, unless
// that one already wrote this version.
func (p *Pins) flush() error {
	p.saveMu.Lock()
	defer p.saveMu.Unlock()
	p.mu.Lock()
	p.saving = false // changes from now on need another write
	v := p.version
	b, err := p.encodeLocked()
	p.mu.Unlock()
	if err != nil || v <= p.written {
		return err
	}
	if err := atomicfile.Write(p.path, b, 0o600); err != nil {
		return err
	}
	p.written = v
	return nil
}

// noteAuthority logs when the authority stops and starts answering, once
// per outage rather than on every gossip message.
func (p *Pins) noteAuthority(name string, err error) {
	p.mu.Lock()
	was := p.authDown
	p.authDown = err != nil
	p.mu.Unlock()
	switch {
	case err != nil && !was:
		p.log.Warn("signing-key authority unavailable; trusting peers' keys on first use until it answers", "peer", name, "err", err)
	case err == nil && was:
		p.log.Info("signing-key authority answers again")
	}
}

// checkAuthoritative pins want to name if key is want, and refuses key
// otherwise, whatever was pinned before: the authority outranks the local
// pins, so a re-provisioned host is re-pinned without an operator.
func (p *Pins) checkAuthoritative(name string, key, want []byte) error {
	if !bytes.Equal(key, want) {
		return fmt.Errorf("%w: %s announces %s…, the authority holds %s…",
			ErrKeyMismatch, name, Fingerprint(key), Fingerprint(want))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	old, had := p.keys[name]
	if had && bytes.Equal(old, key) {
		return nil
	}
	if !had && len(p.keys) >= MaxPins {
		return ErrTooManyPins
	}
	p.keys[name] = append(ed25519.PublicKey(nil), key...)
	if had {
		p.log.Info("re-pinned a peer's signing key from the authority", "peer", name,
			"old", Fingerprint(old), "new", Fingerprint(key))
	}
	p.saveSoonLocked()
	return nil
}

// Fingerprint is the short form of a key shown in logs and errors.
func Fingerprint(key []byte) string {
	if len(key) > 6 {
		key = key[:6]
	}
	return hex.EncodeToString(key)
}

// Key is the key pinned to name.
func (p *Pins) Key(name string) (ed25519.PublicKey, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k, ok := p.keys[name]
	return k, ok
}

// Forget clears name's pin: its next key is trusted on first use again.
// It is on disk when Forget returns.
func (p *Pins) Forget(name string) error {
	p.mu.Lock()
	if _, ok := p.keys[name]; !ok {
		p.mu.Unlock()
		return nil
	}
	delete(p.keys, name)
	p.version++
	p.mu.Unlock()
	return p.Flush()
}

// Len is the number of pins.
func (p *Pins) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.keys)
}

func (p *Pins) encodeLocked() ([]byte, error) {
	names := make([]string, 0, len(p.keys))
	for n := range p.keys {
		names = append(names, n)
	}
	sort.Strings(names)
	raw := make(map[string]string, len(names))
	for _, n := range names {
		raw[n] = hex.EncodeToString(p.keys[n])
	}
	return json.MarshalIndent(raw, "", " ")
}
