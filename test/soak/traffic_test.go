package soak

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/weftnet/weft/internal/netnstest"
	"github.com/weftnet/weft/test/testbed"
)

// Load: every pod sends streamRate datagrams a second to every other pod of
// its mesh, and pings one pod of its mesh on another host pingRate times a
// second. Fixed rates, so the load is bounded whatever happens.
const (
	streamRate  = 10
	pingRate    = 5
	streamPort  = 7777
	payloadSize = 200
)

// flow is one directed stream of marked packets; lastRx is when its last
// packet arrived (unix nanoseconds), written by the receiving side.
type flow struct {
	name     string
	src, dst *pod
	icmp     bool
	lastRx   atomic.Int64
	lastTx   atomic.Int64 // last packet the sender got out (unix nanoseconds)
	rx, tx   atomic.Uint64
	badSrc   atomic.Uint64 // arrived with another source address (NAT)
	seq      uint32
	idx      uint32
	hostSide bool // src and dst on one host
}

// pod is a test bed pod with its sockets.
type pod struct {
	*testbed.Pod
	mesh        *mesh
	containerID string
	udp         *net.UDPConn
	raw         *net.IPConn
	pingID      int
}

// traffic drives and watches every flow.
type traffic struct {
	flows []*flow
	pods  []*pod
	wg    sync.WaitGroup
}

// open creates p's sockets inside its namespace; they stay bound to it.
func (p *pod) open() error {
	return netnstest.Do(p.Netns, func() error {
		u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: p.Addr.AsSlice(), Port: streamPort})
		if err != nil {
			return fmt.Errorf("pod %s: udp: %w", p.Netns, err)
		}
		c, err := net.ListenPacket("ip4:icmp", p.Addr.String())
		if err != nil {
			u.Close()
			return fmt.Errorf("pod %s: icmp: %w", p.Netns, err)
		}
		p.udp, p.raw = u, c.(*net.IPConn)
		return nil
	})
}

// newTraffic opens the sockets of every pod and lays out the flows: every
// ordered pair of pods of one mesh streams UDP, and every pod pings the
// next pod of its mesh that lives on another host.
func newTraffic(meshes []*mesh) (*traffic, error) {
	tr := &traffic{}
	for _, m := range meshes {
		for i, src := range m.pods {
			if err := src.open(); err != nil {
				tr.close()
				return nil, err
			}
			tr.pods = append(tr.pods, src)
			src.pingID = len(tr.pods)
			for _, dst := range m.pods {
				if dst != src {
					tr.add(&flow{src: src, dst: dst, hostSide: src.Host == dst.Host,
						name: fmt.Sprintf("udp %s/%s -> %s/%s", src.Host.Name, src.Name, dst.Host.Name, dst.Name)})
				}
			}
			for k := 1; k < len(m.pods); k++ {
				dst := m.pods[(i+k)%len(m.pods)]
				if dst.Host != src.Host {
					tr.add(&flow{src: src, dst: dst, icmp: true,
						name: fmt.Sprintf("ping %s/%s -> %s/%s", src.Host.Name, src.Name, dst.Host.Name, dst.Name)})
					break
				}
			}
		}
	}
	return tr, nil
}

func (tr *traffic) add(f *flow) {
	f.idx = uint32(len(tr.flows))
	tr.flows = append(tr.flows, f)
}

// start runs the senders and receivers until ctx ends.
func (tr *traffic) start(ctx context.Context, onError func(string, ...any)) {
	now := time.Now().UnixNano()
	for _, f := range tr.flows {
		f.lastRx.Store(now) // counts as flowing until a fault says otherwise
	}
	for _, p := range tr.pods {
		tr.wg.Add(2)
		go func() { defer tr.wg.Done(); tr.receiveUDP(p, onError) }()
		go func() { defer tr.wg.Done(); tr.receiveICMP(p) }()
	}
	tr.wg.Add(1)
	go func() {
		defer tr.wg.Done()
		tr.send(ctx)
	}()
	go func() {
		<-ctx.Done()
		tr.close() // unblocks the receivers
	}()
}

