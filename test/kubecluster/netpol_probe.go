package kubecluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netnstest"
)

// Netns is a thread of this process parked inside a network namespace (a
// pod's, a node's). Sockets are created there, then used from any goroutine:
// a socket belongs to the namespace it was made in, whichever thread later
// connects, sends or reads on it. That lets the NetworkPolicy checks fire
// many concurrent, precisely timed probes from inside a pod without a tool
// in the pod's image or one `nsenter` per probe.
type Netns struct {
	Path string
	reqs chan func()
	done chan struct{}
}

// EnterNetns starts the parked thread in the namespace at path.
func EnterNetns(path string) (*Netns, error) {
	n := &Netns{Path: path, reqs: make(chan func()), done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: when this goroutine returns, the runtime ends
		// the thread instead of reusing it in the wrong namespace.
		runtime.LockOSThread()
		h, err := netns.GetFromPath(path)
		if err != nil {
			errc <- fmt.Errorf("network namespace %s: %w", path, err)
			return
		}
		err = netns.Set(h)
		h.Close()
		if err != nil {
			errc <- fmt.Errorf("enter %s: %w", path, err)
			return
		}
		errc <- nil
		for {
			select {
			case fn := <-n.reqs:
				fn()
			case <-n.done:
				return
			}
		}
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return n, nil
}

// Run runs fn on the parked thread (inside the namespace) and waits.
func (n *Netns) Run(fn func() error) error {
	errc := make(chan error, 1)
	select {
	case n.reqs <- func() { errc <- fn() }:
	case <-n.done:
		return errors.New("netns closed")
	}
	return <-errc
}

// Close ends the parked thread.
func (n *Netns) Close() {
	select {
	case <-n.done:
	default:
		close(n.done)
	}
}

// errNoAnswer is a probe that got no connection within its timeout: what a
// policy that drops looks like.
var errNoAnswer = errors.New("no answer")

// errRejected is a connect refused or unreachable (a RST or an ICMP error).
var errRejected = errors.New("rejected")

// Connect opens a TCP connection from the namespace to addr and reads the
// one-line answer of a netprobe server. A connect that does not complete
// within timeout is errNoAnswer; a refused one is another error.
func (n *Netns) Connect(ctx context.Context, addr netip.AddrPort, timeout time.Duration) (string, error) {
	var fd int
	if err := n.Run(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		return "", fmt.Errorf("socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "probe")
	defer f.Close()
	sa := &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return "", fmt.Errorf("connect %s: %w: %w", addr, errRejected, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			return "", fmt.Errorf("%s: %w within %s", addr, errNoAnswer, timeout)
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		k, err := unix.Poll(pfd, int(min(left, 50*time.Millisecond)/time.Millisecond)+1)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return "", fmt.Errorf("poll: %w", err)
		}
		if k > 0 {
			break
		}
	}
	if soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil {
		return "", err
	} else if soerr != 0 {
		return "", fmt.Errorf("connect %s: %w: %w", addr, errRejected, unix.Errno(soerr))
	}
	// Connected: the rest is ordinary Go networking on a dup of the socket.
	conn, err := net.FileConn(f)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(deadline.Add(time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("%s: read answer: %w", addr, err)
	}
	return strings.TrimSpace(line), nil
}

// Pinger sends ICMP echo requests from a namespace to a set of addresses at
// a fixed interval and counts the echo replies per source address. One raw
// socket serves all targets.
type Pinger struct {
	conn *icmp.PacketConn
	id   int

	mu      sync.Mutex
	targets []netip.Addr
	sent    map[netip.Addr]int
	replies map[netip.Addr]int
	first   map[netip.Addr]time.Time

	stop chan struct{}
	wg   sync.WaitGroup
}

// StartPinger opens the socket inside ns and pings targets every interval
// until Stop.
func StartPinger(ns *Netns, targets []netip.Addr, interval time.Duration) (*Pinger, error) {
	p := &Pinger{id: os.Getpid() & 0xffff, targets: targets, sent: map[netip.Addr]int{},
		replies: map[netip.Addr]int{}, first: map[netip.Addr]time.Time{}, stop: make(chan struct{})}
	if err := ns.Run(func() error {
		var err error
		p.conn, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		return nil, fmt.Errorf("icmp socket in %s: %w", ns.Path, err)
	}
	p.wg.Add(2)
	go p.send(interval)
	go p.receive()
	return p, nil
}

func (p *Pinger) send(interval time.Duration) {
	defer p.wg.Done()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for seq := 0; ; seq++ {
		p.mu.Lock()
		targets := p.targets
		p.mu.Unlock()
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: p.id, Seq: seq & 0xffff, Data: []byte("weft-netpol")}}
		b, _ := msg.Marshal(nil)
		for _, t := range targets {
			if _, err := p.conn.WriteTo(b, &net.IPAddr{IP: t.AsSlice()}); err == nil {
				p.mu.Lock()
				p.sent[t]++
				p.mu.Unlock()
			}
		}
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
	}
}

func (p *Pinger) receive() {
	defer p.wg.Done()
	buf := make([]byte, 1500)
	for {
		_ = p.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		k, from, err := p.conn.ReadFrom(buf)
		select {
		case <-p.stop:
			return
		default:
		}
		if err != nil {
			continue
		}
		msg, err := icmp.ParseMessage(1, buf[:k])
		if err != nil || msg.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		echo, ok := msg.Body.(*icmp.Echo)
		ip, ok2 := from.(*net.IPAddr)
		if !ok || !ok2 || echo.ID != p.id {
			continue
		}
		a, _ := netip.AddrFromSlice(ip.IP.To4())
		p.mu.Lock()
		p.replies[a]++
		if _, seen := p.first[a]; !seen {
			p.first[a] = time.Now()
		}
		p.mu.Unlock()
	}
}

// Stop ends the probing and closes the socket.
func (p *Pinger) Stop() {
	select {
	case <-p.stop:
		return
	default:
	}
	close(p.stop)
	p.wg.Wait()
	p.conn.Close()
}

// Counts returns the requests sent to a and the replies from it, and when
// the first reply came.
func (p *Pinger) Counts(a netip.Addr) (sent, replies int, first time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent[a], p.replies[a], p.first[a]
}

// podNetnsPath finds the network namespace of the pod with address ip on
// node n, through the node's pod processes: "/proc/PID/ns/net".
func podNetnsPath(n *Node, ip string) (string, error) {
	want, err := netip.ParseAddr(ip)
	if err != nil {
		return "", err
	}
	seen := map[string]bool{}
	for _, pid := range podProcesses(n) {
		ns := "/proc/" + strconv.Itoa(pid) + "/ns/net"
		id, err := os.Readlink(ns)
		if err != nil || seen[id] {
			continue
		}
		seen[id] = true
		found := false
		err = netnstest.Do(ns, func() error {
			addrs, err := net.InterfaceAddrs()
			if err != nil {
				return err
			}
			for _, a := range addrs {
				if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr() == want {
					found = true
				}
			}
			return nil
		})
		if err == nil && found {
			return ns, nil
		}
	}
	return "", fmt.Errorf("no network namespace on %s holds %s", n.Name, ip)
}
