package ipam

import (
	"slices"
	"sort"
	"time"
)

// Consensus bootstrap: single-decree Paxos over direct messages. Every peer in
// consensus mode is an acceptor and may propose. The value is the list of
// peers the range is first split between: the proposer's own and those that
// promised, or, as Paxos requires, the value of the highest ballot already
// accepted by any promiser. A value is chosen once a majority of the declared
// N peers accepted it; only then does anyone create the ring. A minority
// partition can never choose, so it never allocates.
//
// Who proposes first goes by name rank with a delay per rank, only to avoid
// duelling proposers; safety never depends on it.

type proposal struct {
	b        ballot
	started  time.Time
	phase    int                 // 1: gathering promises, 2: gathering accepts
	promises map[string]*message // by acceptor; Accepted/Value what it had accepted
	accepted map[string]bool
	value    []string
}

func (p *IPAM) consensusTickLocked(now time.Time) {
	peers := p.alivePeersLocked()
	need := majority(p.cfg.Init.Quorum)
	if pr := p.proposal; pr != nil {
		if pr.phase == 1 && len(pr.promises) >= need {
			p.startAcceptLocked(peers)
			return
		}
		if now.Sub(pr.started) < paxosTimeout {
			return
		}
		p.log.Info("consensus round did not complete; will retry", "ballot", pr.b.Round,
			"promises", len(pr.promises), "accepts", len(pr.accepted), "need", need)
		p.proposal = nil
		p.nextTry = now.Add(p.jitter(paxosTimeout))
	}
	if len(peers)+1 < need {
		return
	}
	if p.nextTry.IsZero() {
		all := append(slices.Clone(peers), p.cfg.Name)
		sort.Strings(all)
		rank := sort.SearchStrings(all, p.cfg.Name)
		p.nextTry = now.Add(time.Duration(rank)*rankDelay + p.jitter(rankDelay/2))
	}
	if now.Before(p.nextTry) {
		return
	}
	p.startProposalLocked(now, peers)
}

func (p *IPAM) jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return time.Duration(p.rng.Int64N(int64(d)))
}

func (p *IPAM) startProposalLocked(now time.Time, peers []string) {
	p.maxRound = min(max(p.maxRound, p.acceptor.Promised.Round)+1, maxRound) // saturates, never wraps
	b := ballot{Round: p.maxRound, Proposer: p.cfg.Name}
	// Our own acceptor promises first, like any other.
	if !p.acceptor.Promised.less(b) {
		p.nextTry = now.Add(p.jitter(paxosTimeout))
		return
	}
	was := p.acceptor
	p.acceptor.Promised = b
	if err := p.persistLocked(); err != nil {
		p.acceptor = was
		p.log.Error("consensus: cannot persist promise", "err", err)
		return
	}
	self := &message{From: p.cfg.Name}
	if !p.acceptor.Accepted.isZero() {
		a := p.acceptor.Accepted
		self.Accepted, self.Value = &a, p.acceptor.Value
	}
	p.proposal = &proposal{b: b, started: now, phase: 1,
		promises: map[string]*message{p.cfg.Name: self}, accepted: map[string]bool{}}
	p.log.Info("proposing an IPAM ring", "ballot", b.Round, "peers", len(peers)+1, "quorum", majority(p.cfg.Init.Quorum))
	for _, to := range peers {
		p.sendLocked(to, &message{Type: msgPrepare, Ballot: &b})
	}
}

func (p *IPAM) startAcceptLocked(peers []string) {
	pr := p.proposal
	var best *message
	for _, m := range pr.promises {
		if m.Accepted != nil && (best == nil || best.Accepted.less(*m.Accepted)) {
			best = m
		}
	}
	if best != nil {
		pr.value = best.Value
	} else {
		for name := range pr.promises {
			pr.value = append(pr.value, name)
		}
		sort.Strings(pr.value)
	}
	pr.phase = 2
	if p.acceptor.Promised.less(pr.b) || p.acceptor.Promised == pr.b {
		was := p.acceptor
		p.acceptor.Promised, p.acceptor.Accepted, p.acceptor.Value = pr.b, pr.b, pr.value
		if err := p.persistLocked(); err != nil {
			p.acceptor = was
			p.log.Error("consensus: cannot persist accept", "err", err)
			p.proposal = nil
			return
		}
		pr.accepted[p.cfg.Name] = true
	}
	b := pr.b
	for name := range pr.promises {
		if name != p.cfg.Name {
			p.sendLocked(name, &message{Type: msgAccept, Ballot: &b, Value: pr.value})
		}
	}
	p.maybeChosenLocked(peers)
}

