package childproc

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// startOnDoomedThread starts cmd with start from a goroutine that locks its
// thread and returns without unlocking, so the runtime ends that thread. It
// returns once the thread is gone.
func startOnDoomedThread(t *testing.T, start func(*exec.Cmd) error, cmd *exec.Cmd) {
	t.Helper()
	var tid int
	for {
		tidc := make(chan int, 1)
		errc := make(chan error, 1)
		go func() {
			runtime.LockOSThread()
			if syscall.Gettid() == os.Getpid() {
				// The main thread is never ended, only parked: try
				// another goroutine, which lands on another thread.
				runtime.UnlockOSThread()
				tidc <- 0
				return
			}
			// Never unlocked: the thread ends with the goroutine.
			tidc <- syscall.Gettid()
			errc <- start(cmd)
		}()
		if tid = <-tidc; tid == 0 {
			continue
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		break
	}
	task := fmt.Sprintf("/proc/self/task/%d", tid)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(task); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread %d did not end", tid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitExit(cmd *exec.Cmd, within time.Duration) (exited bool, err error) {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return true, err
	case <-time.After(within):
		return false, nil
	}
}

// The hazard this package exists for: a child whose forking thread ends is
// killed, though the process that started it lives on.
func TestPdeathsigFollowsTheThread(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	startOnDoomedThread(t, (*exec.Cmd).Start, cmd)
	exited, err := waitExit(cmd, 10*time.Second)
	if !exited {
		_ = cmd.Process.Kill()
		t.Skip("this kernel does not deliver Pdeathsig on thread exit; nothing to guard against")
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended otherwise than by SIGKILL: %v", err)
	}
}

// Start forks from its own thread, so the caller's thread ending does not
// kill the child.
func TestStartSurvivesCallerThreadExit(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	startOnDoomedThread(t, Start, cmd)
	if cmd.SysProcAttr == nil || cmd.SysProcAttr.Pdeathsig != syscall.SIGKILL {
		t.Fatal("Start did not set Pdeathsig")
	}
	// A SIGKILL from the dead thread would arrive at once; give it a
	// generous moment to show, then prove the child still runs.
	if exited, _ := waitExit(cmd, 500*time.Millisecond); exited {
		t.Fatalf("child died when the caller's thread ended: %v", cmd.ProcessState)
	}
	_ = cmd.Process.Kill()
}
