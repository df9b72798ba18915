package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/kube"
	"github.com/weftnet/weft/policy"
)

// PolicyEngine is what the agent asks of package policy (*policy.Engine):
// inputs that are cheap and take effect at the next Apply, one kernel
// transaction per Apply, and status. Tests give fakes.
type PolicyEngine interface {
	SetPolicy(p *networkingv1.NetworkPolicy)
	DeletePolicy(namespace, name string)
	SetNamespace(name string, labels map[string]string)
	DeleteNamespace(name string)
	SetPod(p policy.Pod)
	DeletePod(namespace, name string)
	Apply(ctx context.Context) error
	Status() policy.Status
	Drops() (ingress, egress uint64)
	Remove() error
	Selected(namespace, name string) (ingress, egress bool)
	// ForgetFlows deletes the conntrack entries of these addresses, so
	// that a pod given a released address inherits no established flow
	// (which the rules accept before any policy). Slow: off the ADD path.
	ForgetFlows(addrs ...netip.Addr) (int, error)
	// FlushNeighbours deletes the neighbour entries of these addresses,
	// dropping packets queued on them before the address was isolated.
	FlushNeighbours(addrs ...netip.Addr) (int, error)
	// ForgetUnreplied deletes the conntrack entries of addr that never saw
	// a reply (packets sent before its pod existed), with a kernel-side
	// filter: cheap, on the ADD path. policy.ErrNoCtFilter: the kernel
	// cannot filter.
	ForgetUnreplied(addr netip.Addr) error
}

// realPolicyEngine is Devices.PolicyEngine on a real host.
func realPolicyEngine(cfg policy.Config) (PolicyEngine, error) {
	e, err := policy.New(cfg)
	if err != nil {
		return nil, err
	}
	return e, nil
}

// podSource is the informers' cache as the CNI ADD path uses it
// (*kube.PolicySource).
type podSource interface {
	Synced() bool
	WaitPod(ctx context.Context, namespace, name string, ready func(*corev1.Pod) bool) (*corev1.Pod, error)
	Pod(namespace, name string) (*corev1.Pod, bool)
}

// localPodAddrs says which addresses this host allocated to a pod: for a
// pod on this node they, not the pod's status, are its addresses (the
// status lags the CNI ADD, and still lists an address after its DEL).
type localPodAddrs func(namespace, name string, status []netip.Addr) []netip.Addr

// Timing of policy updates.
const (
	// policyDebounce coalesces a burst of informer events into one
	// transaction: a deployment's rollout is tens of events within
	// milliseconds.
	policyDebounce = 20 * time.Millisecond
	// policyPodWait bounds how long a CNI ADD waits for the informers'
	// first sync and to see its pod (scheduled here) before answering "try
	// again": within
	// the shim's own deadline for the call (plugin.AgentTimeout, 1.5 s), so
	// that the agent, not a timeout, answers, and releases the address.
	policyPodWait = time.Second
	// policyRetry paces retries of a failed Apply.
	policyRetry = time.Second
)

// Errors of the CNI ADD gate; the API answers them as not-ready, which the
// shim turns into CNI error 11 (try again later).
var (
	errPolicyStopped = errors.New("network policy enforcement stopped (reset)")
)

// policyCtl keeps the policy engine in step with the cluster: it is the
// informers' handler (kube.PolicyHandler), applies their changes in
// debounced batches, and gates CNI ADD so that a pod's rules are in the
// kernel before its first packet.
type policyCtl struct {
	eng   PolicyEngine
	src   podSource
	node  string
	local localPodAddrs
	log   *slog.Logger
	// observe records the duration of every Apply (weft_policy_apply_seconds).
	observe func(time.Duration)

	kick chan struct{} // something changed: apply soon (capacity 1, coalesced)

	// mu serialises every call into the engine, whose inputs and Apply are
	// not meant to run concurrently.
	mu       sync.Mutex
	synced   bool // the informers' initial lists are in the engine
	applied  bool // at least one Apply succeeded since start
	stopped  bool // reset: no more Apply
	applies  uint64
	failures uint64
	lastErr  error
	// released are addresses given back (CNI DEL, GC) whose conntrack
	// entries the run loop has still to delete.
	released map[netip.Addr]bool
	// noCtFilter: the kernel refused ForgetUnreplied once; said once.
	noCtFilter bool
}

