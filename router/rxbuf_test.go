package router

import (
	"context"
	"testing"
	"time"
)

// runUntil runs r, delivers the datagrams, waits until the TUN has had
// want packets, and stops r again.
func runUntil(t *testing.T, r *Router, deliver func(), written <-chan struct{}, want int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	deliver()
	deadline := time.After(10 * time.Second)
	for got := 0; got < want; got++ {
		select {
		case <-written:
		case <-deadline:
			t.Fatalf("TUN got %d packets, want %d", got, want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// The receive buffers (64 KiB each) start few: an idle agent would never
// touch 4 MiB of them, but the GC counts them as live and lets that much
// more garbage stay resident. They double on every read that fills them
// all, so a burst grows them to the full batch; datagrams one at a time
// do not.
func TestReceiveBuffersGrowWithLoad(t *testing.T) {
	pkt := mkIPv4("10.40.1.5", "10.40.2.7", 50, true)
	for _, tc := range []struct {
		name      string
		burst     bool
		n, wantRx int
	}{
		{"one at a time", false, 3 * rxInitial, rxInitial},
		// Reads of 4, 8, 16, 32 and 64 datagrams fill the buffers each time.
		{"burst", true, rxInitial + 8 + 16 + 32 + 64 + 10, rxBatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, ft, fc := newDirect(t, "b", nil)
			if r.rx.ready != rxInitial {
				t.Fatalf("%d receive buffers at start, want %d", r.rx.ready, rxInitial)
			}
			written := make(chan struct{}, tc.n)
			go func() {
				for range ft.Written() {
					written <- struct{}{}
				}
			}()
			if tc.burst {
				runUntil(t, r, func() {
					for range tc.n {
						fc.Deliver(epA, dataMsg(pkt))
					}
				}, written, tc.n)
			} else {
				runUntil(t, r, func() {
					for range tc.n {
						fc.Deliver(epA, dataMsg(pkt))
						select {
						case <-written: // one in, one out: the socket never holds two
						case <-time.After(10 * time.Second):
							t.Error("datagram not forwarded")
						}
					}
				}, written, 0)
			}
			if r.rx.ready != tc.wantRx {
				t.Fatalf("%d receive buffers after %d datagrams, want %d", r.rx.ready, tc.n, tc.wantRx)
			}
			for i := range r.rx.ready {
				if len(r.rx.msgs[i].Buf) == 0 {
					t.Fatalf("message %d of %d ready has no buffer", i, r.rx.ready)
				}
			}
		})
	}
}
