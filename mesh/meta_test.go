package mesh

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestMetaRoundTrip(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	for _, m := range []Meta{
		{Protocol: 2, DataPort: 6784, Version: "v0.1.0"},
		{Protocol: 2, DataPort: 1, Encrypted: true, PublicKey: key, Version: ""},
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
			!bytes.Equal(got.PublicKey, m.PublicKey) || got.Version != m.Version {
			t.Fatalf("round trip: got %+v want %+v", got, m)
		}
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
	}
	for name, c := range cases {
		if _, err := DecodeMeta(c.b); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", name, err, c.want)
		}
	}
}

func TestMetaCompatible(t *testing.T) {
	if err := (Meta{Protocol: 1}).Compatible(false); err == nil || !strings.Contains(err.Error(), "protocol version 1") {
		t.Fatalf("a protocol-1 peer (no partial checksums) was not refused: %v", err)
	}
	if err := (Meta{Protocol: ProtocolMax + 1}).Compatible(false); err == nil || !strings.Contains(err.Error(), "protocol") {
		t.Fatalf("protocol: %v", err)
	}
	if err := (Meta{Protocol: ProtocolMin, Encrypted: true}).Compatible(false); err == nil || !strings.Contains(err.Error(), "password") {
		t.Fatalf("encryption: %v", err)
	}
	if err := (Meta{Protocol: ProtocolMin}).Compatible(false); err != nil {
		t.Fatal(err)
	}
}

// FuzzDecodeMeta: metadata comes from any host that can gossip; the decoder
// must never panic, and what it accepts must survive an encode/decode round trip.
func FuzzDecodeMeta(f *testing.F) {
	good, _ := Meta{Protocol: 2, DataPort: 6784, Encrypted: true, PublicKey: bytes.Repeat([]byte{3}, 32), Version: "v0.1.0"}.Encode()
	f.Add(good)
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
			!bytes.Equal(m2.PublicKey, m.PublicKey) || m2.Version != m.Version {
			t.Fatalf("round trip of %+v: %+v, %v", m, m2, err)
		}
	})
}