func newPolicyCtl(eng PolicyEngine, node string, local localPodAddrs, log *slog.Logger, observe func(time.Duration)) *policyCtl {
	if observe == nil {
		observe = func(time.Duration) {}
	}
	return &policyCtl{eng: eng, node: node, local: local, log: log, observe: observe, kick: make(chan struct{}, 1),
		released: map[netip.Addr]bool{}}
}

// poke asks the run loop for an Apply.
func (c *policyCtl) poke() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// PodChanged implements kube.PolicyHandler.
func (c *policyCtl) PodChanged(p *corev1.Pod) {
	c.mu.Lock()
	c.setPodLocked(p)
	c.mu.Unlock()
	c.poke()
}

// setPodLocked turns a cached pod into the engine's input. Pods without an
// address are left out: nothing can match them.
func (c *policyCtl) setPodLocked(p *corev1.Pod) {
	pod, ok := c.enginePod(p)
	if !ok {
		c.eng.DeletePod(p.Namespace, p.Name)
		return
	}
	c.eng.SetPod(pod)
}

// enginePod converts a pod of the cache. Host-network pods are no pods for
// NetworkPolicy (their address is the node's); a finished pod has given its
// address back, and another pod may get it.
func (c *policyCtl) enginePod(p *corev1.Pod) (policy.Pod, bool) {
	if p.Spec.HostNetwork {
		return policy.Pod{}, false
	}
	local := p.Spec.NodeName != "" && p.Spec.NodeName == c.node
	var ips []netip.Addr
	if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
		for _, s := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(s.IP); err == nil && a.Is4() {
				ips = append(ips, a)
			}
		}
	}
	if local {
		ips = c.local(p.Namespace, p.Name, ips)
	}
	if len(ips) == 0 {
		return policy.Pod{}, false
	}
	return policy.Pod{Namespace: p.Namespace, Name: p.Name, IPs: ips, Labels: p.Labels, Ports: namedPorts(p), Local: local}, true
}

// namedPorts lists the pod's container ports that have a name.
func namedPorts(p *corev1.Pod) []policy.NamedPort {
	var out []policy.NamedPort
	for _, cs := range [][]corev1.Container{p.Spec.Containers, p.Spec.InitContainers} {
		for _, ct := range cs {
			for _, port := range ct.Ports {
				if port.Name == "" {
					continue
				}
				proto := port.Protocol
				if proto == "" {
					proto = corev1.ProtocolTCP
				}
				out = append(out, policy.NamedPort{Name: port.Name, Protocol: proto, Port: port.ContainerPort})
			}
		}
	}
	return out
}

// PodDeleted implements kube.PolicyHandler.
func (c *policyCtl) PodDeleted(namespace, name string) {
	c.mu.Lock()
	c.eng.DeletePod(namespace, name)
	c.mu.Unlock()
	c.poke()
}

// NamespaceChanged implements kube.PolicyHandler.
func (c *policyCtl) NamespaceChanged(ns *corev1.Namespace) {
	c.mu.Lock()
	c.eng.SetNamespace(ns.Name, ns.Labels)
	c.mu.Unlock()
	c.poke()
}

// NamespaceDeleted implements kube.PolicyHandler.
func (c *policyCtl) NamespaceDeleted(name string) {
	c.mu.Lock()
	c.eng.DeleteNamespace(name)
	c.mu.Unlock()
	c.poke()
}

// PolicyChanged implements kube.PolicyHandler.
func (c *policyCtl) PolicyChanged(np *networkingv1.NetworkPolicy) {
	c.mu.Lock()
	c.eng.SetPolicy(np)
	c.mu.Unlock()
	c.poke()
}

// PolicyDeleted implements kube.PolicyHandler.
func (c *policyCtl) PolicyDeleted(namespace, name string) {
	c.mu.Lock()
	c.eng.DeletePolicy(namespace, name)
	c.mu.Unlock()
	c.poke()
}

// Synced implements kube.PolicyHandler: the engine has the whole cluster,
// so the first Apply may replace the table a previous agent left. Until
// then that table stays as it was: never a window of allow-all.
func (c *policyCtl) Synced() {
	c.mu.Lock()
	c.synced = true
	c.mu.Unlock()
	c.poke()
}

