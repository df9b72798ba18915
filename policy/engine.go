// Package policy enforces Kubernetes NetworkPolicy (networking.k8s.io/v1) on
// one node, in the agent's own nftables table (family inet, default
// "weft-policy").
//
// The agent feeds the Engine what its informers see (policies, namespaces,
// pods, local or remote) and calls Apply; the Engine compiles that into
// sets and rules and programs them in one nftables transaction per call.
//
// Layout (see compile.go for the details):
//
//	forward (filter hook forward, policy accept):
//	  ct state established,related accept
//	  ip daddr @ingress-iso ct state invalid counter drop
//	  ip saddr @egress-iso  ct state invalid counter drop
//	  ip saddr @egress-iso  jump egress
//	  ip daddr @ingress-iso jump ingress
//	egress:    ip daddr @node return; per policy: ip saddr @target jump pe-<policy>; counter drop
//	ingress:   ip saddr @node accept; per policy: ip daddr @target jump pi-<policy>; counter drop
//	pe-<policy>: one rule per policy rule ... goto egress-ok
//	pi-<policy>: one rule per policy rule ... accept
//	egress-ok: ip daddr @ingress-iso goto ingress; accept
//
// Each policy has its own chains, so a policy change is a rewrite of that
// policy's chain and its jump, not of the ruleset.
//
// Pods are in address sets, one per distinct selector (namespace scope +
// canonical selector string, shared by every policy that uses it), so a pod
// or label change is a set element update and the number of rules follows
// the policies, not the pods. ingress-iso / egress-iso hold the local pods
// some policy isolates: a pod in neither is allowed by default.
//
// Every hook covers all of weft's paths: pod to pod on one node is bridged
// and reaches the inet forward hook because net.bridge.bridge-nf-call-iptables
// is 1 (Apply checks it and sets it); traffic from other hosts comes out of
// weft-tun (userspace) or weft-vx (kernel fast path) and is routed to the
// bridge, through the same hook. kube-proxy's DNAT runs before forward, so
// rules see the backend pod's address, as Kubernetes specifies.
package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// DefaultTable is the nftables table (family inet) the Engine owns.
const DefaultTable = "weft-policy"

// ErrConfig is wrapped by New's errors about a bad Config.
var ErrConfig = errors.New("policy: bad config")

// Pod is what the engine needs to know about one pod, local or remote.
type Pod struct {
	Namespace, Name string
	IPs             []netip.Addr // IPv4 only is used (the cluster is IPv4); others are ignored
	Labels          map[string]string
	Ports           []NamedPort // container ports that have a name (for named ports in policies)
	Local           bool        // runs on this node (its isolation is enforced here)
}

// Pods on the host network share their node's address and are not
// selected by address; the caller leaves them out.

// NamedPort is a container port with a name, as a policy may refer to it.
type NamedPort struct {
	Name     string
	Protocol corev1.Protocol // "" means TCP, as in the Pod API
	Port     int32
}

// Config configures an Engine.
type Config struct {
	Logger *slog.Logger
	// Table is the nftables table name, default "weft-policy" (family inet).
	Table string
	// NetNS is the network namespace to program: "" for the current one, a
	// name under /run/netns, or a path (when it contains a slash).
	NetNS string
	// NodeAddrs returns this node's own addresses: traffic between the node
	// and its own pods is always allowed (kubelet probes). May be nil. It is
	// called by every Apply with the Engine's lock held, so it must not call
	// the Engine.
	NodeAddrs func() []netip.Addr
	// DenyLog logs denied packets to the kernel log, at most 10 a second
	// per direction, prefixed "weft-policy deny ingress: " / "... egress: ".
	// The kernel writes these only for the initial network namespace (where
	// the agent runs) unless net.netfilter.nf_log_all_netns=1.
	DenyLog bool
}

// Status is a summary for `weft status policy` and metrics.
type Status struct {
	Policies      int
	LocalPods     int
	SelectedLocal int // local pods selected by at least one policy (either direction)
	Sets, Rules   int // size of what is programmed (proves rules scale with policies)
	LastApply     time.Time
	LastApplyTook time.Duration
	// LastError is the last Apply's error, or the policies that could not be
	// compiled fully (those parts fail closed: they allow nothing).
	LastError string
}