func (tr *traffic) close() {
	for _, p := range tr.pods {
		if p.udp != nil {
			p.udp.Close()
		}
		if p.raw != nil {
			p.raw.Close()
		}
	}
}

func (tr *traffic) wait() { tr.wg.Wait() }

// payload is the mesh's marker, the flow index and a sequence number,
// padded: what the capture looks for on the underlay.
func (f *flow) payload(buf []byte) []byte {
	buf = append(buf[:0], f.src.mesh.marker...)
	buf = binary.BigEndian.AppendUint32(buf, f.idx)
	buf = binary.BigEndian.AppendUint32(buf, f.seq)
	for len(buf) < payloadSize {
		buf = append(buf, '.')
	}
	return buf
}

// send ticks at the stream rate; pings go out every streamRate/pingRate ticks.
func (tr *traffic) send(ctx context.Context) {
	tick := time.NewTicker(time.Second / streamRate)
	defer tick.Stop()
	buf := make([]byte, 0, payloadSize)
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		pingNow := n%(streamRate/pingRate) == 0
		for _, f := range tr.flows {
			if f.icmp && !pingNow {
				continue
			}
			f.seq++
			var err error
			if f.icmp {
				msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: f.src.pingID, Seq: int(f.seq & 0xffff), Data: f.payload(buf)}}
				b, merr := msg.Marshal(nil)
				if merr != nil {
					continue
				}
				_, err = f.src.raw.WriteTo(b, &net.IPAddr{IP: f.dst.Addr.AsSlice()})
			} else {
				_, err = f.src.udp.WriteToUDP(f.payload(buf), &net.UDPAddr{IP: f.dst.Addr.AsSlice(), Port: streamPort})
			}
			if err == nil {
				f.tx.Add(1)
				f.lastTx.Store(time.Now().UnixNano())
			} // else: no route while a fault lasts (unreachable is fail-closed at work)
		}
	}
}

func (tr *traffic) receiveUDP(p *pod, onError func(string, ...any)) {
	buf := make([]byte, 2048)
	for {
		n, from, err := p.udp.ReadFromUDPAddrPort(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue // ICMP errors surfaced on the socket
		}
		f := tr.parse(buf[:n], p.mesh)
		if f == nil || f.icmp || f.dst != p {
			onError("pod %s received a stray datagram of %d bytes from %s", p.Netns, n, from)
			continue
		}
		if from.Addr() != f.src.Addr {
			// Pod to pod is never NATed: the source a pod sees is the sender's own.
			f.badSrc.Add(1)
			onError("flow %s arrived from %s, not %s (NAT between pods)", f.name, from.Addr(), f.src.Addr)
		}
		f.rx.Add(1)
		f.lastRx.Store(time.Now().UnixNano())
	}
}

func (tr *traffic) receiveICMP(p *pod) {
	buf := make([]byte, 2048)
	for {
		n, _, err := p.raw.ReadFrom(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue // the echo requests others send us, unreachables
		}
		e, ok := m.Body.(*icmp.Echo)
		if !ok || e.ID != p.pingID {
			continue
		}
		if f := tr.parse(e.Data, p.mesh); f != nil && f.icmp && f.src == p {
			f.rx.Add(1)
			f.lastRx.Store(time.Now().UnixNano())
		}
	}
}

// parse finds the flow a payload belongs to, nil if it is not one of ours.
func (tr *traffic) parse(b []byte, m *mesh) *flow {
	if len(b) < len(m.marker)+8 || string(b[:len(m.marker)]) != m.marker {
		return nil
	}
	i := binary.BigEndian.Uint32(b[len(m.marker):])
	if int(i) >= len(tr.flows) {
		return nil
	}
	return tr.flows[i]
}

// stalled lists the flows with nothing received since t.
func (tr *traffic) stalled(t time.Time) []*flow {
	var out []*flow
	for _, f := range tr.flows {
		if f.lastRx.Load() <= t.UnixNano() {
			out = append(out, f)
		}
	}
	return out
}

// podAt finds the pod that holds addr.
func (tr *traffic) podAt(addr netip.Addr) *pod {
	for _, p := range tr.pods {
		if p.Addr == addr {
			return p
		}
	}
	return nil
}