// run applies changes in debounced batches until ctx is done; a failed
// Apply is retried.
func (c *policyCtl) run(ctx context.Context) {
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		case <-retry:
		}
		retry = nil
		// Let a burst finish: whatever arrives in the window goes into the
		// same transaction.
		select {
		case <-ctx.Done():
			return
		case <-time.After(policyDebounce):
		}
		select {
		case <-c.kick:
		default:
		}
		c.mu.Lock()
		var err error
		if c.synced && !c.stopped {
			err = c.applyLocked(ctx)
		}
		// Under the lock: an ADD that gets one of these addresses waits, so
		// its own new flows are never the ones deleted.
		c.forgetFlows(slices.Collect(maps.Keys(c.released)))
		clear(c.released)
		c.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			c.log.Warn("applying network policies, will retry", "err", err)
			retry = time.After(policyRetry)
		}
	}
}

// applyLocked programs the engine's pending changes; c.mu is held.
func (c *policyCtl) applyLocked(ctx context.Context) error {
	if c.stopped {
		return errPolicyStopped
	}
	start := time.Now()
	err := c.eng.Apply(ctx)
	c.observe(time.Since(start))
	c.applies++
	c.lastErr = err
	if err != nil {
		c.failures++
		return fmt.Errorf("apply network policies: %w", err)
	}
	if !c.applied {
		c.applied = true
		c.log.Info("network policies in place", "took", time.Since(start).Round(time.Microsecond))
	}
	return nil
}

// admit is the CNI ADD gate: once the pod's labels are known and its
// address addr (just allocated) is in the engine's sets with rules
// applied, the pod may have its network. Any error means "try again".
// A request without a pod identity is no Kubernetes pod: no policy can
// select it, so it passes. uid, when the runtime passed it, is the pod's:
// a cached pod of the same name with another UID is an older pod (deleted
// and recreated under the name), whose labels may not be this one's, so
// the gate waits for the cache to have this one.
func (c *policyCtl) admit(ctx context.Context, namespace, name, uid string, addr netip.Addr) error {
	if namespace == "" || name == "" {
		return nil
	}
	if c.src == nil {
		return kube.ErrNotSynced
	}
	// After a restart the first full list may be a moment away: wait for
	// it within the same bound.
	wctx, cancel := context.WithTimeout(ctx, policyPodWait)
	defer cancel()
	p, err := c.src.WaitPod(wctx, namespace, name, func(p *corev1.Pod) bool {
		return p.Spec.NodeName == c.node && (uid == "" || string(p.UID) == uid)
	})
	if err != nil {
		return err
	}
	pod, ok := c.enginePod(p)
	if !ok {
		pod = policy.Pod{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, Ports: namedPorts(p), Local: true}
	}
	if !slices.Contains(pod.IPs, addr) {
		pod.IPs = append(pod.IPs, addr)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.synced {
		return kube.ErrNotSynced
	}
	c.eng.SetPod(pod)
	if err := c.applyLocked(ctx); err != nil {
		return err
	}
	// Packets forwarded to addr before this Apply isolated it may wait in
	// the bridge's neighbour queue; once the pod answers ARP they would be
	// delivered past the policy, and its reply would make their flow
	// established. Drop them before the pod has its network.
	c.flushNeighbours(addr)
	// Those packets, and any that reached the bridge before, also left
	// unreplied conntrack entries; the pod's first answer would make
	// them established past its rules.
	c.forgetUnreplied(addr)
	// The address was given back a moment ago and the run loop has not
	// yet forgotten its flows: do it now, before the pod gets it.
	if c.released[addr] {
		delete(c.released, addr)
		c.forgetFlows([]netip.Addr{addr})
	}
	return nil
}

// forgetFlows deletes the conntrack entries of released addresses; a
// failure is logged (the old flows then live until conntrack times them out).
func (c *policyCtl) forgetFlows(addrs []netip.Addr) {
	if len(addrs) == 0 {
		return
	}
	if n, err := c.eng.ForgetFlows(addrs...); err != nil {
		c.log.Warn("deleting the conntrack entries of released pod addresses", "addresses", addrs, "err", err)
	} else if n > 0 {
		c.log.Debug("deleted the conntrack entries of released pod addresses", "addresses", addrs, "entries", n)
	}
}

// forgetUnreplied deletes the unreplied conntrack entries of addr; a
// failure is logged (such a flow may then pass once the pod answers).
func (c *policyCtl) forgetUnreplied(addr netip.Addr) {
	err := c.eng.ForgetUnreplied(addr)
	switch {
	case err == nil:
	case errors.Is(err, policy.ErrNoCtFilter):
		if !c.noCtFilter {
			c.noCtFilter = true
			c.log.Warn("this kernel cannot delete conntrack entries by filter: packets sent to a new pod's address before it existed may open a flow past its policy", "err", err)
		}
	default:
		c.log.Warn("deleting the unreplied conntrack entries of a new pod address", "address", addr, "err", err)
	}
}

// flushNeighbours deletes the neighbour entries of addr; a failure is logged
// (a packet queued before the isolation may then reach the pod).
func (c *policyCtl) flushNeighbours(addr netip.Addr) {
	if n, err := c.eng.FlushNeighbours(addr); err != nil {
		c.log.Warn("deleting the neighbour entries of a new pod address", "address", addr, "err", err)
	} else if n > 0 {
		c.log.Debug("deleted the neighbour entries of a new pod address", "address", addr, "entries", n)
	}
}

// releasedAddrs queues addresses given back for forgetFlows.
func (c *policyCtl) releasedAddrs(addrs []netip.Addr) {
	if len(addrs) == 0 {
		return
	}
	c.mu.Lock()
	for _, a := range addrs {
		c.released[a] = true
	}
	c.mu.Unlock()
	c.poke()
}

// refresh recomputes one local pod from the cache and the allocations,
// after an address of it was released (CNI DEL, or an ADD rolled back).
func (c *policyCtl) refresh(namespace, name string) {
	if namespace == "" || name == "" || c.src == nil {
		return
	}
	p, ok := c.src.Pod(namespace, name)
	c.mu.Lock()
	if ok {
		c.setPodLocked(p)
	} else {
		c.eng.DeletePod(namespace, name)
	}
	c.mu.Unlock()
	c.poke()
}

// stop ends enforcement for `weft reset`: the table is removed and no
// Apply puts it back.
func (c *policyCtl) stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopped = true
	return c.eng.Remove()
}

