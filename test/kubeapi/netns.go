package kubeapi

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netns"
)

// inNetns runs f on an OS thread that has entered namespace ns ("" = run f
// here). Sockets f creates stay in ns after the thread switches back, which
// is how the test process talks to an apiserver that only listens inside a
// test-bed namespace.
func inNetns(ns string, f func() error) error {
	if ns == "" {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		// The goroutine owns the thread while it is in the other namespace.
		// If switching back fails the thread stays locked and is discarded
		// when the goroutine ends, so no other goroutine ever runs in ns.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("kubeapi: own network namespace: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns)
		if err != nil {
			errc <- fmt.Errorf("kubeapi: network namespace %s: %w", ns, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("kubeapi: enter network namespace %s: %w", ns, err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("kubeapi: leave network namespace %s: %w", ns, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DialContext dials from inside the apiserver's namespace (from the test's
// own namespace when it has none). It fits http.Transport.DialContext and
// rest.Config.Dial.
func (s *APIServer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := inNetns(s.Netns, func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// freePorts finds n free TCP ports on ip inside namespace ns.
func freePorts(ns, ip string, n int) ([]int, error) {
	var ports []int
	err := inNetns(ns, func() error {
		var ls []net.Listener
		defer func() {
			for _, l := range ls {
				l.Close()
			}
		}()
		for range n {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
			if err != nil {
				return err
			}
			ls = append(ls, l)
			ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		}
		return nil
	})
	return ports, err
}
