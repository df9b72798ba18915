package agenttest

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/weftnet/weft/agent"
	"github.com/weftnet/weft/policy"
)

// PolicyEngine is an in-memory agent.PolicyEngine: inputs pile up as the
// real engine's do, and Apply makes them "the kernel's" (Applied). Its
// Selected follows the podSelector and policyTypes of the applied policies
// (namespace selectors and rules are the real engine's business); that is
// enough to see the agent feed it. Use it as Devices.PolicyEngine:
//
//	eng := agenttest.NewPolicyEngine()
//	cfg.Devices.PolicyEngine = eng.Factory
type PolicyEngine struct {
	mu       sync.Mutex
	policies map[string]*networkingv1.NetworkPolicy
	pods     map[string]policy.Pod
	nss      map[string]map[string]string

	applied   map[string]policy.Pod // pods as of the last Apply
	appliedNP map[string]*networkingv1.NetworkPolicy
	applies   int
	removes   int
	lastApply time.Time
	applyErr  error
	history   map[string][]policy.Pod // every SetPod of a pod, a zero Pod for DeletePod
	forgotten []netip.Addr
	flushed   []Flush
	unreplied []Flush // ForgetUnreplied calls, as Flush records them
}

// Flush is one FlushNeighbours call: its addresses, and whether each of
// them was already a local pod's as of the last Apply (so the rules that
// isolate it were in place when the neighbour queue was flushed).
type Flush struct {
	Addrs   []netip.Addr
	Applied bool
}

var _ agent.PolicyEngine = (*PolicyEngine)(nil)

// NewPolicyEngine returns an empty engine.
func NewPolicyEngine() *PolicyEngine {
	return &PolicyEngine{policies: map[string]*networkingv1.NetworkPolicy{}, pods: map[string]policy.Pod{},
		nss: map[string]map[string]string{}, applied: map[string]policy.Pod{},
		appliedNP: map[string]*networkingv1.NetworkPolicy{}, history: map[string][]policy.Pod{}}
}

// Factory is a Devices.PolicyEngine that hands out e.
func (e *PolicyEngine) Factory(policy.Config) (agent.PolicyEngine, error) { return e, nil }

func pkey(ns, name string) string { return ns + "/" + name }

func (e *PolicyEngine) SetPolicy(p *networkingv1.NetworkPolicy) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.policies[pkey(p.Namespace, p.Name)] = p
}

func (e *PolicyEngine) DeletePolicy(ns, name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.policies, pkey(ns, name))
}

func (e *PolicyEngine) SetNamespace(name string, l map[string]string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.nss[name] = l
}

func (e *PolicyEngine) DeleteNamespace(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.nss, name)
}

func (e *PolicyEngine) SetPod(p policy.Pod) {
	e.mu.Lock()
	defer e.mu.Unlock()
	k := pkey(p.Namespace, p.Name)
	e.pods[k] = p
	e.history[k] = append(e.history[k], p)
}

func (e *PolicyEngine) DeletePod(ns, name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	k := pkey(ns, name)
	if _, ok := e.pods[k]; ok {
		e.history[k] = append(e.history[k], policy.Pod{})
	}
	delete(e.pods, k)
}

// Apply makes the inputs the applied state, or fails with the error of
// FailApply.
func (e *PolicyEngine) Apply(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.applies++
	e.lastApply = time.Now()
	if e.applyErr != nil {
		return e.applyErr
	}
	e.applied = maps.Clone(e.pods)
	e.appliedNP = maps.Clone(e.policies)
	return nil
}

// FailApply makes every Apply fail with err (nil: succeed again).
func (e *PolicyEngine) FailApply(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.applyErr = err
}

func (e *PolicyEngine) selectedLocked(p policy.Pod) (ingress, egress bool) {
	for _, np := range e.appliedNP {
		if np.Namespace != p.Namespace {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil || !sel.Matches(labels.Set(p.Labels)) {
			continue
		}
		types := np.Spec.PolicyTypes
		if len(types) == 0 {
			types = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
			if len(np.Spec.Egress) > 0 {
				types = append(types, networkingv1.PolicyTypeEgress)
			}
		}
		ingress = ingress || slices.Contains(types, networkingv1.PolicyTypeIngress)
		egress = egress || slices.Contains(types, networkingv1.PolicyTypeEgress)
	}
	return ingress, egress
}

func (e *PolicyEngine) Selected(ns, name string) (ingress, egress bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.applied[pkey(ns, name)]
	if !ok || !p.Local {
		return false, false
	}
	return e.selectedLocked(p)
}

func (e *PolicyEngine) Status() policy.Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := policy.Status{Policies: len(e.appliedNP), LastApply: e.lastApply}
	for _, p := range e.applied {
		if !p.Local {
			continue
		}
		st.LocalPods++
		if in, eg := e.selectedLocked(p); in || eg {
			st.SelectedLocal++
		}
	}
	if e.applyErr != nil {
		st.LastError = e.applyErr.Error()
	}
	return st
}

func (e *PolicyEngine) Drops() (uint64, uint64) { return 0, 0 }

// ForgetFlows records the addresses (see Forgotten).
func (e *PolicyEngine) ForgetFlows(addrs ...netip.Addr) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.forgotten = append(e.forgotten, addrs...)
	return len(addrs), nil
}

// Forgotten lists every address given to ForgetFlows, in order.
func (e *PolicyEngine) Forgotten() []netip.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.forgotten)
}

// FlushNeighbours records the call (see Flushed).
func (e *PolicyEngine) FlushNeighbours(addrs ...netip.Addr) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	applied := true
	for _, a := range addrs {
		applied = applied && e.heldLocked(a)
	}
	e.flushed = append(e.flushed, Flush{Addrs: slices.Clone(addrs), Applied: applied})
	return len(addrs), nil
}

// ForgetUnreplied records the call (see Unreplied).
func (e *PolicyEngine) ForgetUnreplied(addr netip.Addr) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.unreplied = append(e.unreplied, Flush{Addrs: []netip.Addr{addr}, Applied: e.heldLocked(addr)})
	return nil
}

// Unreplied lists every ForgetUnreplied call, in order; Applied says the
// address was a local pod's as of the last Apply.
func (e *PolicyEngine) Unreplied() []Flush {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.unreplied)
}

func (e *PolicyEngine) heldLocked(a netip.Addr) bool {
	for _, p := range e.applied {
		if p.Local && slices.Contains(p.IPs, a) {
			return true
		}
	}
	return false
}

// Flushed lists every FlushNeighbours call, in order.
func (e *PolicyEngine) Flushed() []Flush {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.flushed)
}

func (e *PolicyEngine) Remove() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.removes++
	e.applied = map[string]policy.Pod{}
	e.appliedNP = map[string]*networkingv1.NetworkPolicy{}
	return nil
}

// Applied returns a pod as of the last Apply.
func (e *PolicyEngine) Applied(ns, name string) (policy.Pod, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.applied[pkey(ns, name)]
	return p, ok
}

// AppliedPods counts the pods as of the last Apply.
func (e *PolicyEngine) AppliedPods() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.applied)
}

// Applies counts Apply calls; Removes counts Remove calls.
func (e *PolicyEngine) Applies() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.applies
}

func (e *PolicyEngine) Removes() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.removes
}

// History is every SetPod of the pod in order, a zero Pod for each
// DeletePod of it.
func (e *PolicyEngine) History(ns, name string) []policy.Pod {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.history[pkey(ns, name)])
}
