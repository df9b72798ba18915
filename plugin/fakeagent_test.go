package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/api"
)

// fakeAgent serves the few API paths the shim uses on a unix socket, with a
// sequential allocator over one prefix (the first address is the gateway).
type fakeAgent struct {
	Socket string

	mu       sync.Mutex
	network  api.Network
	prefix   netip.Prefix
	routes   []string
	notReady bool
	held     map[api.Attachment]netip.Addr
	calls    map[string]int
	lastReq  api.AllocateRequest // the last allocate's request

	srv *http.Server
	ln  net.Listener
}

type attKey = api.Attachment

func newFakeAgent(t testing.TB, prefix netip.Prefix, bridge string, mtu int) *fakeAgent {
	t.Helper()
	gw := prefix.Addr().Next()
	a := &fakeAgent{
		Socket:  filepath.Join(t.TempDir(), api.SocketName),
		network: api.Network{Bridge: bridge, Gateway: gw.String(), Range: prefix.String(), MTU: mtu},
		prefix:  prefix,
		routes:  []string{"0.0.0.0/0"},
		held:    map[attKey]netip.Addr{},
		calls:   map[string]int{},
	}
	a.Start(t)
	t.Cleanup(a.Stop)
	return a
}

func (a *fakeAgent) gateway() netip.Addr { return netip.MustParseAddr(a.network.Gateway) }

// Start listens on Socket; a stopped agent can be started again.
func (a *fakeAgent) Start(t testing.TB) {
	t.Helper()
	ln, err := net.Listen("unix", a.Socket)
	if err != nil {
		t.Fatalf("fake agent listen: %v", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathNetwork, func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.calls["network"]++
		reply(w, a.network)
	})
	mux.HandleFunc("GET "+api.PathStatus, func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.calls["status"]++
		reply(w, api.Status{Name: "fake", Ready: !a.notReady})
	})
	mux.HandleFunc("GET "+api.PathContainers, func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		defer a.mu.Unlock()
		out := []api.Container{}
		for k, addr := range a.held {
			// As the real agent answers: the address without a prefix.
			out = append(out, api.Container{ContainerID: k.ContainerID, IfName: k.IfName, Address: addr.String()})
		}
		reply(w, out)
	})
	mux.HandleFunc("POST "+api.PathAllocate, a.allocate)
	mux.HandleFunc("POST "+api.PathRelease, a.release)
	mux.HandleFunc("POST "+api.PathGC, a.gc)
	a.ln = ln
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go a.srv.Serve(ln)
}

// Stop closes the listener and removes the socket: the agent is gone.
func (a *fakeAgent) Stop() {
	if a.srv != nil {
		a.srv.Close()
		a.srv = nil
	}
}

func (a *fakeAgent) SetNotReady(v bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.notReady = v
}

// Held returns a copy of the allocations.
func (a *fakeAgent) Held() map[api.Attachment]netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[api.Attachment]netip.Addr, len(a.held))
	for k, v := range a.held {
		out[k] = v
	}
	return out
}

// LastAllocate is the request of the last allocate call.
func (a *fakeAgent) LastAllocate() api.AllocateRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastReq
}

func (a *fakeAgent) Calls(name string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls[name]
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func replyErr(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(api.Error{Code: code, Message: msg})
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		replyErr(w, http.StatusBadRequest, api.CodeBadInput, err.Error())
		return false
	}
	return true
}

func (a *fakeAgent) allocate(w http.ResponseWriter, r *http.Request) {
	var req api.AllocateRequest
	if !decode(w, r, &req) {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls["allocate"]++
	a.lastReq = req
	if a.notReady {
		replyErr(w, http.StatusServiceUnavailable, api.CodeNotReady, "awaiting consensus")
		return
	}
	if req.ContainerID == "" || req.IfName == "" {
		replyErr(w, http.StatusBadRequest, api.CodeBadInput, "container_id and ifname required")
		return
	}
	k := attKey{ContainerID: req.ContainerID, IfName: req.IfName}
	addr, ok := a.held[k]
	if !ok {
		var err error
		if addr, err = a.free(); err != nil {
			replyErr(w, http.StatusConflict, api.CodeExhausted, err.Error())
			return
		}
		a.held[k] = addr
	}
	reply(w, api.AllocateResponse{
		Address: netip.PrefixFrom(addr, 32).String(),
		Gateway: a.network.Gateway,
		Routes:  a.routes,
		MTU:     a.network.MTU,
	})
}

// free is the lowest address of the prefix not held, skipping network
// address and gateway.
func (a *fakeAgent) free() (netip.Addr, error) {
	used := map[netip.Addr]bool{}
	for _, v := range a.held {
		used[v] = true
	}
	for addr := a.gateway().Next(); a.prefix.Contains(addr); addr = addr.Next() {
		if !used[addr] && a.prefix.Contains(addr.Next()) { // not the broadcast
			return addr, nil
		}
	}
	return netip.Addr{}, errors.New("prefix exhausted")
}

func (a *fakeAgent) release(w http.ResponseWriter, r *http.Request) {
	var req api.ReleaseRequest
	if !decode(w, r, &req) {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls["release"]++
	found := false
	for k := range a.held {
		if k.ContainerID == req.ContainerID && (req.IfName == "" || k.IfName == req.IfName) {
			delete(a.held, k)
			found = true
		}
	}
	if !found {
		replyErr(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("no allocation for %s/%s", req.ContainerID, req.IfName))
		return
	}
	reply(w, struct{}{})
}

func (a *fakeAgent) gc(w http.ResponseWriter, r *http.Request) {
	var req api.GCRequest
	if !decode(w, r, &req) {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls["gc"]++
	valid := map[attKey]bool{}
	for _, v := range req.Valid {
		valid[v] = true
	}
	resp := api.GCResponse{Released: []api.Attachment{}}
	for k := range a.held {
		if !valid[k] {
			delete(a.held, k)
			resp.Released = append(resp.Released, k)
		}
	}
	sort.Slice(resp.Released, func(i, j int) bool { return resp.Released[i].ContainerID < resp.Released[j].ContainerID })
	reply(w, resp)
}
