package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"time"
)

// ErrUnavailable wraps every failure to reach the agent at all (no socket, refused,
// timed out), as opposed to an answer that says no. The CNI shim maps it to
// "try again later".
var ErrUnavailable = errors.New("agent not reachable")

// APIError is a non-2xx answer from the agent.
type APIError struct {
	Status int
	Error_ Error
}

func (e *APIError) Error() string {
	return fmt.Sprintf("agent answered %d %s: %s", e.Status, e.Error_.Code, e.Error_.Message)
}

// Code returns the stable error code of err if it is an APIError, else "".
func Code(err error) string {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Error_.Code
	}
	return ""
}

// Client talks to one agent over its unix socket.
type Client struct {
	Socket string
	http   *http.Client
}

// SocketPath returns the socket inside a run dir.
func SocketPath(runDir string) string { return filepath.Join(runDir, SocketName) }

// NewClient returns a client of the agent listening on socket. Every call is also
// bounded by its context; timeout bounds a call whose context has no deadline.
func NewClient(socket string, timeout time.Duration) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}
	return &Client{Socket: socket, http: &http.Client{Transport: tr, Timeout: timeout}}
}

// Do sends in (nil for GET) to path and decodes the answer into out (may be nil).
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s request: %w", path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://weft"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w at %s: %v", ErrUnavailable, c.Socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%w at %s: reading answer: %v", ErrUnavailable, c.Socket, err)
	}
	if resp.StatusCode/100 != 2 {
		ae := &APIError{Status: resp.StatusCode}
		if json.Unmarshal(data, &ae.Error_) != nil || ae.Error_.Code == "" {
			ae.Error_ = Error{Code: CodeInternal, Message: string(bytes.TrimSpace(data))}
		}
		return ae
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode %s answer: %w", path, err)
	}
	return nil
}

func (c *Client) get(ctx context.Context, path string, out any) error {
	return c.Do(ctx, http.MethodGet, path, nil, out)
}

func (c *Client) post(ctx context.Context, path string, in, out any) error {
	return c.Do(ctx, http.MethodPost, path, in, out)
}

func (c *Client) Status(ctx context.Context) (s Status, err error) {
	return s, c.get(ctx, PathStatus, &s)
}
func (c *Client) Peers(ctx context.Context) (p []Peer, err error) {
	return p, c.get(ctx, PathPeers, &p)
}
func (c *Client) Connections(ctx context.Context) (p []Connection, err error) {
	return p, c.get(ctx, PathConnections, &p)
}
func (c *Client) IPAM(ctx context.Context) (s IPAMStatus, err error) {
	return s, c.get(ctx, PathIPAM, &s)
}
func (c *Client) Targets(ctx context.Context) (t []string, err error) {
	return t, c.get(ctx, PathTargets, &t)
}
func (c *Client) Report(ctx context.Context) (r Report, err error) {
	return r, c.get(ctx, PathReport, &r)
}
func (c *Client) Containers(ctx context.Context) (cs []Container, err error) {
	return cs, c.get(ctx, PathContainers, &cs)
}
func (c *Client) Network(ctx context.Context) (n Network, err error) {
	return n, c.get(ctx, PathNetwork, &n)
}
func (c *Client) Connect(ctx context.Context, peers []string) error {
	return c.post(ctx, PathConnect, PeersRequest{Peers: peers}, nil)
}
func (c *Client) Forget(ctx context.Context, peers []string) error {
	return c.post(ctx, PathForget, PeersRequest{Peers: peers}, nil)
}
func (c *Client) Rmpeer(ctx context.Context, name string) (r RmpeerResponse, err error) {
	return r, c.post(ctx, PathRmpeer, RmpeerRequest{Name: name}, &r)
}
func (c *Client) Reset(ctx context.Context) error {
	return c.post(ctx, PathReset, struct{}{}, nil)
}
func (c *Client) Allocate(ctx context.Context, req AllocateRequest) (r AllocateResponse, err error) {
	return r, c.post(ctx, PathAllocate, req, &r)
}
func (c *Client) Claim(ctx context.Context, req AllocateRequest) (r AllocateResponse, err error) {
	return r, c.post(ctx, PathClaim, req, &r)
}
func (c *Client) Release(ctx context.Context, req ReleaseRequest) error {
	return c.post(ctx, PathRelease, req, nil)
}
func (c *Client) ReportCNITiming(ctx context.Context, t CNITiming) error {
	return c.post(ctx, PathCNITiming, t, nil)
}
func (c *Client) Mesh(ctx context.Context) (m MeshHealth, err error) {
	return m, c.get(ctx, PathMesh, &m)
}
func (c *Client) Policy(ctx context.Context) (p PolicyStatus, err error) {
	return p, c.get(ctx, PathPolicy, &p)
}
func (c *Client) GC(ctx context.Context, req GCRequest) (r GCResponse, err error) {
	return r, c.post(ctx, PathGC, req, &r)
}
