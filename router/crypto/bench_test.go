package crypto

import (
	"testing"

	"github.com/weftnet/weft/router/wire"
)

const benchPacket = 1400

var benchCiphers = []struct {
	name string
	o    nodeOpts
}{
	{"aes-256-gcm", nodeOpts{}},
	{"chacha20-poly1305", nodeOpts{disableAES: true}},
}

func benchPair(b *testing.B, o nodeOpts, want string) (*Manager, *Manager) {
	a, bm, _, _ := pair(b, o, o)
	if got := a.Sessions()[0].Cipher; got != want {
		b.Skipf("negotiated %s, not %s (no AES hardware?)", got, want)
	}
	return a, bm
}

// BenchmarkSeal seals 1400-byte packets in place; SetBytes makes the MB/s
// column the plaintext rate (Gbit/s = MB/s * 8 / 1000).
func BenchmarkSeal(b *testing.B) {
	for _, c := range benchCiphers {
		b.Run(c.name, func(b *testing.B) {
			a, _ := benchPair(b, c.o, c.name)
			buf := make([]byte, a.Overhead()+benchPacket)
			b.SetBytes(benchPacket)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := a.Seal("b", buf, benchPacket); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOpen opens 1400-byte datagrams; each is a fresh copy of one of a
// batch sealed beforehand, so the replay window accepts every one.
func BenchmarkOpen(b *testing.B) {
	const batch = 1024
	for _, c := range benchCiphers {
		b.Run(c.name, func(b *testing.B) {
			a, bm := benchPair(b, c.o, c.name)
			sealed := make([][]byte, batch)
			for i := range sealed {
				sealed[i] = make([]byte, a.Overhead()+benchPacket)
			}
			reseal := func() {
				for _, s := range sealed {
					if _, err := a.Seal("b", s, benchPacket); err != nil {
						b.Fatal(err)
					}
				}
			}
			reseal()
			work := make([]byte, a.Overhead()+benchPacket)
			h, err := wire.Decode(sealed[0]) // the router decodes once, before Open
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(benchPacket)
			b.ReportAllocs()
			b.ResetTimer()
			i := 0
			for b.Loop() {
				if i == batch {
					b.StopTimer()
					reseal()
					i = 0
					b.StartTimer()
				}
				copy(work, sealed[i])
				i++
				if _, _, err := bm.Open(addrA, h, work); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSealParallel shows the lock-free read path under concurrency.
func BenchmarkSealParallel(b *testing.B) {
	a, _ := benchPair(b, nodeOpts{}, "aes-256-gcm")
	b.SetBytes(benchPacket)
	b.ReportAllocs()
	b.ResetTimer() // the Managers' setup (handshake queues) is not Seal's
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, a.Overhead()+benchPacket)
		for pb.Next() {
			if _, err := a.Seal("b", buf, benchPacket); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkHandshake(b *testing.B) {
	b.ReportAllocs()
	a, bm, _, clock := pair(b, nodeOpts{}, nodeOpts{})
	pa := (*a.peers.Load())["b"]
	_ = bm
	for b.Loop() {
		clock.Advance(1e9) // keep clear of the per-source rate limit
		a.mu.Lock()
		msg, err := a.initiateLocked(pa, clock.Now())
		a.mu.Unlock()
		if err != nil {
			b.Fatal(err)
		}
		if err := bm.handleHandshake(addrA, msg); err != nil {
			b.Fatal(err)
		}
	}
}
