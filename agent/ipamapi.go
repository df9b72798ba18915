package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/ipam"
	"github.com/weftnet/weft/router/crypto"
)

// allocateTimeout bounds an allocation that waits for a donation when the
// caller (the CNI shim) gave no deadline of its own.
const allocateTimeout = 20 * time.Second

// ipamRoutes serves address management to the CNI shim and the CLI.
func (a *Agent) ipamRoutes(get, post route) {
	get(api.PathIPAM, func(*http.Request) (any, error) {
		if !a.running() {
			return nil, notReady(errNoMesh)
		}
		return apiIPAMStatus(a.ipam.Status()), nil
	})
	get(api.PathContainers, func(*http.Request) (any, error) { return a.containers(), nil })
	get(api.PathNetwork, func(*http.Request) (any, error) {
		gw, err := a.gateway()
		if err != nil {
			return nil, err
		}
		return api.Network{Bridge: a.cfg.Bridge, Gateway: gw.String(), Range: a.cfg.Range.String(), MTU: a.dp.mtu}, nil
	})
	allocate := func(claim bool) func(r *http.Request) (any, error) {
		return func(r *http.Request) (any, error) {
			var req api.AllocateRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			if req.ContainerID == "" || req.IfName == "" {
				return nil, badRequest(errors.New("container_id and ifname are required"))
			}
			if req.ContainerID == ipam.HostContainerID {
				return nil, badRequest(fmt.Errorf("container ID %q is reserved", ipam.HostContainerID))
			}
			gw, err := a.gateway()
			if err != nil {
				return nil, err
			}
			ctx, cancel := context.WithTimeout(r.Context(), allocateTimeout)
			defer cancel()
			a.pendingAllocs.Add(1)
			defer a.pendingAllocs.Add(-1)
			var addr netip.Addr
			existed := a.hasAllocation(req.ContainerID, req.IfName)
			start := time.Now()
			if claim {
				if addr, err = netip.ParseAddr(req.Address); err != nil {
					return nil, badRequest(fmt.Errorf("address %q: %w", req.Address, err))
				}
				err = a.ipam.Claim(ctx, req.ContainerID, req.IfName, req.Netns, addr)
			} else {
				addr, err = a.ipam.Allocate(ctx, req.ContainerID, req.IfName, req.Netns)
				a.met.observeAllocate(start)
			}
			if err != nil {
				return nil, ipamError(err)
			}
			if req.PodName != "" {
				a.pods.set(podRef{ContainerID: req.ContainerID, IfName: req.IfName, Namespace: req.PodNamespace, Name: req.PodName},
					a.allocated)
			}
			// No unprotected first packet: the pod's rules are in the
			// kernel before the shim gives it its network.
			if err := a.admitPod(ctx, req, addr, existed); err != nil {
				return nil, err
			}
			return api.AllocateResponse{
				Address: netip.PrefixFrom(addr, 32).String(),
				Gateway: gw.String(),
				Routes:  []string{"0.0.0.0/0"},
				MTU:     a.dp.mtu,
			}, nil
		}
	}
	post(api.PathAllocate, allocate(false))
	post(api.PathClaim, allocate(true))
	post(api.PathRelease, func(r *http.Request) (any, error) {
		var req api.ReleaseRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		if req.ContainerID == "" || req.ContainerID == ipam.HostContainerID {
			return nil, badRequest(errors.New("container_id missing or reserved"))
		}
		if !a.running() {
			return nil, notReady(errNoMesh)
		}
		// The shim releases after the interface is gone; the pod's address
		// leaves the policy sets with it, before another pod can get it.
		var pods []podRef
		if a.policy != nil {
			pods = a.podsOf(req.ContainerID, req.IfName)
		}
		err := a.ipam.Release(req.ContainerID, req.IfName)
		for _, p := range pods {
			a.policy.refresh(p.Namespace, p.Name)
		}
		return struct{}{}, ipamError(err)
	})
	post(api.PathGC, func(r *http.Request) (any, error) {
		var req api.GCRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		if !a.running() {
			return nil, notReady(errNoMesh)
		}
		// This host's own address is never garbage.
		valid := []ipam.Attachment{{ContainerID: ipam.HostContainerID, IfName: a.cfg.Bridge}}
		for _, v := range req.Valid {
			valid = append(valid, ipam.Attachment{ContainerID: v.ContainerID, IfName: v.IfName})
		}
		released, err := a.ipam.GC(valid)
		if err != nil {
			return nil, ipamError(err)
		}
		resp := api.GCResponse{Released: []api.Attachment{}}
		for _, r := range released {
			resp.Released = append(resp.Released, api.Attachment{ContainerID: r.ContainerID, IfName: r.IfName})
			if ref, ok := a.pods.get(r.ContainerID, r.IfName); ok && a.policy != nil {
				a.policy.refresh(ref.Namespace, ref.Name)
			}
		}
		return resp, nil
	})
	post(api.PathRmpeer, func(r *http.Request) (any, error) {
		var req api.RmpeerRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		if !a.running() {
			return nil, notReady(errNoMesh)
		}
		if req.Name == a.cfg.Name {
			return nil, badRequest(errors.New("rmpeer names another peer; to remove this one, run `weft reset` here"))
		}
		n, err := a.ipam.RemovePeer(req.Name)
		if err != nil {
			return nil, ipamError(err)
		}
		// The host is gone for good: a host of that name may come back
		// reinstalled, with a new signing key.
		a.ipam.ForgetPeer(req.Name)
		if err := a.pins.Forget(req.Name); err != nil {
			a.log.Warn("could not clear the pinned signing key of a removed peer", "peer", req.Name, "err", err)
		}
		a.log.Info("took over a removed peer's addresses", "peer", req.Name, "addresses", n)
		return api.RmpeerResponse{Reclaimed: n}, nil
	})
	post(api.PathCNITiming, func(r *http.Request) (any, error) {
		var t api.CNITiming
		if err := decode(r, &t); err != nil {
			return nil, err
		}
		a.met.observeCNI(t)
		return struct{}{}, nil
	})
	post(api.PathReset, func(r *http.Request) (any, error) {
		return struct{}{}, a.reset(r.Context())
	})
}

