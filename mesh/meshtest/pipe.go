package meshtest

import (
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// pipe is one end of an in-memory stream with a send buffer, as a TCP
// socket has one: a Write queues its bytes and returns without waiting
// for the reader. net.Pipe (used before) hands every chunk over to a
// reader that is waiting for it: a push/pull of a 1,000-member list,
// read through a 4 kB bufio.Reader, was some 65 hand-overs between two
// goroutines, each waiting for the scheduler, which in a process of a
// thousand members is a long wait. Deadlines are honoured as net.Conn
// asks, with os.ErrDeadlineExceeded.
type pipe struct {
	rx *pipeBuf // what the other end wrote, for this end to read
	tx *pipeBuf // what this end writes

	mu             sync.Mutex
	rdeadline      time.Time
	wdeadline      time.Time
	closeOnce      sync.Once
	local, remote  net.Addr
	deadlineChange chan struct{} // closed and replaced when a deadline is set
}

// pipeBuf is one direction: bytes written and not yet read, and whether
// the writer closed (EOF once drained) or the reader closed (writes fail).
type pipeBuf struct {
	mu       sync.Mutex
	data     []byte
	wclosed  bool
	rclosed  bool
	readable chan struct{} // one token when data or a close arrived
}

func newPipeBuf() *pipeBuf { return &pipeBuf{readable: make(chan struct{}, 1)} }

func (b *pipeBuf) signal() {
	select {
	case b.readable <- struct{}{}:
	default:
	}
}

// newPipe returns the two ends of a stream.
func newPipe(a, b net.Addr) (*pipe, *pipe) {
	ab, ba := newPipeBuf(), newPipeBuf()
	return &pipe{rx: ba, tx: ab, local: a, remote: b, deadlineChange: make(chan struct{})},
		&pipe{rx: ab, tx: ba, local: b, remote: a, deadlineChange: make(chan struct{})}
}

func (p *pipe) Read(out []byte) (int, error) {
	for {
		b := p.rx
		b.mu.Lock()
		switch {
		case b.rclosed:
			b.mu.Unlock()
			return 0, io.ErrClosedPipe
		case len(b.data) > 0:
			n := copy(out, b.data)
			b.data = b.data[n:]
			if len(b.data) == 0 {
				b.data = nil // let the buffer go
			}
			b.mu.Unlock()
			return n, nil
		case b.wclosed:
			b.mu.Unlock()
			return 0, io.EOF
		}
		b.mu.Unlock()
		p.mu.Lock()
		deadline, changed := p.rdeadline, p.deadlineChange
		p.mu.Unlock()
		if err := wait(b.readable, deadline, changed); err != nil {
			return 0, err
		}
	}
}

// wait blocks until ready has a token, the deadline passes, or a deadline
// is set anew (the caller then looks again).
func wait(ready chan struct{}, deadline time.Time, changed chan struct{}) error {
	if deadline.IsZero() {
		select {
		case <-ready:
		case <-changed:
		}
		return nil
	}
	d := time.Until(deadline)
	if d <= 0 {
		return os.ErrDeadlineExceeded
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-changed:
		return nil
	case <-t.C:
		return os.ErrDeadlineExceeded
	}
}

func (p *pipe) Write(in []byte) (int, error) {
	p.mu.Lock()
	deadline := p.wdeadline
	p.mu.Unlock()
	if !deadline.IsZero() && !time.Now().Before(deadline) {
		return 0, os.ErrDeadlineExceeded
	}
	b := p.tx
	b.mu.Lock()
	if b.wclosed || b.rclosed {
		b.mu.Unlock()
		return 0, io.ErrClosedPipe
	}
	b.data = append(b.data, in...)
	b.mu.Unlock()
	b.signal()
	return len(in), nil
}

// Close ends both directions: the other end reads what was written, then
// EOF; its writes fail.
func (p *pipe) Close() error {
	p.closeOnce.Do(func() {
		p.tx.mu.Lock()
		p.tx.wclosed = true
		p.tx.mu.Unlock()
		p.tx.signal()
		p.rx.mu.Lock()
		p.rx.rclosed = true
		p.rx.data = nil
		p.rx.mu.Unlock()
		p.rx.signal()
	})
	return nil
}

func (p *pipe) LocalAddr() net.Addr  { return p.local }
func (p *pipe) RemoteAddr() net.Addr { return p.remote }

func (p *pipe) SetDeadline(t time.Time) error {
	p.setDeadlines(t, true, true)
	return nil
}

func (p *pipe) SetReadDeadline(t time.Time) error {
	p.setDeadlines(t, true, false)
	return nil
}

func (p *pipe) SetWriteDeadline(t time.Time) error {
	p.setDeadlines(t, false, true)
	return nil
}

func (p *pipe) setDeadlines(t time.Time, read, write bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if read {
		p.rdeadline = t
	}
	if write {
		p.wdeadline = t
	}
	close(p.deadlineChange)
	p.deadlineChange = make(chan struct{})
}