// Engine compiles policies into one nftables table and keeps it in step.
// All methods are safe for concurrent use.
type Engine struct {
	cfg  Config
	log  *slog.Logger
	kern backend

	mu         sync.Mutex
	policies   map[string]*networkingv1.NetworkPolicy // by namespace/name
	namespaces map[string]map[string]string
	pods       map[string]*podState // by namespace/name

	policiesDirty bool
	dirtyPods     map[string]struct{}
	dirtyNS       map[string]struct{}

	progs     map[string]*polProg            // each policy compiled, by namespace/name
	prog      *program                       // compiled from policies; nil before the first Apply
	contents  map[string]map[string]int      // dynamic set -> element key -> references
	installed map[string]map[string]struct{} // dynamic set -> elements the kernel has
	touched   map[string]map[string]struct{} // dynamic set -> elements whose references changed
	nodeKeys  []string                       // node set elements contributed last time
	synced    bool                           // the kernel has prog (a full install succeeded)

	dropBase [2]uint64 // drops counted by tables this Engine replaced: ingress, egress
	status   Status
	compErr  string
	bridgeNF string // why bridged traffic is not filtered, "" when it is
}

type podState struct {
	pod     Pod
	contrib []elemRef // set elements this pod put in, to take them out again
}

type elemRef struct{ set, key string }

// New validates cfg and returns an Engine. It does not touch the kernel:
// the first Apply does.
func New(cfg Config) (*Engine, error) {
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if len(cfg.Table) > 255 {
		return nil, fmt.Errorf("%w: table name of %d bytes", ErrConfig, len(cfg.Table))
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "policy", "table", cfg.Table)
	return newEngine(cfg, log, nftBackend{cfg}), nil
}

func newEngine(cfg Config, log *slog.Logger, kern backend) *Engine {
	return &Engine{
		cfg:        cfg,
		log:        log,
		kern:       kern,
		policies:   map[string]*networkingv1.NetworkPolicy{},
		progs:      map[string]*polProg{},
		namespaces: map[string]map[string]string{},
		pods:       map[string]*podState{},
		dirtyPods:  map[string]struct{}{},
		dirtyNS:    map[string]struct{}{},
	}
}

func key(namespace, name string) string { return namespace + "/" + name }

// SetPolicy adds or replaces a policy; it takes effect at the next Apply.
// The Engine keeps its own copy.
func (e *Engine) SetPolicy(p *networkingv1.NetworkPolicy) {
	if p == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	k := key(p.Namespace, p.Name)
	if old, ok := e.policies[k]; ok && equality.Semantic.DeepEqual(old.Spec, p.Spec) {
		return // an informer's resync, or a change of metadata only
	}
	e.policies[k] = p.DeepCopy()
	e.policiesDirty = true
}

// DeletePolicy forgets a policy.
func (e *Engine) DeletePolicy(namespace, name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.policies[key(namespace, name)]; ok {
		delete(e.policies, key(namespace, name))
		e.policiesDirty = true
	}
}

// SetNamespace records a namespace's labels (for namespaceSelector).
func (e *Engine) SetNamespace(name string, labels map[string]string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if old, ok := e.namespaces[name]; ok && maps.Equal(old, labels) {
		return
	}
	e.namespaces[name] = maps.Clone(labels)
	e.dirtyNS[name] = struct{}{}
}

// DeleteNamespace forgets a namespace's labels.
func (e *Engine) DeleteNamespace(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.namespaces[name]; ok {
		delete(e.namespaces, name)
		e.dirtyNS[name] = struct{}{}
	}
}

// SetPod adds or replaces a pod.
func (e *Engine) SetPod(p Pod) {
	p.IPs = slices.Clone(p.IPs)
	p.Labels = maps.Clone(p.Labels)
	p.Ports = slices.Clone(p.Ports)
	e.mu.Lock()
	defer e.mu.Unlock()
	k := key(p.Namespace, p.Name)
	if ps, ok := e.pods[k]; ok {
		if podEqual(ps.pod, p) {
			return
		}
		ps.pod = p
	} else {
		e.pods[k] = &podState{pod: p}
	}
	e.dirtyPods[k] = struct{}{}
}

func podEqual(a, b Pod) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && a.Local == b.Local && slices.Equal(a.IPs, b.IPs) && maps.Equal(a.Labels, b.Labels) &&
		slices.Equal(a.Ports, b.Ports)
}

// DeletePod forgets a pod.
func (e *Engine) DeletePod(namespace, name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	k := key(namespace, name)
	if ps, ok := e.pods[k]; ok {
		// Keep the state until Apply takes its elements out.
		ps.pod.IPs, ps.pod.Local = nil, false
		ps.pod.Name = "" // marks it deleted
		e.dirtyPods[k] = struct{}{}
	}
}

