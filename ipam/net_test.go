package ipam

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftnet/weft/identity"
)

// fakeNet is an in-memory mesh: broadcasts may be lost, duplicated and
// reordered; direct sends are reliable unless the link is cut; partitions cut
// links between groups; a down peer neither sends nor receives.
type fakeNet struct {
	t     testing.TB
	mu    sync.Mutex
	rng   *rand.Rand
	peers map[string]*IPAM
	names []string
	queue []delivery
	group map[string]int // partition group; peers talk only within one group
	down  map[string]bool
	loss  float64 // broadcast loss probability
	dup   float64 // broadcast duplication probability
	// pushPullShare is the share of peers starting a push/pull each round
	// (memberlist: one random partner per PushPullInterval); 0 = all.
	pushPullShare float64
	clock         atomic.Int64
	// keys are the signing keys membership pinned, by name; suspect peers
	// are reachable but not alive.
	keys    map[string]ed25519.PublicKey
	suspect map[string]bool
	seq     uint64 // sequence numbers of forged messages
}

// testSigner is a deterministic signing key per name, so that a restarted
// peer keeps its identity as a real host does.
func testSigner(name string) *identity.Signer {
	seed := sha256.Sum256([]byte("weft-test-key\x00" + name))
	return identity.NewSigner(ed25519.NewKeyFromSeed(seed[:]))
}

// pin registers name's key as membership would on its first contact.
func (n *fakeNet) pin(name string, key ed25519.PublicKey) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.keys[name] = key
}

func (n *fakeNet) peerKey(name string) (ed25519.PublicKey, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	k, ok := n.keys[name]
	return k, ok
}

// forge encodes m as sent by m.From with signer, with a fresh sequence number.
func (n *fakeNet) forge(signer Signer, m *message) []byte {
	n.mu.Lock()
	n.seq++
	m.Inc, m.Seq = 1, n.seq
	n.mu.Unlock()
	return encodeMessage(m, signer)
}

// from encodes m as sent by the honest peer named m.From.
func (n *fakeNet) from(m *message) []byte { return n.forge(testSigner(m.From), m) }

type delivery struct {
	from, to string
	msg      []byte
}

func newFakeNet(t testing.TB, seed uint64) *fakeNet {
	n := &fakeNet{t: t, rng: rand.New(rand.NewPCG(seed, 1)), peers: map[string]*IPAM{},
		group: map[string]int{}, down: map[string]bool{}, keys: map[string]ed25519.PublicKey{}, suspect: map[string]bool{}}
	n.clock.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return n
}

func (n *fakeNet) now() time.Time { return time.Unix(0, n.clock.Load()) }

func (n *fakeNet) advance(d time.Duration) { n.clock.Add(int64(d)) }

// linkedLocked: can a and b talk?
func (n *fakeNet) linkedLocked(a, b string) bool {
	return !n.down[a] && !n.down[b] && n.group[a] == n.group[b]
}

type endpoint struct {
	n    *fakeNet
	name string
}

func (e endpoint) Broadcast(msg []byte) {
	n := e.n
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, to := range n.names {
		if to == e.name || !n.linkedLocked(e.name, to) || n.rng.Float64() < n.loss {
			continue
		}
		n.queue = append(n.queue, delivery{e.name, to, slices.Clone(msg)})
		if n.rng.Float64() < n.dup {
			n.queue = append(n.queue, delivery{e.name, to, slices.Clone(msg)})
		}
	}
}

func (e endpoint) SendTo(to string, msg []byte) error {
	n := e.n
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.peers[to]; !ok || !n.linkedLocked(e.name, to) {
		return fmt.Errorf("peer %s unreachable", to)
	}
	n.queue = append(n.queue, delivery{e.name, to, slices.Clone(msg)})
	return nil
}

func (n *fakeNet) alive(self string) func(string) bool {
	return func(name string) bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		_, ok := n.peers[name]
		return ok && n.linkedLocked(self, name) && !n.suspect[name]
	}
}

func (n *fakeNet) reachable(self string) func(string) bool {
	return func(name string) bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		_, ok := n.peers[name]
		return ok && n.linkedLocked(self, name)
	}
}

// config is what add gives New.
func (n *fakeNet) config(name string, rng netip.Prefix, init Init, stateDir string) Config {
	n.pin(name, testSigner(name).Public())
	return Config{Name: name, Range: rng, Init: init, StateDir: stateDir,
		Transport: endpoint{n, name}, Alive: n.alive(name), Reachable: n.reachable(name), Peers: n.alivePeers(name),
		Clock: n.now, Signer: testSigner(name), PeerKey: n.peerKey}
}

func (n *fakeNet) alivePeers(self string) func() []string {
	return func() []string {
		n.mu.Lock()
		defer n.mu.Unlock()
		var out []string
		for _, name := range n.names {
			if n.linkedLocked(self, name) {
				out = append(out, name)
			}
		}
		return out
	}
}

// add creates a peer on the network.
func (n *fakeNet) add(name string, rng netip.Prefix, init Init, stateDir string) *IPAM {
	n.t.Helper()
	p, err := New(n.config(name, rng, init, stateDir))
	if err != nil {
		n.t.Fatalf("New(%s): %v", name, err)
	}
	p.donationRetry = 5 * time.Millisecond
	n.mu.Lock()
	n.peers[name] = p
	n.names = append(n.names, name)
	sort.Strings(n.names)
	n.mu.Unlock()
	return p
}

