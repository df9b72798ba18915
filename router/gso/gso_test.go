package gso

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// tcpPacket builds a TCP/IPv4 packet (no options unless opts) with payload
// bytes of payload from sequence number seq, its checksum left partial.
func tcpPacket(seq uint32, payload int, flags byte, opts []byte) []byte {
	thl := 20 + len(opts)
	p := make([]byte, 20+thl+payload)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:6], 100)
	p[6] = 0x40
	p[8] = 64
	p[9] = protoTCP
	copy(p[12:20], []byte{10, 40, 1, 5, 10, 40, 2, 7})
	putIPv4Checksum(p, 20)
	tcp := p[20:]
	binary.BigEndian.PutUint16(tcp[0:2], 40000)
	binary.BigEndian.PutUint16(tcp[2:4], 5201)
	binary.BigEndian.PutUint32(tcp[4:8], seq)
	binary.BigEndian.PutUint32(tcp[8:12], 99)
	tcp[12] = byte(thl/4) << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:16], 1000)
	copy(tcp[20:], opts)
	for i := thl; i < len(tcp); i++ {
		tcp[i] = byte(i*13 + int(seq))
	}
	binary.BigEndian.PutUint16(tcp[16:18], Fold(pseudoSum(p, protoTCP, len(tcp))))
	return p
}

// checksumOK completes a copy of pkt's partial TCP checksum and verifies it.
func checksumOK(t *testing.T, pkt []byte) bool {
	t.Helper()
	p := bytes.Clone(pkt)
	o, ok := Partial(p)
	if !ok {
		t.Fatalf("not a TCP/UDP packet: % x", p[:20])
	}
	if err := Complete(p, o); err != nil {
		t.Fatal(err)
	}
	return Fold(Sum(p[20:], pseudoSum(p, protoTCP, len(p)-20))) == 0xffff
}

func TestVirtioRoundTrip(t *testing.T) {
	for _, o := range []Offload{
		{},
		{NeedsCsum: true, CsumStart: 20, CsumOffset: 16},
		{GSO: TCPv4, SegSize: 1448, HdrLen: 52, NeedsCsum: true, CsumStart: 20, CsumOffset: 16},
	} {
		var b [VirtioHdrLen]byte
		o.PutVirtio(b[:])
		got, err := ParseVirtio(b[:])
		if err != nil || got != o {
			t.Fatalf("round trip of %+v gave %+v, %v", o, got, err)
		}
	}
	if _, err := ParseVirtio(make([]byte, 9)); err != ErrShortHeader {
		t.Fatalf("short header: %v", err)
	}
	for _, typ := range []byte{3 /* UDP */, 4 /* TCPv6 */, 5 /* UDP L4 */, 0x81 /* TCPv4 with ECN */} {
		b := make([]byte, VirtioHdrLen)
		b[1] = typ
		if _, err := ParseVirtio(b); err != ErrGSOType {
			t.Fatalf("gso type %#x: %v, want ErrGSOType", typ, err)
		}
	}
}

