package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoFullKubernetesClient: the weft binary must not link client-go's
// clientset, informer factory or leader election (which pulls the
// clientset in): they register every API group at start and made every
// agent, in Kubernetes or not, 16 MB larger in memory (see kube/client).
func TestNoFullKubernetesClient(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go toolchain")
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		switch {
		case p == "k8s.io/client-go/kubernetes",
			strings.HasPrefix(p, "k8s.io/client-go/kubernetes/"),
			strings.HasPrefix(p, "k8s.io/client-go/informers"),
			strings.HasPrefix(p, "k8s.io/client-go/tools/leaderelection"):
			t.Errorf("weft links %s", p)
		}
	}
}