func (n *fakeNet) live() []*IPAM {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []*IPAM
	for _, name := range n.names {
		if !n.down[name] {
			out = append(out, n.peers[name])
		}
	}
	return out
}

// pump delivers queued messages in random order until none are left (or a
// bound, against livelock). Returns how many were delivered.
func (n *fakeNet) pump() int { return n.pumpSome(1_000_000) }

// pumpSome delivers at most limit queued messages, in random order.
func (n *fakeNet) pumpSome(limit int) int {
	delivered := 0
	for delivered < limit {
		n.mu.Lock()
		if len(n.queue) == 0 {
			n.mu.Unlock()
			return delivered
		}
		i := n.rng.IntN(len(n.queue))
		d := n.queue[i]
		n.queue[i] = n.queue[len(n.queue)-1]
		n.queue = n.queue[:len(n.queue)-1]
		ok := n.linkedLocked(d.from, d.to)
		p := n.peers[d.to]
		n.mu.Unlock()
		if ok {
			p.HandleMessage(d.msg)
			delivered++
		}
	}
	if limit == 1_000_000 {
		n.t.Fatalf("pump: message storm")
	}
	return delivered
}

// pushPull makes every live peer exchange full state with one random linked peer.
func (n *fakeNet) pushPull() {
	for _, a := range n.live() {
		n.mu.Lock()
		if n.pushPullShare > 0 && n.rng.Float64() >= n.pushPullShare {
			n.mu.Unlock()
			continue
		}
		var cands []string
		for _, name := range n.names {
			if name != a.cfg.Name && n.linkedLocked(a.cfg.Name, name) {
				cands = append(cands, name)
			}
		}
		if len(cands) == 0 {
			n.mu.Unlock()
			continue
		}
		b := n.peers[cands[n.rng.IntN(len(cands))]]
		n.mu.Unlock()
		_ = b.MergeState(a.LocalState())
		_ = a.MergeState(b.LocalState())
	}
}

// round is one step of simulated time: every live peer ticks, messages flow.
func (n *fakeNet) round(pushPull bool) {
	n.advance(tickInterval)
	for _, p := range n.live() {
		p.tick()
	}
	n.pump()
	if pushPull {
		n.pushPull()
		n.pump()
	}
}

func (n *fakeNet) partition(groups ...[]string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for g, names := range groups {
		for _, name := range names {
			n.group[name] = g
		}
	}
}

func (n *fakeNet) heal() {
	n.mu.Lock()
	n.group = map[string]int{}
	n.mu.Unlock()
	n.membershipChanged()
}

// membershipChanged tells every live peer, as the agent does on mesh events.
func (n *fakeNet) membershipChanged() {
	for _, p := range n.live() {
		p.PeersChanged()
	}
}

// checkSafety fails if two live peers believe they own one address, or one
// address is allocated twice anywhere.
func checkSafety(t testing.TB, peers []*IPAM) {
	t.Helper()
	type own struct {
		start, end uint64
		owner      string
	}
	var owned []own
	addrs := map[netip.Addr]string{}
	for _, p := range peers {
		p.mu.Lock()
		if p.ring != nil && !p.left {
			idx, ends := p.ring.ownedBy(p.cfg.Name)
			for k, i := range idx {
				owned = append(owned, own{p.ring.entries[i].Start, ends[k], p.cfg.Name})
			}
		}
		for _, a := range p.allocs {
			if other, dup := addrs[a.Addr]; dup {
				p.mu.Unlock()
				t.Fatalf("address %s allocated by %s and %s", a.Addr, other, p.cfg.Name)
			}
			addrs[a.Addr] = p.cfg.Name
		}
		p.mu.Unlock()
	}
	sort.Slice(owned, func(i, j int) bool { return owned[i].start < owned[j].start })
	for i := 1; i < len(owned); i++ {
		if owned[i].start < owned[i-1].end {
			t.Fatalf("offsets [%d,%d) owned by %s overlap [%d,%d) owned by %s",
				owned[i].start, owned[i].end, owned[i].owner, owned[i-1].start, owned[i-1].end, owned[i-1].owner)
		}
	}
}

// converged reports whether every peer holds the same ring.
func converged(peers []*IPAM) bool {
	var ref *ring
	for _, p := range peers {
		p.mu.Lock()
		r := p.ring
		if r != nil {
			r = r.clone()
		}
		p.mu.Unlock()
		if r == nil {
			return false
		}
		if ref == nil {
			ref = r
			continue
		}
		if r.ID != ref.ID || !slices.Equal(r.entries, ref.entries) {
			return false
		}
	}
	return true
}

// sameOwners reports whether every peer resolves every address to the same owner.
func sameOwners(peers []*IPAM) bool {
	var ref *ownerTable
	for _, p := range peers {
		t := p.owners.Load()
		if t == nil {
			return false
		}
		if ref == nil {
			ref = t
		} else if !t.equal(ref) {
			return false
		}
	}
	return true
}

// allocatePumping runs a blocking Allocate while the network keeps flowing.
func (n *fakeNet) allocatePumping(t testing.TB, p *IPAM, id string) (netip.Addr, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		a   netip.Addr
		err error
	}
	done := make(chan res, 1)
	go func() {
		a, err := p.Allocate(ctx, id, "eth0", "")
		done <- res{a, err}
	}()
	for {
		select {
		case r := <-done:
			return r.a, r.err
		default:
		}
		if n.pump() == 0 {
			select {
			case r := <-done:
				return r.a, r.err
			case <-time.After(time.Millisecond): // let the allocating goroutine queue its request
			}
		}
	}
}