// TestSegmentThenCoalesce cuts super-packets of several shapes the way the
// sender does and joins the segments the way the receiver does: the result
// must be the original super-packet, and every segment a valid packet.
func TestSegmentThenCoalesce(t *testing.T) {
	ts := []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2} // NOP NOP timestamps
	for _, tc := range []struct {
		name     string
		payload  int
		seg      int
		opts     []byte
		flags    byte
		wantSegs int
	}{
		{"full", 65535 - 52, 1448, ts, tcpACK | tcpPSH, 46},
		{"exact", 4 * 1000, 1000, nil, tcpACK, 4},
		{"one", 500, 1000, nil, tcpACK | tcpPSH, 1},
		{"tiny mss", 3000, 88, nil, tcpACK, 35},
		{"cwr first", 5000, 1400, nil, tcpACK | tcpCWR, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			super := tcpPacket(7, tc.payload, tc.flags, tc.opts)
			hdrLen := 40 + len(tc.opts)
			s, err := NewSegmenter(super, Offload{GSO: TCPv4, SegSize: tc.seg, HdrLen: hdrLen, NeedsCsum: true, CsumStart: 20, CsumOffset: 16})
			if err != nil {
				t.Fatal(err)
			}
			if s.Count() != tc.wantSegs || s.HdrLen() != hdrLen {
				t.Fatalf("count %d hdrLen %d, want %d %d", s.Count(), s.HdrLen(), tc.wantSegs, hdrLen)
			}
			c := NewCoalescer(256)
			for i := range s.Count() {
				seg := make([]byte, s.HdrLen(), s.HdrLen()+tc.seg)
				seg = append(seg, s.Segment(i, seg)...)
				if int(binary.BigEndian.Uint16(seg[2:4])) != len(seg) || Fold(Sum(seg[:20], 0)) != 0xffff {
					t.Fatalf("segment %d: bad IPv4 header % x", i, seg[:20])
				}
				if !checksumOK(t, seg) {
					t.Fatalf("segment %d: TCP checksum does not complete to a valid one", i)
				}
				if id := binary.BigEndian.Uint16(seg[4:6]); id != 100+uint16(i) {
					t.Fatalf("segment %d: id %d", i, id)
				}
				last := i == s.Count()-1
				if f := seg[33]; (f&tcpPSH != 0) != (last && tc.flags&tcpPSH != 0) || (f&tcpCWR != 0) != (i == 0 && tc.flags&tcpCWR != 0) {
					t.Fatalf("segment %d: flags %#x", i, f)
				}
				c.Add(seg, true)
			}
			var writes [][]byte
			var offs []Offload
			err = c.Flush(func(vec [][]byte, o Offload) error {
				var b []byte
				for _, v := range vec {
					b = append(b, v...)
				}
				writes, offs = append(writes, b), append(offs, o)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			// A CWR segment is not joined (the kernel would not either): it
			// goes alone, the rest are joined.
			wantWrites := 1
			if tc.flags&tcpCWR != 0 {
				wantWrites = 2
			}
			if len(writes) != wantWrites {
				t.Fatalf("%d writes, want %d", len(writes), wantWrites)
			}
			joined := writes[len(writes)-1]
			if wantWrites == 1 {
				if !bytes.Equal(joined[:16], super[:16]) || !bytes.Equal(joined[20:36], super[20:36]) || !bytes.Equal(joined[hdrLen:], super[hdrLen:]) {
					t.Fatalf("joined packet differs from the original:\n got % x\nwant % x", joined[:hdrLen], super[:hdrLen])
				}
				if tc.wantSegs > 1 && (offs[0].GSO != TCPv4 || offs[0].SegSize != tc.seg || offs[0].HdrLen != hdrLen) {
					t.Fatalf("offload %+v", offs[0])
				}
			}
			for i, w := range writes {
				if !checksumOK(t, w) || Fold(Sum(w[:20], 0)) != 0xffff {
					t.Fatalf("write %d: checksums do not verify", i)
				}
			}
		})
	}
}

func TestCoalesceKeepsFlowsApart(t *testing.T) {
	a1 := tcpPacket(1, 100, tcpACK, nil)
	a2 := tcpPacket(101, 100, tcpACK, nil)
	gap := tcpPacket(301, 100, tcpACK, nil) // a lost segment in between
	other := tcpPacket(401, 100, tcpACK, nil)
	other[23] = 99 // another destination port
	putIPv4Checksum(other, 20)
	big := tcpPacket(501, 200, tcpACK, nil) // longer than the first of its run
	syn := tcpPacket(1, 0, tcpSYN, nil)
	c := NewCoalescer(16)
	for _, p := range [][]byte{a1, a2, gap, other, syn, big} {
		c.Add(p, false)
	}
	var sizes []int
	_ = c.Flush(func(vec [][]byte, o Offload) error {
		n := 0
		for _, v := range vec {
			n += len(v)
		}
		sizes = append(sizes, n)
		if o.NeedsCsum != (len(vec) > 1) {
			t.Fatalf("write of %d pieces with %+v", len(vec), o)
		}
		return nil
	})
	want := []int{240, 140, 140, 40, 240}
	if len(sizes) != len(want) {
		t.Fatalf("writes %v, want %v", sizes, want)
	}
	for i := range want {
		if sizes[i] != want[i] {
			t.Fatalf("writes %v, want %v", sizes, want)
		}
	}
	if c.Len() != 0 {
		t.Fatal("queue not emptied")
	}
}

func TestSegmenterRefusesMismatches(t *testing.T) {
	good := tcpPacket(1, 3000, tcpACK, nil)
	o := Offload{GSO: TCPv4, SegSize: 1000, HdrLen: 40}
	udp := bytes.Clone(good)
	udp[9] = protoUDP
	lying := bytes.Clone(good)
	binary.BigEndian.PutUint16(lying[2:4], 100)
	frag := bytes.Clone(good)
	frag[6] |= 0x20
	for name, tc := range map[string]struct {
		pkt []byte
		o   Offload
	}{
		"udp":         {udp, o},
		"length lies": {lying, o},
		"fragment":    {frag, o},
		"no gso":      {good, Offload{}},
		"zero seg":    {good, Offload{GSO: TCPv4}},
		"short":       {good[:30], o},
	} {
		if _, err := NewSegmenter(tc.pkt, tc.o); err != ErrBadPacket {
			t.Errorf("%s: %v, want ErrBadPacket", name, err)
		}
	}
}

