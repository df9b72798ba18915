package kube

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/test/kubeapi"
)

// testNodeEvents writes Events with the DaemonSet's ServiceAccount (so the
// manifest's RBAC is proven enough) and reads them back as an operator
// does: the events.k8s.io API, `kubectl get events` on the Node and
// `kubectl describe node`.
func testNodeEvents(t *testing.T, ctx context.Context, api *kubeapi.APIServer, admin kubernetes.Interface, agent Client, nodes *nodeMaker) {
	const node = "ev-node"
	nodes.create(node, "198.18.4.1")
	e, err := NewEvents(EventsConfig{Client: agent, NodeName: node, Logger: testLogger(t, node)})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { e.Run(rctx); close(done) }()
	defer func() { stop(); <-done }()

	e.Readiness(true, "")
	e.RangeReclaimed("ev-dead", []netip.Prefix{netip.MustParsePrefix("10.40.0.0/16")}, 65536)
	e.PasswordMismatch(netip.MustParseAddr("198.18.4.9"), "a peer uses a different password")
	e.PasswordMismatch(netip.MustParseAddr("198.18.4.9"), "rate-limited: no second Event")
	e.Readiness(false, "host network broken: route to the bridge missing")

	want := map[string]string{ // reason -> type
		ReasonReady: corev1.EventTypeNormal, ReasonRangeReclaimed: corev1.EventTypeNormal,
		ReasonPasswordMismatch: corev1.EventTypeWarning, ReasonNotReady: corev1.EventTypeWarning,
	}
	var got []string
	waitFor(t, 20*time.Second, "the Node's Events", func() bool {
		l, err := admin.EventsV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{FieldSelector: "regarding.name=" + node})
		if err != nil {
			t.Logf("list events: %v", err)
			return false
		}
		got = got[:0]
		for _, ev := range l.Items {
			got = append(got, ev.Reason)
			if typ, ok := want[ev.Reason]; !ok || ev.Type != typ || ev.Regarding.Kind != "Node" ||
				ev.ReportingController != ReportingController || ev.ReportingInstance != node {
				t.Fatalf("unexpected Event: reason %q type %q regarding %+v controller %q instance %q",
					ev.Reason, ev.Type, ev.Regarding, ev.ReportingController, ev.ReportingInstance)
			}
			if ev.Reason == ReasonPasswordMismatch && !strings.Contains(ev.Note, "198.18.4.9") {
				t.Fatalf("password Event does not name the peer: %q", ev.Note)
			}
		}
		return len(l.Items) == len(want)
	})
	if e.Dropped() != 0 {
		t.Errorf("%d Events dropped (got %v)", e.Dropped(), got)
	}
	// The operator's view: core/v1 Events of the Node, and describe.
	out, err := api.Kubectl("get", "events", "-A", "--field-selector", "involvedObject.kind=Node,involvedObject.name="+node,
		"-o", "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}")
	if err != nil {
		t.Fatalf("kubectl get events: %v\n%s", err, out)
	}
	lines := strings.Fields(string(out))
	slices.Sort(lines)
	wantReasons := []string{ReasonNotReady, ReasonPasswordMismatch, ReasonRangeReclaimed, ReasonReady}
	if !slices.Equal(lines, wantReasons) {
		t.Errorf("kubectl get events on the Node: %v, want %v", lines, wantReasons)
	}
	out, err = api.Kubectl("describe", "node", node)
	if err != nil || !strings.Contains(string(out), ReasonRangeReclaimed) || !strings.Contains(string(out), "ev-dead") {
		t.Errorf("kubectl describe node does not show weft's Events (err %v):\n%s", err, out)
	}
}
