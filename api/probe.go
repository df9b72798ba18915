package api

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
)

// DefaultProbeSocket is where the DaemonSet's agent serves its probes
// (WEFT_PROBE_SOCKET, in a volume private to the pod).
const DefaultProbeSocket = "/run/weft-pod/probe.sock"

// Probe asks the agent serving the probe socket sock for path ("/healthz"
// or "/readyz") and returns the HTTP status and the first line or so of
// the answer. It is what the kubelet's exec probes run (`weft probe`,
// `weft-cni probe`), so it stays small: one connection, no keep-alive.
func Probe(ctx context.Context, sock, path string) (int, string, error) {
	cl := &http.Client{Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://weft"+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return 0, "", err
	}
	return resp.StatusCode, strings.TrimSpace(string(b)), nil
}
