package meshtest

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

// A stream has a send buffer as a TCP socket does: a write of a whole
// push/pull returns without waiting for the reader (net.Pipe, used
// before, handed each chunk over to a waiting reader: dozens of
// goroutine switches per push/pull of a big mesh). The reader gets every
// byte, then EOF; deadlines end a blocked read.
func TestStreamBuffered(t *testing.T) {
	a, b := newPipe(nil, nil)
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i)
	}
	done := make(chan error, 1)
	go func() {
		_, err := a.Write(big)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a write of 1 MiB waited for the reader")
	}
	a.Close()
	got, err := io.ReadAll(b)
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("read %d bytes (%v), want the %d written, then EOF", len(got), err, len(big))
	}
	if _, err := b.Write([]byte("x")); err == nil {
		t.Fatal("a write to a closed peer succeeded")
	}
	c, d := newPipe(nil, nil)
	defer c.Close()
	d.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := d.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past its deadline: %v", err)
	}
	// A deadline set while a read waits applies to it (and one set before
	// the read starts, if the goroutine is late: either order passes).
	d.SetReadDeadline(time.Time{})
	res := make(chan error, 1)
	go func() { _, err := d.Read(make([]byte, 1)); res <- err }()
	d.SetReadDeadline(time.Now())
	select {
	case err := <-res:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("blocked read after a deadline was set: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a deadline set during a read did not end it")
	}
}
