package kubeapi

import (
	"net"

	"github.com/weftnet/weft/test/testpki"
)

// pki is the CA and the certificates one apiserver needs.
type pki struct {
	*testpki.PKI
	ServingCert, ServingK string
	AdminCert, AdminKey   string
}

// genPKI writes a throw-away CA, the apiserver's serving cert for 127.0.0.1,
// the kubernetes Service address and serveIP, an admin client cert in
// system:masters and the service-account signing key into dir.
func genPKI(dir string, serveIP net.IP) (*pki, error) {
	base, err := testpki.New(dir)
	if err != nil {
		return nil, err
	}
	p := &pki{PKI: base}
	if p.ServingCert, p.ServingK, err = base.Serving("apiserver", net.IPv4(127, 0, 0, 1), net.IPv4(10, 96, 0, 1), serveIP); err != nil {
		return nil, err
	}
	if p.AdminCert, p.AdminKey, err = base.Client("admin", "admin", "system:masters"); err != nil {
		return nil, err
	}
	return p, nil
}
