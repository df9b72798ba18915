package agent

import (
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/weftnet/weft/ipam"
)

// recordingNotifier keeps what the agent told it.
type recordingNotifier struct {
	mu        sync.Mutex
	readiness []string
}

func (r *recordingNotifier) Readiness(ready bool, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ready {
		why = "ready"
	}
	r.readiness = append(r.readiness, why)
}
func (*recordingNotifier) RangeReclaimed(string, []netip.Prefix, uint64) {}
func (*recordingNotifier) PasswordMismatch(netip.Addr, string)           {}
func (*recordingNotifier) UnderlayChanged(netip.Addr, netip.Addr)        {}
func (*recordingNotifier) Dropped() uint64                               { return 0 }

// Every change of what readiness is made of reaches the notifier, with the
// reason /readyz gives (kube.Events keeps only the transitions).
func TestReadinessReachesNotifier(t *testing.T) {
	a := &Agent{log: slog.New(slog.DiscardHandler), blocker: "starting"}
	rec := &recordingNotifier{}
	a.setNotifier(rec)
	a.setBlocker("waiting for the address ring (awaiting consensus)")
	a.setBlocker("")
	a.setHostBroken("bridge weft: not a bridge")
	a.setHostBroken("")
	want := []string{"waiting for the address ring (awaiting consensus)", "ready",
		"host network broken: bridge weft: not a bridge", "ready"}
	if !slices.Equal(rec.readiness, want) {
		t.Fatalf("notifier heard %q, want %q", rec.readiness, want)
	}
}

func TestRangesOf(t *testing.T) {
	r := []netip.Prefix{netip.MustParsePrefix("10.32.0.0/13")}
	st := ipam.Status{Entries: []ipam.Share{{Name: "a"}, {Name: "dead", Ranges: r}}}
	if got := rangesOf(st, "dead"); !slices.Equal(got, r) {
		t.Errorf("rangesOf dead = %v", got)
	}
	if got := rangesOf(st, "nobody"); got != nil {
		t.Errorf("rangesOf nobody = %v", got)
	}
}