// status is GET /status/policy while enforcement is on.
func (c *policyCtl) status() api.PolicyStatus {
	c.mu.Lock()
	st := c.eng.Status()
	synced, applies, failures := c.synced, c.applies, c.failures
	c.mu.Unlock()
	in, eg := c.eng.Drops()
	out := api.PolicyStatus{
		Enabled: true, Synced: synced,
		Policies: st.Policies, LocalPods: st.LocalPods, SelectedPods: st.SelectedLocal,
		Sets: st.Sets, Rules: st.Rules,
		LastApply: st.LastApply, LastApplyTook: st.LastApplyTook, LastError: st.LastError,
		Applies: applies, ApplyFailures: failures, DropsIngress: in, DropsEgress: eg,
	}
	if !synced {
		out.Reason = "waiting for the first full list of pods, namespaces and network policies; CNI ADD answers \"try again\" until then"
	}
	return out
}

// localPodAddrs of this agent: the addresses IPAM allocated to containers
// of the pod (weft ps's table names them). A pod whose containers are not
// named there (state from before pod names were kept) keeps the status
// addresses that are allocated here to no named pod.
func (a *Agent) localPodAddrs(namespace, name string, status []netip.Addr) []netip.Addr {
	if !a.running() {
		return nil
	}
	var mine []netip.Addr
	unnamed := map[netip.Addr]bool{}
	for _, al := range a.ipam.Allocations() {
		ref, ok := a.pods.get(al.ContainerID, al.IfName)
		switch {
		case !ok:
			unnamed[al.Addr] = true
		case ref.Namespace == namespace && ref.Name == name && al.Addr.Is4():
			mine = append(mine, al.Addr)
		}
	}
	if len(mine) > 0 {
		return mine
	}
	for _, s := range status {
		if unnamed[s] {
			mine = append(mine, s)
		}
	}
	return mine
}

