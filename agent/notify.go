package agent

import (
	"net/netip"

	"github.com/weftnet/weft/ipam"
)

// notifier is told of the state changes an operator must see beyond the
// logs; in Kubernetes it is kube.Events, which writes them as Events on the
// Node. Every method must return at once (the callers include the mesh's
// and the handshake worker's goroutines).
type notifier interface {
	// Readiness is called whenever readiness may have changed; the
	// notifier reports transitions only.
	Readiness(ready bool, why string)
	RangeReclaimed(deadNode string, ranges []netip.Prefix, addresses uint64)
	PasswordMismatch(from netip.Addr, why string)
	UnderlayChanged(old, new netip.Addr)
	Dropped() uint64
}

// noNotifier is the notifier outside Kubernetes: the logs say it all.
type noNotifier struct{}

func (noNotifier) Readiness(bool, string)                        {}
func (noNotifier) RangeReclaimed(string, []netip.Prefix, uint64) {}
func (noNotifier) PasswordMismatch(netip.Addr, string)           {}
func (noNotifier) UnderlayChanged(netip.Addr, netip.Addr)        {}
func (noNotifier) Dropped() uint64                               { return 0 }

// notifierBox lets an interface live in an atomic.Pointer.
type notifierBox struct{ n notifier }

func (a *Agent) setNotifier(n notifier) { a.events.Store(&notifierBox{n}) }

// notify is the notifier in use now (noNotifier for an Agent made without
// New, as some tests do).
func (a *Agent) notify() notifier {
	if b := a.events.Load(); b != nil {
		return b.n
	}
	return noNotifier{}
}

// noteReadiness passes the current readiness to the notifier; called after
// every change of what readiness is made of (blocker, hostBroken).
func (a *Agent) noteReadiness() {
	why := a.notReadyReason()
	a.notify().Readiness(why == "", why)
}

// rangesOf is what name owns in st, for the Event that names them.
func rangesOf(st ipam.Status, name string) []netip.Prefix {
	for _, e := range st.Entries {
		if e.Name == name {
			return e.Ranges
		}
	}
	return nil
}

// wrongPasswordWhy is the cause said of a refused data-plane handshake.
const wrongPasswordWhy = "its handshake does not verify: it uses a different password"
