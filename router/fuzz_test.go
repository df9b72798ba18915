package router

import (
	"encoding/binary"
	"testing"

	"github.com/weftnet/weft/router/tun/tuntest"
	"github.com/weftnet/weft/router/udp"
	"github.com/weftnet/weft/router/wire"
)

// FuzzReceive feeds arbitrary datagrams (and GRO segment sizes) through the
// receive path of a plaintext and a sealing router: it must never panic, and
// whatever reaches the TUN must be an IPv4 packet for a local address.
func FuzzReceive(f *testing.F) {
	good := dataMsg(mkIPv4("10.40.1.5", "10.40.2.7", 20, true))
	f.Add(good, uint16(0), false)
	f.Add(append(good, good...), uint16(len(good)), false)
	f.Add([]byte{1, 2, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1}, uint16(0), true)
	f.Add([]byte{1, 3, 0, 0}, uint16(0), true)
	f.Add([]byte{}, uint16(3), false)
	// Two consecutive TCP segments with partial checksums: joined.
	var train []byte
	for i := range 2 {
		d := make([]byte, wire.HeaderLen, 200)
		wire.PutData(d, 1, wire.FlagCsumPartial)
		d = append(d, mkTCP("10.40.1.5", "10.40.2.7", uint32(1+i*100), 100, true)...)
		d[wire.HeaderLen+33] = 0x10
		train = append(train, d...)
	}
	f.Add(train, uint16(len(train)/2), false)
	plain, _, _ := newDirect(f, "b", nil)
	sealed, _, _ := newDirect(f, "b", &xorCrypto{})
	buf := make([]byte, udp.RecvBufSize)
	f.Fuzz(func(t *testing.T, data []byte, seg uint16, useCrypto bool) {
		r := plain
		if useCrypto {
			r = sealed
		}
		if len(data) > len(buf) {
			data = data[:len(buf)]
		}
		m := []udp.Message{{Buf: buf, N: copy(buf, data), Addr: epA, SegSize: int(seg)}}
		if err := r.rx.receive(m, 1); err != nil {
			t.Fatal(err)
		}
		ft := r.tun.(*tuntest.Device)
		for {
			select {
			case w := <-ft.Written():
				p := w.Data
				if len(p) < 20 || p[0]>>4 != 4 || p[16] != 10 || p[17] != 40 || p[18] != 2 {
					t.Fatalf("wrote a packet that should have been dropped: % x", p)
				}
				if int(binary.BigEndian.Uint16(p[2:4])) != len(p) {
					t.Fatalf("wrote %d bytes under an IPv4 total length of %d (%+v)", len(p), binary.BigEndian.Uint16(p[2:4]), w.O)
				}
			default:
				return
			}
		}
	})
}
