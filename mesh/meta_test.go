package mesh

import (
	"bytes"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"

	"github.com/weftnet/weft/identity"
)

func TestMetaRoundTrip(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	for _, m := range []Meta{
		{Protocol: 2, DataPort: 6784, Version: "v0.1.0"},
		{Protocol: 2, DataPort: 1, Encrypted: true, PublicKey: key, Version: ""},
		{Protocol: 2, DataPort: 1, PublicKey: key, Version: "v1", SigningKey: bytes.Repeat([]byte{9}, 32)},
		{Protocol: 3, DataPort: 6784, Version: "v2", SigningKey: bytes.Repeat([]byte{9}, 32), VXLAN: &testVXLAN},
		{Protocol: 3, DataPort: 6784, Version: "v2", VXLAN: &VXLAN{MAC: [6]byte{2}, VNI: 1<<24 - 1, Port: 65535, UnderlayMTU: 9000}},
	} {
		b, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeMeta(b)
		if err != nil {
			t.Fatal(err)
		}
		if got.Protocol != m.Protocol || got.DataPort != m.DataPort || got.Encrypted != m.Encrypted ||
			!bytes.Equal(got.PublicKey, m.PublicKey) || got.Version != m.Version || !bytes.Equal(got.SigningKey, m.SigningKey) ||
			!sameVXLAN(got.VXLAN, m.VXLAN) {
			t.Fatalf("round trip: got %+v want %+v", got, m)
		}
	}
}

var testVXLAN = VXLAN{MAC: [6]byte{0x02, 1, 2, 3, 4, 5}, VNI: 6786, Port: 6786, UnderlayMTU: 1500}

func sameVXLAN(a, b *VXLAN) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// Metadata with the VXLAN field still decodes in a build that predates it
// (it stops after the signing key), and metadata without it decodes here.
func TestMetaVXLANBackwardCompatible(t *testing.T) {
	sk := bytes.Repeat([]byte{9}, 32)
	withVX, err := Meta{Protocol: 3, DataPort: 6784, Version: "v2", SigningKey: sk, VXLAN: &testVXLAN}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	without, err := Meta{Protocol: 3, DataPort: 6784, Version: "v2", SigningKey: sk}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(withVX, without[:len(without)-1]) {
		t.Fatal("the VXLAN field is not appended after the fields an older build knows")
	}
	old := without[:len(without)-1] // exactly what the previous build encoded
	m, err := DecodeMeta(old)
	if err != nil || m.VXLAN != nil || !bytes.Equal(m.SigningKey, sk) {
		t.Fatalf("previous build's metadata: %+v, %v", m, err)
	}
	m, err = DecodeMeta(withVX)
	if err != nil || !sameVXLAN(m.VXLAN, &testVXLAN) {
		t.Fatalf("VXLAN field: %+v, %v", m.VXLAN, err)
	}
}

func TestMetaVXLANErrors(t *testing.T) {
	for name, v := range map[string]VXLAN{
		"multicast MAC": {MAC: [6]byte{1}, VNI: 1, Port: 1, UnderlayMTU: 1500},
		"VNI":           {MAC: [6]byte{2}, VNI: 1 << 24, Port: 1, UnderlayMTU: 1500},
		"port":          {MAC: [6]byte{2}, VNI: 1, UnderlayMTU: 1500},
		"MTU":           {MAC: [6]byte{2}, VNI: 1, Port: 1, UnderlayMTU: 100},
	} {
		if _, err := (Meta{DataPort: 1, VXLAN: &v}).Encode(); !errors.Is(err, ErrMetaInvalid) {
			t.Errorf("encode %s: %v", name, err)
		}
	}
	good, _ := Meta{Protocol: 3, DataPort: 6784, Version: "v", VXLAN: &testVXLAN}.Encode()
	cut := slices.Clone(good[:len(good)-1])
	if _, err := DecodeMeta(cut); !errors.Is(err, ErrMetaShort) {
		t.Errorf("cut VXLAN: %v", err)
	}
	badLen := slices.Clone(good)
	badLen[len(good)-vxlanLen-1] = 7
	if _, err := DecodeMeta(badLen); !errors.Is(err, ErrMetaInvalid) {
		t.Errorf("VXLAN length 7: %v", err)
	}
	mcast := slices.Clone(good)
	mcast[len(good)-vxlanLen] |= 1
	if _, err := DecodeMeta(mcast); !errors.Is(err, ErrMetaInvalid) {
		t.Errorf("multicast VTEP MAC: %v", err)
	}
	zeroPort := slices.Clone(good)
	zeroPort[len(good)-4], zeroPort[len(good)-3] = 0, 0
	if _, err := DecodeMeta(zeroPort); !errors.Is(err, ErrMetaInvalid) {
		t.Errorf("VXLAN port 0: %v", err)
	}
}

