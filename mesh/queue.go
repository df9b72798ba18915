package mesh

import (
	"math"
	"slices"
	"sync"
)

// broadcastQueue holds the subsystem broadcasts piggybacked on gossip. It
// does what memberlist's TransmitLimitedQueue does (each message is sent
// about RetransmitMult × log10(nodes) times, least-sent and newest first)
// and two things that one cannot:
//
//   - a keyed message replaces the queued one with the same key, in place:
//     only the latest state of, say, one ring entry is worth sending. (The
//     memberlist queue's named broadcasts lose an unrelated message when the
//     replaced one was the only one queued: its id counter restarts while the
//     new message already holds an id, and equal ids of equal length
//     overwrite each other in its tree.)
//   - a hard cap: past max, the message sent most often (the oldest of
//     those) is dropped and counted. Push/pull repairs what it carried.
type broadcastQueue struct {
	numNodes func() int
	mult     int // retransmit multiplier
	max      int

	mu      sync.Mutex
	seq     uint64
	items   []*queuedMsg
	byKey   map[string]*queuedMsg
	dropped uint64
}

type queuedMsg struct {
	key       string // "" for unkeyed
	msg       []byte
	transmits int
	mult      int    // retransmit multiplier of this message
	seq       uint64 // newer is larger
}

func newBroadcastQueue(numNodes func() int, mult, max int) *broadcastQueue {
	return &broadcastQueue{numNodes: numNodes, mult: mult, max: max, byKey: map[string]*queuedMsg{}}
}

// add queues msg, replacing the queued message of the same key (key != "").
// It returns how many messages the cap dropped.
func (q *broadcastQueue) add(key string, msg []byte) int { return q.addMult(key, msg, q.mult) }

// addMult is add of a message sent about mult × log10(nodes) times.
func (q *broadcastQueue) addMult(key string, msg []byte, mult int) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.seq++
	if key != "" {
		if old := q.byKey[key]; old != nil {
			old.msg, old.transmits, old.seq, old.mult = msg, 0, q.seq, mult
			return 0
		}
	}
	m := &queuedMsg{key: key, msg: msg, seq: q.seq, mult: mult}
	q.items = append(q.items, m)
	if key != "" {
		q.byKey[key] = m
	}
	dropped := 0
	for len(q.items) > q.max {
		worst := 0
		for i, it := range q.items {
			w := q.items[worst]
			if it.transmits > w.transmits || (it.transmits == w.transmits && it.seq < w.seq) {
				worst = i
			}
		}
		q.removeAt(worst)
		dropped++
	}
	q.dropped += uint64(dropped)
	return dropped
}

func (q *broadcastQueue) removeAt(i int) {
	m := q.items[i]
	if m.key != "" && q.byKey[m.key] == m {
		delete(q.byKey, m.key)
	}
	q.items = slices.Delete(q.items, i, i+1)
}

// retransmitScale is memberlist's: the limit of a message is its multiplier
// × ceil(log10(nodes+1)).
func (q *broadcastQueue) retransmitScale() int {
	n := 1
	if q.numNodes != nil {
		n = q.numNodes()
	}
	return int(math.Ceil(math.Log10(float64(n + 1))))
}

// get returns messages that fit in limit bytes, each costing overhead more,
// least-sent and newest first; messages sent often enough leave the queue.
func (q *broadcastQueue) get(overhead, limit int) [][]byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 {
		return nil
	}
	order := slices.Clone(q.items)
	slices.SortFunc(order, func(a, b *queuedMsg) int {
		if a.transmits != b.transmits {
			return a.transmits - b.transmits
		}
		switch {
		case a.seq > b.seq:
			return -1
		case a.seq < b.seq:
			return 1
		}
		return 0
	})
	scale := q.retransmitScale()
	var out [][]byte
	used := 0
	for _, m := range order {
		if used+overhead+len(m.msg) > limit {
			continue // a smaller one may still fit
		}
		used += overhead + len(m.msg)
		out = append(out, m.msg)
		m.transmits++
	}
	if scale > 0 {
		q.items = slices.DeleteFunc(q.items, func(m *queuedMsg) bool {
			if m.transmits < m.mult*scale {
				return false
			}
			if m.key != "" && q.byKey[m.key] == m {
				delete(q.byKey, m.key)
			}
			return true
		})
	}
	return out
}

func (q *broadcastQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

func (q *broadcastQueue) droppedTotal() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.dropped
}
