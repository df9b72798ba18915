// Package netnstest runs code inside a network namespace, for tests and test
// beds: sockets, TUN devices and child processes created there belong to it.
package netnstest

import (
	"fmt"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
)

// Do runs fn on an OS thread switched into the namespace ns: a name under
// /run/netns, or a path when it contains a slash. "" runs fn in the caller's
// own namespace.
//
// fn runs on a fresh goroutine that owns its thread for the duration. If
// switching back fails, the thread stays locked and the runtime discards it
// when the goroutine ends, so no other goroutine ever runs in ns by mistake.
// fn must therefore not call t.Fatal; it returns an error instead.
func Do(ns string, fn func() error) error {
	if ns == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("own network namespace: %w", err)
			return
		}
		defer orig.Close()
		var target netns.NsHandle
		if strings.Contains(ns, "/") {
			target, err = netns.GetFromPath(ns)
		} else {
			target, err = netns.GetFromName(ns)
		}
		if err != nil {
			errc <- fmt.Errorf("network namespace %s: %w", ns, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("enter network namespace %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("leave network namespace %s: %w (after: %v)", ns, err, ferr)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
