package kubecluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"time"
)

// porterCert returns the files `agnhost porter` serves TLS with: it loads
// localhost.crt and localhost.key from its working directory (/) unless
// CERT_FILE and KEY_FILE say otherwise, and the upstream agnhost image ships
// a self-signed pair there. Without them every TLS port of the Proxy
// conformance test ("should proxy through a service and a pod") refuses the
// connection. The pair is made here, like upstream's, for 127.0.0.1 and ::1;
// nothing verifies it (the apiserver's proxy does not).
func porterCert() ([]imageFile, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("porter key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, fmt.Errorf("porter serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"weft conformance porter"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("porter certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("porter key: %w", err)
	}
	return []imageFile{
		{path: "localhost.crt", data: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), mode: 0o644},
		{path: "localhost.key", data: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), mode: 0o600},
	}, nil
}