func TestMetaEncodeErrors(t *testing.T) {
	if _, err := (Meta{DataPort: 1, PublicKey: []byte{1, 2}}).Encode(); !errors.Is(err, ErrMetaInvalid) {
		t.Fatalf("short key: %v", err)
	}
	if _, err := (Meta{DataPort: 1, Version: strings.Repeat("x", 300)}).Encode(); !errors.Is(err, ErrMetaTooBig) {
		t.Fatalf("long version: %v", err)
	}
}

func TestMetaDecodeErrors(t *testing.T) {
	good, _ := Meta{Protocol: 2, DataPort: 6784, PublicKey: bytes.Repeat([]byte{1}, 32), Version: "v1"}.Encode()
	good = good[:len(good)-2] // as an older build encodes it: no signing key (nor VXLAN) at all
	if _, err := DecodeMeta(good); err != nil {
		t.Fatalf("metadata of an older build: %v", err)
	}
	cases := map[string]struct {
		b    []byte
		want error
	}{
		"empty":       {nil, ErrMetaShort},
		"format":      {append([]byte{9}, good[1:]...), ErrMetaFormat},
		"cut key":     {good[:20], ErrMetaShort},
		"cut version": {good[:len(good)-1], ErrMetaShort},
		"key length":  {[]byte{1, 1, 0, 1, 0, 5, 0, 0, 0, 0, 0, 0}, ErrMetaInvalid},
		"port zero":   {[]byte{1, 1, 0, 0, 0, 0, 0}, ErrMetaInvalid},
		"too big":     {make([]byte, 600), ErrMetaTooBig},
		"signing key": {append(slices.Clone(good), 5, 1, 2), ErrMetaInvalid},
		"cut signing": {append(slices.Clone(good), 32, 1, 2), ErrMetaShort},
	}
	for name, c := range cases {
		if _, err := DecodeMeta(c.b); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", name, err, c.want)
		}
	}
}

var testSigningKey = bytes.Repeat([]byte{4}, 32)

func TestMetaCompatible(t *testing.T) {
	if err := (Meta{Protocol: 2}).Compatible(false); err == nil || !strings.Contains(err.Error(), "protocol version 2") {
		t.Fatalf("a protocol-1 peer (no partial checksums) was not refused: %v", err)
	}
	if err := (Meta{Protocol: ProtocolMax + 1}).Compatible(false); err == nil || !strings.Contains(err.Error(), "protocol") {
		t.Fatalf("protocol: %v", err)
	}
	if err := (Meta{Protocol: ProtocolMin, Encrypted: true, SigningKey: testSigningKey}).Compatible(false); err == nil || !strings.Contains(err.Error(), "password") {
		t.Fatalf("encryption: %v", err)
	}
	if err := (Meta{Protocol: ProtocolMin, SigningKey: testSigningKey}).Compatible(false); err != nil {
		t.Fatal(err)
	}
}