// gateway is this host's overlay address, or not-ready before it has one.
func (a *Agent) gateway() (netip.Addr, error) {
	if !a.running() {
		return netip.Addr{}, notReady(errNoMesh)
	}
	if a.dp == nil {
		return netip.Addr{}, notReady(errors.New("this agent runs without a data plane"))
	}
	gw := a.HostAddr()
	// Also once it has one: while the host network is broken (the bridge
	// deleted, say) and not yet repaired, the shim answers "try again" (CNI
	// code 11) rather than failing the pod for good.
	if why := a.notReadyReason(); !gw.IsValid() || why != "" {
		return gw, notReady(fmt.Errorf("not ready: %s", why))
	}
	return gw, nil
}

// ipamError maps IPAM's sentinel errors to API codes.
func ipamError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ipam.ErrNotReady), errors.Is(err, context.DeadlineExceeded):
		return notReady(err)
	case errors.Is(err, ipam.ErrExhausted):
		return exhausted(err)
	case errors.Is(err, ipam.ErrNotFound):
		return notFound(err)
	case errors.Is(err, ipam.ErrConflict), errors.Is(err, ipam.ErrPeerAlive), errors.Is(err, ipam.ErrPeerSuspect):
		return conflict(err)
	}
	return err
}

func (a *Agent) ipamStatus() *api.IPAMStatus {
	if !a.running() {
		return nil
	}
	s := apiIPAMStatus(a.ipam.Status())
	return &s
}

func (a *Agent) containers() []api.Container {
	out := []api.Container{}
	if !a.running() {
		return out
	}
	for _, al := range a.ipam.Allocations() {
		c := api.Container{ContainerID: al.ContainerID, IfName: al.IfName,
			Address: al.Addr.String(), Netns: al.Netns, Created: al.Created}
		if pod, ok := a.pods.get(al.ContainerID, al.IfName); ok {
			c.PodNamespace, c.PodName = pod.Namespace, pod.Name
		}
		out = append(out, c)
	}
	return out
}

// allocated lists the container interfaces that have an address here.
func (a *Agent) allocated() map[podKey]bool {
	out := map[podKey]bool{}
	for _, al := range a.ipam.Allocations() {
		out[podKey{al.ContainerID, al.IfName}] = true
	}
	return out
}

// reset hands this host's ranges to a live peer, removes the host network
// and the state, and stops the agent.
func (a *Agent) reset(ctx context.Context) error {
	if !a.running() {
		return notReady(errNoMesh)
	}
	ctx, cancel := context.WithTimeout(ctx, 50*time.Second)
	defer cancel()
	if alive := a.mesh.AliveNames(); len(alive) <= 1 {
		// The last host: nobody to hand over to; the ring ends with it.
		a.log.Warn("reset: no live peer to take this host's ranges; they are dropped with its state")
		if err := a.ipam.Forget(); err != nil {
			return fmt.Errorf("remove this host's address state: %w", err)
		}
	} else if err := a.ipam.HandOver(ctx); err != nil {
		return ipamError(fmt.Errorf("hand this host's ranges to a live peer: %w", err))
	}
	if a.dp != nil {
		if err := a.teardownHost(); err != nil {
			a.log.Warn("removing the host network", "err", err)
		}
		a.removeFastPath()
	}
	if a.policy != nil {
		if err := a.policy.stop(); err != nil {
			a.log.Warn("reset: removing the network policy table", "err", err)
		}
	}
	if a.dp != nil && a.dp.crypto != nil {
		// A new identity next time: nothing of this host's past remains.
		_ = os.Remove(filepath.Join(a.cfg.StateDir, crypto.IdentityFile))
	}
	a.log.Info("reset: ranges handed over, host network removed; stopping")
	a.resetting.Store(true)
	a.stop()
	return nil
}
