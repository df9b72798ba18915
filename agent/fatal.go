package agent

import (
	"errors"
	"fmt"
)

// ErrFatal marks the error Run returns when a part the agent cannot run
// without failed (the data plane, the host network). `weft launch` then exits
// non-zero, so that systemd (Restart=on-failure) or the kubelet restarts it;
// a clean stop (SIGTERM, `weft reset`) returns nil and exits 0.
var ErrFatal = errors.New("fatal failure")

// fail records the first fatal failure and stops the agent.
func (a *Agent) fail(err error) {
	a.mu.Lock()
	if a.failure == nil {
		a.failure = fmt.Errorf("%w: %w", ErrFatal, err)
	}
	stop := a.stop
	a.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// failed is the recorded fatal failure, nil after a clean stop.
func (a *Agent) failed() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.failure
}