// FuzzDecodeMeta: metadata comes from any host that can gossip; the decoder
// must never panic, and what it accepts must survive an encode/decode round trip.
func FuzzDecodeMeta(f *testing.F) {
	good, _ := Meta{Protocol: 2, DataPort: 6784, Encrypted: true, PublicKey: bytes.Repeat([]byte{3}, 32), Version: "v0.1.0"}.Encode()
	f.Add(good)
	signed, _ := Meta{Protocol: 2, DataPort: 6784, Version: "v1", SigningKey: testSigningKey}.Encode()
	f.Add(signed)
	vx, _ := Meta{Protocol: 3, DataPort: 6784, Version: "v2", SigningKey: testSigningKey, VXLAN: &testVXLAN}.Encode()
	f.Add(vx)
	vxNoKey, _ := Meta{Protocol: 3, DataPort: 6784, VXLAN: &testVXLAN}.Encode()
	f.Add(vxNoKey)
	f.Add(append(slices.Clone(signed), 13, 2, 0, 0, 0, 0, 0))
	f.Add([]byte{1, 1, 0x1a, 0x80, 0, 0, 0})
	f.Add([]byte{})
	f.Add([]byte{1, 1, 0, 1, 0, 32})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b)
		if err != nil {
			return
		}
		again, err := m.Encode()
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", m, err)
		}
		m2, err := DecodeMeta(again)
		if err != nil || m2.Protocol != m.Protocol || m2.DataPort != m.DataPort || m2.Encrypted != m.Encrypted ||
			!bytes.Equal(m2.PublicKey, m.PublicKey) || m2.Version != m.Version || !bytes.Equal(m2.SigningKey, m.SigningKey) ||
			!sameVXLAN(m2.VXLAN, m.VXLAN) {
			t.Fatalf("round trip of %+v: %+v, %v", m, m2, err)
		}
	})
}

// A known name announcing another signing key is refused (trust on first
// use) until the pin is cleared; the refusal is logged once.
func TestVetRefusesAnotherKeyForAKnownName(t *testing.T) {
	sink := &logSink{}
	pins := identity.NewPins()
	m := &Mesh{cfg: Config{Name: "a", Pins: pins}, log: newTestLogger(sink)}
	d := &delegate{m: m}
	node := func(key byte) *memberlist.Node {
		meta, err := Meta{Protocol: ProtocolMin, DataPort: 6784, Version: "t", SigningKey: bytes.Repeat([]byte{key}, 32)}.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return &memberlist.Node{Name: "b", Addr: net.IPv4(198, 18, 0, 2), Port: 6783, Meta: meta}
	}
	if err := d.vet(node(1)); err != nil {
		t.Fatalf("first key for b: %v", err)
	}
	if err := d.vet(node(1)); err != nil {
		t.Fatalf("same key again: %v", err)
	}
	err := d.vet(node(2))
	if !errors.Is(err, identity.ErrKeyMismatch) {
		t.Fatalf("another key for b: %v", err)
	}
	if !sink.contains("refusing peer") {
		t.Fatal("refusal not logged")
	}
	if k, ok := m.PeerKey("b"); !ok || !bytes.Equal(k, bytes.Repeat([]byte{1}, 32)) {
		t.Fatalf("PeerKey(b) = %x, %v; want the first key", k, ok)
	}
	unsigned, _ := Meta{Protocol: ProtocolMin, DataPort: 6784, Version: "old"}.Encode()
	if err := d.vet(&memberlist.Node{Name: "b", Addr: net.IPv4(198, 18, 0, 2), Port: 6783, Meta: unsigned}); !errors.Is(err, identity.ErrKeyMismatch) {
		t.Fatalf("a pinned name announcing no key: %v", err)
	}
	if err := d.vet(&memberlist.Node{Name: "old", Addr: net.IPv4(198, 18, 0, 3), Port: 6783, Meta: unsigned}); err != nil {
		t.Fatalf("an older build without a signing key is refused at the gossip layer: %v", err)
	}
	if !sink.contains("no signing key") {
		t.Fatal("an unsigned peer was not logged")
	}
	if err := pins.Forget("b"); err != nil {
		t.Fatal(err)
	}
	if err := d.vet(node(2)); err != nil {
		t.Fatalf("after the pin was cleared (rmpeer): %v", err)
	}
}