func TestCompleteUDP(t *testing.T) {
	p := make([]byte, 28+5)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	p[8], p[9] = 64, protoUDP
	copy(p[12:20], []byte{10, 0, 0, 1, 10, 0, 0, 2})
	binary.BigEndian.PutUint16(p[24:26], 13)
	copy(p[28:], "hello")
	binary.BigEndian.PutUint16(p[26:28], Fold(pseudoSum(p, protoUDP, 13)))
	o, ok := Partial(p)
	if !ok || o.CsumOffset != udpCsumOffset {
		t.Fatalf("Partial = %+v %v", o, ok)
	}
	if err := Complete(p, o); err != nil {
		t.Fatal(err)
	}
	if Fold(Sum(p[20:], pseudoSum(p, protoUDP, 13))) != 0xffff {
		t.Fatal("UDP checksum does not verify")
	}
	if err := Complete(p[:25], o); err != ErrBadPacket {
		t.Fatalf("short packet: %v", err)
	}
}

// FuzzVirtioAndSegment feeds arbitrary virtio headers and packets to the
// parser and the segmenter: no panics, and every segment is a well-formed
// IPv4 packet no longer than the header plus SegSize.
func FuzzVirtioAndSegment(f *testing.F) {
	hdr := make([]byte, VirtioHdrLen)
	Offload{GSO: TCPv4, SegSize: 1000, HdrLen: 40, NeedsCsum: true, CsumStart: 20, CsumOffset: 16}.PutVirtio(hdr)
	f.Add(append(bytes.Clone(hdr), tcpPacket(1, 2500, tcpACK|tcpPSH, nil)...))
	f.Add(append(make([]byte, VirtioHdrLen), tcpPacket(1, 10, tcpACK, nil)...))
	f.Add([]byte{1, 1, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := ParseVirtio(data)
		if err != nil {
			return
		}
		pkt := data[VirtioHdrLen:]
		if o.GSO == None {
			if o.NeedsCsum {
				_ = Complete(bytes.Clone(pkt), o)
			}
			return
		}
		s, err := NewSegmenter(pkt, o)
		if err != nil {
			return
		}
		hdr := make([]byte, MaxHdrLen)
		total := 0
		for i := range s.Count() {
			payload := s.Segment(i, hdr)
			if len(payload) > s.SegSize() {
				t.Fatalf("segment %d carries %d bytes, more than %d", i, len(payload), s.SegSize())
			}
			if int(binary.BigEndian.Uint16(hdr[2:4])) != s.HdrLen()+len(payload) {
				t.Fatalf("segment %d: total length field wrong", i)
			}
			total += len(payload)
		}
		if total != len(pkt)-s.HdrLen() {
			t.Fatalf("segments carry %d bytes of %d", total, len(pkt)-s.HdrLen())
		}
	})
}

// FuzzCoalesce joins arbitrary packets: no panics, and every write is an
// IPv4 packet whose total length matches what was written.
func FuzzCoalesce(f *testing.F) {
	f.Add(tcpPacket(1, 100, tcpACK, nil), tcpPacket(101, 100, tcpACK, nil), tcpPacket(201, 50, tcpACK|tcpPSH, nil))
	f.Add([]byte{0x45}, []byte{}, tcpPacket(1, 0, tcpSYN, nil))
	f.Fuzz(func(t *testing.T, a, b, c []byte) {
		q := NewCoalescer(4)
		var in int
		for _, p := range [][]byte{a, b, c} {
			if _, _, ok := ipv4Header(p); ok && int(binary.BigEndian.Uint16(p[2:4])) == len(p) {
				q.Add(bytes.Clone(p), true)
				in += len(p)
			}
		}
		_ = q.Flush(func(vec [][]byte, o Offload) error {
			var w []byte
			for _, v := range vec {
				w = append(w, v...)
			}
			if int(binary.BigEndian.Uint16(w[2:4])) != len(w) {
				t.Fatalf("wrote %d bytes under a total length of %d", len(w), binary.BigEndian.Uint16(w[2:4]))
			}
			if len(vec) > 1 && (o.GSO != TCPv4 || o.SegSize <= 0) {
				t.Fatalf("joined write with %+v", o)
			}
			return nil
		})
	})
}
