// Package childproc starts helper processes that die with the test binary.
//
// Test harnesses start agents, kubelets and API servers with
// Pdeathsig=SIGKILL so that a panicking test leaves nothing behind. The
// kernel, however, ties that signal to the *thread* that forked the child,
// not to the process: when that thread exits, the child is killed. Go ends a
// thread when a goroutine that locked it (runtime.LockOSThread, as every
// network-namespace switch does) returns without unlocking, and any thread
// may earlier have run an unrelated goroutine's fork. So a namespace helper
// finishing could SIGKILL a whole simulated node. Start forks every child
// from one thread that is locked for the life of the process and never
// exits, which keeps Pdeathsig's meaning: "the test binary is gone".
package childproc

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

type request struct {
	cmd  *exec.Cmd
	done chan error
}

var (
	once sync.Once
	reqs chan request
)

// spawner owns its thread forever: it is locked and never returns, so the
// runtime never ends the thread the children's Pdeathsig is tied to.
func spawner() {
	runtime.LockOSThread()
	for r := range reqs {
		r.done <- r.cmd.Start()
	}
}

// Start sets Pdeathsig=SIGKILL on cmd (keeping its other SysProcAttr fields)
// and starts it from the spawner thread. Wait for the command as usual.
func Start(cmd *exec.Cmd) error {
	once.Do(func() {
		reqs = make(chan request)
		go spawner()
	})
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	r := request{cmd: cmd, done: make(chan error, 1)}
	reqs <- r
	return <-r.done
}
