package kubeapi

import (
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// RESTConfig is an admin (system:masters) client configuration that dials
// through DialContext, so it works from the test process even when the
// apiserver listens only inside a network namespace.
func (s *APIServer) RESTConfig() *rest.Config {
	return &rest.Config{
		Host: s.URL,
		TLSClientConfig: rest.TLSClientConfig{
			CAFile: s.CACert, CertFile: s.AdminCert, KeyFile: s.AdminKey,
		},
		Dial:      s.DialContext,
		UserAgent: "weft-test",
	}
}

// Client is an admin clientset built from RESTConfig.
func (s *APIServer) Client() (kubernetes.Interface, error) {
	cs, err := kubernetes.NewForConfig(s.RESTConfig())
	if err != nil {
		return nil, fmt.Errorf("kubeapi: admin client: %w", err)
	}
	return cs, nil
}
