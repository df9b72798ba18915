// Package wire defines the header weft puts in front of every pod packet it
// carries between hosts in a UDP datagram.
//
// Layout (all multi-byte fields big-endian):
//
//	 0      1      2      3      4              8
//	+------+------+------+------+--------------+
//	| ver  | type | flags| rsvd |    index     |   Header (8 bytes)
//	+------+------+------+------+--------------+
//
//	ver    protocol version, currently 1. A receiver drops other versions.
//	type   what follows: TypeData (a plaintext IP packet) or TypeEncrypted.
//	flags  per-message flags; receivers ignore unknown ones. FlagCsumPartial:
//	       the inner packet's TCP/UDP checksum holds only the pseudo-header
//	       sum, for the receiving kernel to trust as CHECKSUM_PARTIAL (or
//	       for the receiver to complete).
//	rsvd   must be zero, so that it can be given a meaning later.
//	index  TypeData: the sender's 32-bit peer ID (informational only; the
//	       receiver identifies the sender by the datagram's source address).
//	       TypeEncrypted: the receiver's session index, chosen by the receiver
//	       during the handshake.
//
// An encrypted message extends the header with an 8-byte counter (the AEAD
// nonce) and ends with a 16-byte authentication tag:
//
//	| Header (8) | counter (8) | ciphertext of the IP packet | tag (16) |
//
// The whole 16-byte encrypted header is meant to be authenticated as
// additional data by router/crypto.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Version is the only protocol version this code speaks.
const Version = 1

// Sizes of the framing, in bytes.
const (
	HeaderLen          = 8             // the common header
	CounterLen         = 8             // nonce counter of an encrypted message
	EncryptedHeaderLen = HeaderLen + 8 // common header + counter
	TagLen             = 16            // AEAD tag at the end of an encrypted message
)

// Flags.
const (
	// FlagCsumPartial: the inner packet is IPv4 TCP or UDP and its checksum
	// field holds only the pseudo-header sum. The payload is covered in
	// transit by the outer UDP checksum or the AEAD tag instead.
	FlagCsumPartial uint8 = 1 << 0
)

// Type says what a message carries.
type Type uint8

const (
	// TypeData carries one plaintext IP packet after the header.
	TypeData Type = 1
	// TypeEncrypted carries one AEAD-sealed IP packet (router/crypto).
	TypeEncrypted Type = 2
	// TypeHandshake is reserved for router/crypto's key exchange messages.
	TypeHandshake Type = 3
)

func (t Type) String() string {
	switch t {
	case TypeData:
		return "data"
	case TypeEncrypted:
		return "encrypted"
	case TypeHandshake:
		return "handshake"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

func (t Type) known() bool { return t >= TypeData && t <= TypeHandshake }

// Errors returned by the decoders. They are returned as they are, not
// wrapped with the offending value, so that dropping a flood of bad datagrams
// costs no allocation.
var (
	ErrShort    = errors.New("wire: message too short")
	ErrVersion  = errors.New("wire: unsupported version")
	ErrType     = errors.New("wire: unknown message type")
	ErrReserved = errors.New("wire: reserved field not zero")
)

// Header is the decoded common header.
type Header struct {
	Version uint8
	Type    Type
	Flags   uint8
	Index   uint32
}

// Put writes h into b[:HeaderLen]; b must be at least HeaderLen long.
// The reserved byte is written as zero.
func (h Header) Put(b []byte) {
	_ = b[HeaderLen-1]
	b[0] = h.Version
	b[1] = byte(h.Type)
	b[2] = h.Flags
	b[3] = 0
	binary.BigEndian.PutUint32(b[4:8], h.Index)
}

// PutData writes the header of a TypeData message with the sender's ID.
func PutData(b []byte, senderID uint32, flags uint8) {
	Header{Version: Version, Type: TypeData, Flags: flags, Index: senderID}.Put(b)
}

// Decode parses and checks the common header at the front of msg.
// It never panics; errors are ErrShort, ErrVersion, ErrType or ErrReserved.
func Decode(msg []byte) (Header, error) {
	if len(msg) < HeaderLen {
		return Header{}, ErrShort
	}
	h := Header{
		Version: msg[0],
		Type:    Type(msg[1]),
		Flags:   msg[2],
		Index:   binary.BigEndian.Uint32(msg[4:8]),
	}
	if h.Version != Version {
		return h, ErrVersion
	}
	if !h.Type.known() {
		return h, ErrType
	}
	if msg[3] != 0 {
		return h, ErrReserved
	}
	return h, nil
}

// DecodeData checks that msg is a TypeData message and returns its inner
// packet (a sub-slice of msg, not a copy).
func DecodeData(msg []byte) (Header, []byte, error) {
	h, err := Decode(msg)
	if err != nil {
		return h, nil, err
	}
	if h.Type != TypeData {
		return h, nil, ErrType
	}
	return h, msg[HeaderLen:], nil
}

// EncryptedHeader is the decoded header of a TypeEncrypted message.
type EncryptedHeader struct {
	Header
	Counter uint64
}

// PutEncrypted writes the 16-byte header of a TypeEncrypted message.
func PutEncrypted(b []byte, receiverIndex uint32, counter uint64, flags uint8) {
	_ = b[EncryptedHeaderLen-1]
	Header{Version: Version, Type: TypeEncrypted, Flags: flags, Index: receiverIndex}.Put(b)
	binary.BigEndian.PutUint64(b[HeaderLen:EncryptedHeaderLen], counter)
}

// DecodeEncrypted checks that msg is a TypeEncrypted message long enough to
// hold its header and tag, and returns the header. The ciphertext is
// msg[EncryptedHeaderLen:len(msg)-TagLen], possibly empty.
func DecodeEncrypted(msg []byte) (EncryptedHeader, error) {
	h, err := Decode(msg)
	if err != nil {
		return EncryptedHeader{Header: h}, err
	}
	if h.Type != TypeEncrypted {
		return EncryptedHeader{Header: h}, ErrType
	}
	if len(msg) < EncryptedHeaderLen+TagLen {
		return EncryptedHeader{Header: h}, ErrShort
	}
	return EncryptedHeader{Header: h, Counter: binary.BigEndian.Uint64(msg[HeaderLen:EncryptedHeaderLen])}, nil
}
