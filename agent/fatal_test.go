package agent

import (
	"context"
	"errors"
	"testing"
)

func TestFailStopsWithFatalError(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := &Agent{stop: cancel}
	if a.failed() != nil {
		t.Fatal("failure before any")
	}
	boom := errors.New("tun gone")
	a.fail(boom)
	a.fail(errors.New("second"))
	if ctx.Err() == nil {
		t.Fatal("fail did not stop the agent")
	}
	err := a.failed()
	if !errors.Is(err, ErrFatal) || !errors.Is(err, boom) {
		t.Fatalf("failed() = %v, want the first failure marked fatal", err)
	}
}
