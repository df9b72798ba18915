package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/weftnet/weft/api"
)

// httpServer is a server with its listener, closed together.
type httpServer struct {
	srv *http.Server
	ln  net.Listener
}

func (s *httpServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
}

func serve(ln net.Listener, h http.Handler) *httpServer {
	s := &httpServer{ln: ln, srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}}
	go func() { _ = s.srv.Serve(ln) }()
	return s
}

// listenUnix listens on the API socket with owner-only permissions. A socket
// left by a crashed agent is replaced; one that still answers is not.
func listenUnix(path string) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", path, 500*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("another agent is already serving %s", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("local API: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("local API: %w", err)
	}
	return ln, nil
}

// maxRequest bounds API request bodies; the largest legitimate one is a GC
// list of a few thousand attachments.
const maxRequest = 4 << 20

func (a *Agent) serveAPI() (*httpServer, error) {
	path := api.SocketPath(a.cfg.RunDir)
	ln, err := listenUnix(path)
	if err != nil {
		return nil, err
	}
	a.log.Info("local API listening", "socket", path)
	return serve(ln, a.apiHandler()), nil
}

// apiHandler routes the local API. Every handler returns JSON; errors carry
// an api.Error with a stable code.
type route = func(path string, f func(r *http.Request) (any, error))

func (a *Agent) apiHandler() http.Handler {
	mux := http.NewServeMux()
	get := func(path string, f func(r *http.Request) (any, error)) {
		mux.HandleFunc("GET "+path, func(w http.ResponseWriter, r *http.Request) {
			v, err := f(r)
			reply(w, v, err)
		})
	}
	post := func(path string, f func(r *http.Request) (any, error)) {
		mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
			r.Body = http.MaxBytesReader(w, r.Body, maxRequest)
			v, err := f(r)
			reply(w, v, err)
		})
	}
	get(api.PathStatus, func(*http.Request) (any, error) { return a.status(), nil })
	get(api.PathPeers, func(*http.Request) (any, error) { return a.peers(), nil })
	get(api.PathTargets, func(*http.Request) (any, error) { return a.targets(), nil })
	get(api.PathConnections, func(*http.Request) (any, error) { return a.connections(), nil })
	get(api.PathReport, func(*http.Request) (any, error) { return a.report(), nil })
	get(api.PathMesh, func(*http.Request) (any, error) { return a.meshHealth() })
	get(api.PathPolicy, func(*http.Request) (any, error) { return a.policyStatus(), nil })
	post(api.PathConnect, func(r *http.Request) (any, error) {
		var req api.PeersRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		if !a.running() {
			return nil, notReady(errNoMesh)
		}
		if err := a.mesh.Connect(req.Peers); err != nil {
			return nil, badRequest(err)
		}
		return struct{}{}, nil
	})
	post(api.PathForget, func(r *http.Request) (any, error) {
		var req api.PeersRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		if !a.running() {
			return nil, notReady(errNoMesh)
		}
		if err := a.mesh.Forget(req.Peers); err != nil {
			return nil, badRequest(err)
		}
		return struct{}{}, nil
	})
	a.ipamRoutes(get, post)
	return mux
}

func (a *Agent) peers() []api.Peer {
	if !a.running() {
		return []api.Peer{}
	}
	return apiPeers(a.mesh.Peers())
}

func (a *Agent) targets() []string {
	if !a.running() {
		return []string{}
	}
	t := a.mesh.Targets()
	if t == nil {
		t = []string{}
	}
	return t
}

func (a *Agent) report() api.Report {
	return api.Report{
		Status:      a.status(),
		Peers:       a.peers(),
		Connections: a.connections(),
		IPAM:        a.ipamStatus(),
		Targets:     a.targets(),
		Containers:  a.containers(),
		Mesh:        a.meshReport(),
		Policy:      new(a.policyStatus()),
	}
}

func (a *Agent) meshReport() *api.MeshHealth {
	m, err := a.meshHealth()
	if err != nil {
		return nil
	}
	return &m
}

// apiErr carries an HTTP status and a stable code to reply.
type apiErr struct {
	status int
	code   string
	err    error
}

func (e *apiErr) Error() string { return e.err.Error() }
func (e *apiErr) Unwrap() error { return e.err }

func badRequest(err error) error { return &apiErr{http.StatusBadRequest, api.CodeBadInput, err} }
func notReady(err error) error   { return &apiErr{http.StatusServiceUnavailable, api.CodeNotReady, err} }
func notFound(err error) error   { return &apiErr{http.StatusNotFound, api.CodeNotFound, err} }
func conflict(err error) error   { return &apiErr{http.StatusConflict, api.CodeConflict, err} }
func exhausted(err error) error {
	return &apiErr{http.StatusInsufficientStorage, api.CodeExhausted, err}
}

// decode reads a JSON request body strictly: unknown fields and trailing
// data are errors that name what was wrong.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest(fmt.Errorf("request body: %w", err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return badRequest(errors.New("request body: trailing data after the JSON value"))
	}
	return nil
}

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		ae := &apiErr{http.StatusInternalServerError, api.CodeInternal, err}
		errors.As(err, &ae)
		w.WriteHeader(ae.status)
		_ = json.NewEncoder(w).Encode(api.Error{Code: ae.code, Message: err.Error()})
		return
	}
	_ = json.NewEncoder(w).Encode(v)
}