// handleAcceptorLocked answers prepare and accept.
func (p *IPAM) handleAcceptorLocked(m *message) error {
	if p.ring != nil {
		// Too late to vote: the ring exists. Give it to the proposer.
		if !p.left {
			p.sendLocked(m.From, p.stateMsgLocked())
		}
		return nil
	}
	if p.cfg.Init.Mode != ModeConsensus {
		return nil // observers own nothing and do not vote
	}
	b := *m.Ballot
	p.maxRound = max(p.maxRound, b.Round)
	was := p.acceptor
	reply := &message{Type: msgPromise, Ballot: &b}
	if m.Type == msgAccept {
		reply.Type = msgAccepted
	}
	switch {
	case m.Type == msgPrepare && p.acceptor.Promised.less(b):
		p.acceptor.Promised = b
		if !p.acceptor.Accepted.isZero() {
			a := p.acceptor.Accepted
			reply.Accepted, reply.Value = &a, p.acceptor.Value
		}
		reply.OK = true
	case m.Type == msgAccept && !b.less(p.acceptor.Promised):
		p.acceptor.Promised, p.acceptor.Accepted, p.acceptor.Value = b, b, m.Value
		reply.OK = true
	default:
		pb := p.acceptor.Promised
		reply.Promised = &pb
	}
	if reply.OK {
		// A promise must survive a crash, or a restarted acceptor could vote twice.
		if err := p.persistLocked(); err != nil {
			p.acceptor = was // memory never promises what the disk does not
			return err
		}
	}
	p.sendLocked(m.From, reply)
	return nil
}

// handleProposerLocked counts promises and accepts for our current ballot.
func (p *IPAM) handleProposerLocked(m *message) {
	if m.Promised != nil {
		p.maxRound = max(p.maxRound, m.Promised.Round)
	}
	pr := p.proposal
	if pr == nil || p.ring != nil || *m.Ballot != pr.b {
		return
	}
	if !m.OK {
		// Someone promised a higher ballot: let that round finish.
		p.proposal = nil
		p.nextTry = p.now().Add(paxosTimeout/2 + p.jitter(paxosTimeout))
		return
	}
	peers := p.alivePeersLocked()
	switch {
	case m.Type == msgPromise && pr.phase == 1:
		pr.promises[m.From] = m
		// Everyone answered: no reason to wait for the tick.
		if len(pr.promises) >= len(peers)+1 && len(pr.promises) >= majority(p.cfg.Init.Quorum) {
			p.startAcceptLocked(peers)
		}
	case m.Type == msgAccepted && pr.phase == 2:
		pr.accepted[m.From] = true
		p.maybeChosenLocked(peers)
	}
}

func (p *IPAM) maybeChosenLocked(peers []string) {
	pr := p.proposal
	if len(pr.accepted) < majority(p.cfg.Init.Quorum) {
		return
	}
	b := pr.b
	p.adoptLocked(newSeededRing(p.rangeStr, p.size, pr.value), "chosen by consensus")
	for _, to := range peers {
		p.sendLocked(to, &message{Type: msgChosen, Ballot: &b, Value: pr.value})
	}
	p.broadcastEntriesLocked(p.ownEntriesLocked())
}

func (p *IPAM) handleChosenLocked(m *message) error {
	r := newSeededRing(p.rangeStr, p.size, m.Value)
	if p.ring == nil {
		if p.left || p.cfg.Init.Mode == ModeSeed {
			return nil
		}
		p.adoptLocked(r, "chosen by consensus, told by "+m.From)
		return nil
	}
	if r.ID != p.ring.ID {
		return p.mismatchErr(m.From, r.ID, r.Seeds)
	}
	return nil
}