// nodeAddrs are this node's own addresses, whose traffic to and from its
// pods policy always allows (kubelet's probes): the overlay address on the
// bridge and the underlay address.
func (a *Agent) nodeAddrs() []netip.Addr {
	out := []netip.Addr{a.underlayAddr()}
	if h := a.HostAddr(); h.IsValid() {
		out = append(out, h)
	}
	return out
}

// startPolicy builds the policy engine for a Kubernetes agent. With
// --network-policy=false it removes the table a previous agent left, for
// clusters that run another policy engine, and returns nil.
func (a *Agent) startPolicy() (*policyCtl, error) {
	if a.dev.PolicyEngine == nil {
		if a.cfg.NetworkPolicy {
			return nil, errors.New("--network-policy: no policy engine on this (simulated) host network")
		}
		return nil, nil
	}
	eng, err := a.dev.PolicyEngine(policy.Config{
		Logger:    a.log.With("component", "policy"),
		NodeAddrs: a.nodeAddrs,
		DenyLog:   a.cfg.NetworkPolicyDenyLog,
	})
	if err != nil {
		return nil, fmt.Errorf("network policy engine: %w", err)
	}
	if !a.cfg.NetworkPolicy {
		if err := eng.Remove(); err != nil {
			a.log.Warn("--network-policy=false: removing the network policy table a previous agent left", "err", err)
		}
		a.log.Info("NetworkPolicy enforcement off (--network-policy=false)")
		return nil, nil
	}
	return newPolicyCtl(eng, a.cfg.Name, a.localPodAddrs, a.log.With("component", "policy"), a.met.observePolicyApply), nil
}

// policyStatus is GET /status/policy.
func (a *Agent) policyStatus() api.PolicyStatus {
	if a.policy != nil {
		return a.policy.status()
	}
	switch {
	case !a.cfg.Kube:
		return api.PolicyStatus{Reason: "not in Kubernetes: NetworkPolicy applies to Kubernetes pods only"}
	case !a.cfg.NetworkPolicy:
		return api.PolicyStatus{Reason: "disabled by --network-policy=false"}
	}
	return api.PolicyStatus{Reason: "starting"}
}

// admitPod runs the CNI ADD gate, if enforcement is on. existed says the
// container had its address before this request (a retried ADD): it is
// not released on failure, only a fresh allocation is.
func (a *Agent) admitPod(ctx context.Context, req api.AllocateRequest, addr netip.Addr, existed bool) error {
	if a.policy == nil {
		return nil
	}
	err := a.policy.admit(ctx, req.PodNamespace, req.PodName, req.PodUID, addr)
	if err == nil {
		return nil
	}
	a.log.Info("pod's network policy not in place yet; CNI ADD answered \"try again\"",
		"pod", req.PodNamespace+"/"+req.PodName, "address", addr, "err", err)
	if !existed {
		if rerr := a.ipam.Release(req.ContainerID, req.IfName); rerr != nil {
			a.log.Warn("releasing the address of a pod turned away", "pod", req.PodNamespace+"/"+req.PodName, "err", rerr)
		}
		a.policy.refresh(req.PodNamespace, req.PodName)
	}
	return notReady(fmt.Errorf("network policy for pod %s/%s not in place yet: %w", req.PodNamespace, req.PodName, err))
}

// hasAllocation reports whether the container interface has an address.
func (a *Agent) hasAllocation(containerID, ifName string) bool {
	for _, al := range a.ipam.Allocations() {
		if al.ContainerID == containerID && al.IfName == ifName {
			return true
		}
	}
	return false
}

// podsOf names the pods of a container's interfaces (all of them with
// ifName ""), as weft ps knows them, and their addresses.
func (a *Agent) podsOf(containerID, ifName string) (pods []podRef, addrs []netip.Addr) {
	for _, al := range a.ipam.Allocations() {
		if al.ContainerID != containerID || (ifName != "" && al.IfName != ifName) {
			continue
		}
		addrs = append(addrs, al.Addr)
		if ref, ok := a.pods.get(al.ContainerID, al.IfName); ok {
			pods = append(pods, ref)
		}
	}
	return pods, addrs
}

// allocatedAddrs is every container interface's address.
func (a *Agent) allocatedAddrs() map[podKey]netip.Addr {
	out := map[podKey]netip.Addr{}
	for _, al := range a.ipam.Allocations() {
		out[podKey{al.ContainerID, al.IfName}] = al.Addr
	}
	return out
}
