package mesh

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Protocol versions this build speaks. A peer announcing a protocol outside
// [ProtocolMin, ProtocolMax] is refused at the gossip layer, so two builds that
// cannot exchange data never half-join.
//
// History: 1, the first data plane. 2, datagrams may carry inner packets
// with partial TCP/UDP checksums (wire.FlagCsumPartial), which a build of
// protocol 1 would deliver unfinished: 1 is refused, not spoken. 3, the
// handshake carries a source-bound cookie MAC and may be answered with a
// cookie reply (router/crypto), and IPAM messages are signed (ipam wire
// format 2): a build of protocol 2 could join but neither handshake nor
// agree on the ring, so it is refused.
const (
	ProtocolMin = 3
	ProtocolMax = 3
)

// metaFormat is the version of the metadata encoding itself.
const metaFormat = 1

// MaxMetaSize is memberlist's limit for node metadata.
const MaxMetaSize = 512

// Meta is what a peer announces about itself in its gossip node metadata:
// what others need to reach its data plane.
type Meta struct {
	Protocol  uint8  // wire protocol version of the data plane
	DataPort  uint16 // UDP port of the data plane
	Encrypted bool   // this peer encrypts (has a password)
	PublicKey []byte // long-term X25519 key, 0 or 32 bytes
	Version   string // software version, informational
	// Leaving is announced just before a clean shutdown, so that peers can
	// tell a leave from a failure (memberlist reports both alike).
	Leaving bool
	// SigningKey is the long-term Ed25519 key (identity) that signs this
	// peer's IPAM messages; 32 bytes, pinned to the name on first sight.
	SigningKey []byte
	// VXLAN is this peer's kernel fast path (package fastdp), nil when it
	// offers none: it runs --datapath userspace, has a password, or its
	// kernel cannot make a VXLAN device.
	VXLAN *VXLAN
}

// VXLAN is what a peer needs to send to this one through its VXLAN device.
type VXLAN struct {
	MAC  [6]byte // the device's (VTEP) MAC, unicast
	VNI  uint32  // 24 bits
	Port uint16  // UDP port of the device
	// UnderlayMTU of this host, so that a peer with a larger one limits
	// what it sends here (route MTU) instead of blackholing big packets.
	UnderlayMTU uint16
}

const vxlanLen = 6 + 3 + 2 + 2

func (v *VXLAN) validate() error {
	switch {
	case v.MAC[0]&1 != 0:
		return fmt.Errorf("%w: VXLAN MAC %x is multicast", ErrMetaInvalid, v.MAC)
	case v.VNI >= 1<<24:
		return fmt.Errorf("%w: VNI %d does not fit 24 bits", ErrMetaInvalid, v.VNI)
	case v.Port == 0:
		return fmt.Errorf("%w: VXLAN port 0", ErrMetaInvalid)
	case v.UnderlayMTU < 576:
		return fmt.Errorf("%w: underlay MTU %d below 576", ErrMetaInvalid, v.UnderlayMTU)
	}
	return nil
}

// Errors of the metadata decoder.
var (
	ErrMetaShort   = errors.New("node metadata truncated")
	ErrMetaFormat  = errors.New("node metadata of unknown format")
	ErrMetaTooBig  = errors.New("node metadata larger than memberlist allows")
	ErrMetaInvalid = errors.New("node metadata invalid")
)

const (
	flagEncrypted = 1 << 0
	flagLeaving   = 1 << 1
)

// Encode lays Meta out as:
//
//	[0] format  [1] protocol  [2:4] data port (big endian)  [4] flags
//	[5] key length (0|32)  key  [.] version length  version
//	[.] signing key length (0|32)  signing key
//	[.] VXLAN length (0|13)  MAC(6) VNI(3, big endian) port(2) underlay MTU(2)
//
// Each optional field came later, at the end: an older decoder ignores what
// follows the fields it knows.
// It returns ErrMetaTooBig rather than a slice memberlist would reject.
func (m Meta) Encode() ([]byte, error) {
	if n := len(m.PublicKey); n != 0 && n != 32 {
		return nil, fmt.Errorf("%w: public key of %d bytes, want 32", ErrMetaInvalid, n)
	}
	if n := len(m.SigningKey); n != 0 && n != 32 {
		return nil, fmt.Errorf("%w: signing key of %d bytes, want 32", ErrMetaInvalid, n)
	}
	if len(m.Version) > 255 {
		return nil, fmt.Errorf("%w: version string of %d bytes", ErrMetaTooBig, len(m.Version))
	}
	vxLen := 0
	if m.VXLAN != nil {
		if err := m.VXLAN.validate(); err != nil {
			return nil, err
		}
		vxLen = vxlanLen
	}
	size := 6 + len(m.PublicKey) + 1 + len(m.Version) + 1 + len(m.SigningKey) + 1 + vxLen
	if size > MaxMetaSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMetaTooBig, size, MaxMetaSize)
	}
	b := make([]byte, 0, size)
	b = append(b, metaFormat, m.Protocol)
	b = binary.BigEndian.AppendUint16(b, m.DataPort)
	var flags byte
	if m.Encrypted {
		flags |= flagEncrypted
	}
	if m.Leaving {
		flags |= flagLeaving
	}
	b = append(b, flags, byte(len(m.PublicKey)))
	b = append(b, m.PublicKey...)
	b = append(b, byte(len(m.Version)))
	b = append(b, m.Version...)
	b = append(b, byte(len(m.SigningKey)))
	b = append(b, m.SigningKey...)
	b = append(b, byte(vxLen))
	if v := m.VXLAN; v != nil {
		b = append(b, v.MAC[:]...)
		b = append(b, byte(v.VNI>>16), byte(v.VNI>>8), byte(v.VNI))
		b = binary.BigEndian.AppendUint16(b, v.Port)
		b = binary.BigEndian.AppendUint16(b, v.UnderlayMTU)
	}
	return b, nil
}

