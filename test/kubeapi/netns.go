package kubeapi

import (
	"context"
	"net"

	"github.com/weftnet/weft/internal/netnstest"
)

// DialContext dials from inside the apiserver's namespace (from the test's
// own namespace when it has none). It fits http.Transport.DialContext and
// rest.Config.Dial.
func (s *APIServer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := netnstest.Do(s.Netns, func() error {
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
	err := netnstest.Do(ns, func() error {
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
