package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/sys/cpu"
)

// cipherID names the data-plane AEAD negotiated in the handshake. The values
// travel inside the encrypted handshake payload, so they are part of the
// protocol.
type cipherID uint8

const (
	cipherChaCha20Poly1305 cipherID = 1
	cipherAES256GCM        cipherID = 2
)

// Bits of the initiator's cipher offer.
const (
	offerChaCha = 1 << 0 // always set: every peer can run ChaCha20-Poly1305
	offerAES    = 1 << 1 // set when the initiator has AES hardware
)

func (c cipherID) String() string {
	switch c {
	case cipherChaCha20Poly1305:
		return "chacha20-poly1305"
	case cipherAES256GCM:
		return "aes-256-gcm"
	}
	return fmt.Sprintf("cipher(%d)", uint8(c))
}

// hasAESHardware reports whether AES-GCM runs in hardware here. Without it Go
// falls back to a constant-time software AES that is several times slower
// than ChaCha20-Poly1305.
func hasAESHardware() bool {
	return (cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ) ||
		(cpu.ARM64.HasAES && cpu.ARM64.HasPMULL) ||
		(cpu.S390X.HasAES && cpu.S390X.HasAESGCM)
}

// chooseCipher is the responder's rule: AES-256-GCM only when both ends have
// AES hardware, otherwise ChaCha20-Poly1305.
func chooseCipher(offer uint8, localAES bool) cipherID {
	if localAES && offer&offerAES != 0 {
		return cipherAES256GCM
	}
	return cipherChaCha20Poly1305
}

// newAEAD makes the data-plane AEAD for one direction of a session. Both
// ciphers use 32-byte keys and 12-byte nonces, so the wire format is the same.
func newAEAD(id cipherID, key *[32]byte) (cipher.AEAD, error) {
	switch id {
	case cipherAES256GCM:
		block, err := aes.NewCipher(key[:])
		if err != nil {
			return nil, fmt.Errorf("aes: %w", err)
		}
		return cipher.NewGCM(block)
	case cipherChaCha20Poly1305:
		return chacha20poly1305.New(key[:])
	}
	return nil, fmt.Errorf("%w: %v", ErrCipherMismatch, id)
}