// Selected reports whether a local pod is isolated for ingress / egress by
// what the last Apply programmed.
func (e *Engine) Selected(namespace, name string) (ingress, egress bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ps, ok := e.pods[key(namespace, name)]
	if !ok {
		return false, false
	}
	for _, r := range ps.contrib {
		switch r.set {
		case setIngressIso:
			ingress = true
		case setEgressIso:
			egress = true
		}
	}
	return ingress, egress
}

// Status reports what is programmed.
func (e *Engine) Status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.status
	s.Policies = len(e.policies)
	s.LocalPods, s.SelectedLocal = 0, 0
	for _, ps := range e.pods {
		if !ps.pod.Local || ps.pod.Name == "" {
			continue
		}
		s.LocalPods++
		for _, r := range ps.contrib {
			if r.set == setIngressIso || r.set == setEgressIso {
				s.SelectedLocal++
				break
			}
		}
	}
	if s.LastError == "" {
		s.LastError = e.compErr
	}
	return s
}

// Apply programs everything changed since the last Apply, in one nftables
// transaction. The first Apply (and any after a failed one) writes the
// whole table, replacing whatever is there in the same transaction, so
// there is never a moment without rules. After a policy change that
// policy's chains and jumps are rewritten and sets added or removed; after pod,
// label or namespace changes only set elements change. It returns once the
// kernel has it.
func (e *Engine) Apply(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	start := time.Now()
	e.checkBridgeNF()
	var err error
	switch {
	case !e.synced || e.prog == nil:
		err = e.applyFull()
	case e.policiesDirty:
		err = e.applyPolicies()
	default:
		err = e.applyIncremental()
	}
	if err != nil && e.synced {
		// The kernel refused a change against what we think it has (say,
		// someone deleted the table): a failed batch changes nothing, so
		// write everything now rather than leave the node unprotected
		// until the next Apply.
		e.log.Warn("network policy update failed, rewriting the table", "err", err)
		e.synced = false
		err = e.applyFull()
	}
	took := time.Since(start)
	e.status.LastApply = start
	e.status.LastApplyTook = took
	if err != nil {
		e.synced = false // the next Apply rewrites everything
		e.status.LastError = err.Error()
		e.log.Error("network policy apply failed", "err", err, "took", took)
		return err
	}
	e.status.LastError = e.compErr
	if e.bridgeNF != "" {
		e.status.LastError = strings.TrimPrefix(e.compErr+"; "+e.bridgeNF, "; ")
	}
	e.status.Sets = e.prog.setCount()
	e.status.Rules = e.prog.ruleCount()
	e.log.Debug("network policy applied", "took", took, "sets", e.status.Sets, "rules", e.status.Rules)
	return nil
}

// checkBridgeNF makes sure bridged IPv4 passes the inet hooks, on every
// Apply (someone may turn it off), logging only when that changes.
func (e *Engine) checkBridgeNF() {
	msg := ""
	if err := e.kern.ensureBridgeNF(); err != nil {
		// Bridged pod-to-pod traffic on this node bypasses the rules;
		// traffic from other nodes is still covered, so go on.
		msg = "bridged traffic between pods of this node is not filtered: " + err.Error()
	}
	if msg != e.bridgeNF {
		if msg != "" {
			e.log.Warn(msg)
		} else {
			e.log.Info("bridged traffic between pods of this node is filtered")
		}
		e.bridgeNF = msg
	}
}

// Drops reports the packets the deny rules dropped, per direction.
func (e *Engine) Drops() (ingress, egress uint64) {
	e.mu.Lock()
	base := e.dropBase
	e.mu.Unlock()
	in, out, err := e.kern.readDrops()
	if err != nil {
		e.log.Debug("read policy drop counters", "err", err)
	}
	return base[0] + in, base[1] + out
}

// Remove deletes the table (weft reset, --network-policy=false). A missing
// table is not an error. The Engine's inputs stay; a later Apply writes the
// table again.
func (e *Engine) Remove() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.synced || e.installed != nil {
		// The table's counters go with it: keep them in the totals.
		if in, out, err := e.kern.readDrops(); err == nil {
			e.dropBase[0] += in
			e.dropBase[1] += out
		}
	}
	e.synced, e.installed = false, nil
	return e.kern.remove()
}