// DecodeMeta parses metadata announced by a peer; it never trusts a length.
func DecodeMeta(b []byte) (Meta, error) {
	var m Meta
	if len(b) > MaxMetaSize {
		return m, fmt.Errorf("%w: %d bytes", ErrMetaTooBig, len(b))
	}
	if len(b) < 6 {
		return m, fmt.Errorf("%w: %d bytes, need at least 6", ErrMetaShort, len(b))
	}
	if b[0] != metaFormat {
		return m, fmt.Errorf("%w: %d", ErrMetaFormat, b[0])
	}
	m.Protocol = b[1]
	m.DataPort = binary.BigEndian.Uint16(b[2:4])
	m.Encrypted = b[4]&flagEncrypted != 0
	m.Leaving = b[4]&flagLeaving != 0
	keyLen := int(b[5])
	if keyLen != 0 && keyLen != 32 {
		return m, fmt.Errorf("%w: public key length %d", ErrMetaInvalid, keyLen)
	}
	rest := b[6:]
	if len(rest) < keyLen+1 {
		return m, fmt.Errorf("%w: public key", ErrMetaShort)
	}
	if keyLen > 0 {
		m.PublicKey = append([]byte(nil), rest[:keyLen]...)
	}
	rest = rest[keyLen:]
	verLen := int(rest[0])
	rest = rest[1:]
	if len(rest) < verLen {
		return m, fmt.Errorf("%w: version string", ErrMetaShort)
	}
	m.Version = string(rest[:verLen])
	rest = rest[verLen:]
	if len(rest) > 0 {
		n := int(rest[0])
		if n != 0 && n != 32 {
			return m, fmt.Errorf("%w: signing key length %d", ErrMetaInvalid, n)
		}
		if len(rest) < 1+n {
			return m, fmt.Errorf("%w: signing key", ErrMetaShort)
		}
		if n > 0 {
			m.SigningKey = append([]byte(nil), rest[1:1+n]...)
		}
		rest = rest[1+n:]
	}
	if len(rest) > 0 {
		n := int(rest[0])
		if n != 0 && n != vxlanLen {
			return m, fmt.Errorf("%w: VXLAN length %d", ErrMetaInvalid, n)
		}
		if len(rest) < 1+n {
			return m, fmt.Errorf("%w: VXLAN", ErrMetaShort)
		}
		if n > 0 {
			f := rest[1 : 1+n]
			v := &VXLAN{
				VNI:         uint32(f[6])<<16 | uint32(f[7])<<8 | uint32(f[8]),
				Port:        binary.BigEndian.Uint16(f[9:11]),
				UnderlayMTU: binary.BigEndian.Uint16(f[11:13]),
			}
			copy(v.MAC[:], f[:6])
			if err := v.validate(); err != nil {
				return m, err
			}
			m.VXLAN = v
		}
	}
	if m.DataPort == 0 {
		return m, fmt.Errorf("%w: data port 0", ErrMetaInvalid)
	}
	return m, nil
}

// Compatible says why a peer's metadata rules it out, or nil.
func (m Meta) Compatible(encrypted bool) error {
	if m.Protocol < ProtocolMin || m.Protocol > ProtocolMax {
		return fmt.Errorf("incompatible protocol version %d (this build speaks %d..%d): upgrade the older side", m.Protocol, ProtocolMin, ProtocolMax)
	}
	if m.Encrypted != encrypted {
		return fmt.Errorf("encryption mismatch (peer encrypted=%v, this peer encrypted=%v): give every peer the same password", m.Encrypted, encrypted)
	}
	return nil
}
