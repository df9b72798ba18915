package wire

import (
	"bytes"
	"errors"
	"testing"
)

func TestDataRoundTrip(t *testing.T) {
	msg := make([]byte, HeaderLen+4)
	PutData(msg, 0xdeadbeef, 0)
	copy(msg[HeaderLen:], "ping")
	h, inner, err := DecodeData(msg)
	if err != nil {
		t.Fatalf("DecodeData: %v", err)
	}
	if h.Version != Version || h.Type != TypeData || h.Index != 0xdeadbeef || h.Flags != 0 {
		t.Fatalf("header = %+v", h)
	}
	if string(inner) != "ping" {
		t.Fatalf("inner = %q", inner)
	}
	if want := []byte{1, 1, 0, 0, 0xde, 0xad, 0xbe, 0xef}; !bytes.Equal(msg[:HeaderLen], want) {
		t.Fatalf("layout = % x, want % x", msg[:HeaderLen], want)
	}
}

func TestEncryptedRoundTrip(t *testing.T) {
	msg := make([]byte, EncryptedHeaderLen+3+TagLen)
	PutEncrypted(msg, 7, 1<<40+5, 0)
	h, err := DecodeEncrypted(msg)
	if err != nil {
		t.Fatalf("DecodeEncrypted: %v", err)
	}
	if h.Type != TypeEncrypted || h.Index != 7 || h.Counter != 1<<40+5 {
		t.Fatalf("header = %+v", h)
	}
	if _, _, err := DecodeData(msg); !errors.Is(err, ErrType) {
		t.Fatalf("DecodeData(encrypted) err = %v, want ErrType", err)
	}
	if _, err := DecodeEncrypted(msg[:EncryptedHeaderLen+TagLen-1]); !errors.Is(err, ErrShort) {
		t.Fatalf("short encrypted err = %v, want ErrShort", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	good := []byte{1, 1, 0, 0, 0, 0, 0, 1}
	cases := []struct {
		name string
		msg  []byte
		want error
	}{
		{"empty", nil, ErrShort},
		{"seven bytes", good[:7], ErrShort},
		{"version 0", []byte{0, 1, 0, 0, 0, 0, 0, 1}, ErrVersion},
		{"version 2", []byte{2, 1, 0, 0, 0, 0, 0, 1}, ErrVersion},
		{"type 0", []byte{1, 0, 0, 0, 0, 0, 0, 1}, ErrType},
		{"type 99", []byte{1, 99, 0, 0, 0, 0, 0, 1}, ErrType},
		{"reserved set", []byte{1, 1, 0, 9, 0, 0, 0, 1}, ErrReserved},
		{"good", good, nil},
		{"unknown flag ignored", []byte{1, 1, 0x80, 0, 0, 0, 0, 1}, nil},
	}
	for _, c := range cases {
		_, err := Decode(c.msg)
		if !errors.Is(err, c.want) || (c.want == nil && err != nil) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
}

func TestDecodeDoesNotAllocate(t *testing.T) {
	bad := []byte{9, 1, 0, 0, 0, 0, 0, 1}
	good := []byte{1, 1, 0, 0, 0, 0, 0, 1, 0x45}
	allocs := testing.AllocsPerRun(100, func() {
		_, _ = Decode(bad)
		_, _, _ = DecodeData(good)
	})
	if allocs != 0 {
		t.Fatalf("allocs per decode = %v, want 0", allocs)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte{1, 1, 0, 0, 0, 0, 0, 1, 0x45, 0})
	f.Add([]byte{1, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9})
	f.Add([]byte{1, 3, 0, 0})
	f.Add([]byte{2, 1, 0, 0, 0, 0, 0, 1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, msg []byte) {
		h, err := Decode(msg)
		if err != nil {
			return
		}
		// A header that decodes must re-encode to the same bytes.
		out := make([]byte, HeaderLen)
		h.Put(out)
		if !bytes.Equal(out, msg[:HeaderLen]) {
			t.Fatalf("re-encoded % x, decoded from % x", out, msg[:HeaderLen])
		}
		switch h.Type {
		case TypeData:
			_, inner, err := DecodeData(msg)
			if err != nil || len(inner) != len(msg)-HeaderLen {
				t.Fatalf("DecodeData: inner %d bytes, err %v", len(inner), err)
			}
		case TypeEncrypted:
			eh, err := DecodeEncrypted(msg)
			if err == nil && len(msg) < EncryptedHeaderLen+TagLen {
				t.Fatalf("accepted %d-byte encrypted message", len(msg))
			}
			if err == nil {
				back := make([]byte, EncryptedHeaderLen)
				PutEncrypted(back, eh.Index, eh.Counter, eh.Flags)
				if msg[2] == 0 && !bytes.Equal(back, msg[:EncryptedHeaderLen]) {
					t.Fatalf("encrypted header re-encoded % x from % x", back, msg[:EncryptedHeaderLen])
				}
			}
		}
	})
}
