package agent

import (
	"fmt"
	"net"
	"net/http"
)

// serveHealth answers the probes: /healthz while the process is alive and
// serving, /readyz once this host can network pods.
func (a *Agent) serveHealth() (*httpServer, error) {
	ln, err := net.Listen("tcp", a.cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("--http-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready:", a.notReadyReason())
			return
		}
		fmt.Fprintln(w, "ready")
	})
	a.log.Info("health probes listening", "address", ln.Addr().String())
	return serve(ln, mux), nil
}
