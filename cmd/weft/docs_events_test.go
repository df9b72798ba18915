package main

import (
	"context"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/kube/client/clientset"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/kube"
)

// TestOperationsDocumentsEvents checks the Kubernetes Events section of
// operations.md against what kube.Events writes (every reason, with its
// type, and no other) and against the ClusterRole's verbs on Events.
func TestOperationsDocumentsEvents(t *testing.T) {
	// What the agent writes: each kind of Event once, on a fake API server.
	client := fake.NewClientset()
	e, err := kube.NewEvents(kube.EventsConfig{Client: clientset.Wrap(client), NodeName: "node1"})
	if err != nil {
		t.Fatal(err)
	}
	e.Readiness(true, "")
	e.Readiness(false, "host network broken")
	e.RangeReclaimed("node2", []netip.Prefix{netip.MustParsePrefix("10.32.0.0/24")}, 256)
	e.PasswordMismatch(netip.MustParseAddr("198.18.0.2"), "a peer uses a different password")
	e.UnderlayChanged(netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.11"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for e.Written()+e.Dropped() < 5 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
	cancel()
	<-done
	l, err := client.EventsV1().Events("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	written := map[string]string{} // reason -> type
	for _, ev := range l.Items {
		written[ev.Reason] = ev.Type
	}
	if len(written) != 5 {
		t.Fatalf("the agent wrote %v, want five kinds of Event", written)
	}

	doc := readFile(t, filepath.Join(repoRoot, "site", "operations.md"))
	if !anchors(doc)["kubernetes-events"] {
		t.Fatal("operations.md: no section #kubernetes-events")
	}
	documented := map[string]string{}
	row := regexp.MustCompile("^\\| `(Weft[A-Za-z]+)` \\| (Normal|Warning) \\|")
	for _, line := range strings.Split(doc, "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			documented[m[1]] = m[2]
		}
	}
	for reason, typ := range written {
		if documented[reason] != typ {
			t.Errorf("operations.md: Event %s documented as %q, the agent writes it as %s", reason, documented[reason], typ)
		}
	}
	for reason := range documented {
		if _, ok := written[reason]; !ok {
			t.Errorf("operations.md documents the Event %s, which the agent never writes", reason)
		}
	}

	// The verbs the page says the ClusterRole grants are the manifest's.
	manifest := readFile(t, filepath.Join(repoRoot, "prog", "kube", "weft.yaml"))
	rule := regexp.MustCompile(`apiGroups: \[events\.k8s\.io\]\s*\n\s*resources: \[events\]\s*\n\s*verbs: \[([^\]]*)\]`).FindStringSubmatch(manifest)
	if rule == nil {
		t.Fatal("prog/kube/weft.yaml: no rule on events.k8s.io events")
	}
	var verbs []string
	for _, v := range strings.Split(rule[1], ",") {
		verbs = append(verbs, strings.TrimSpace(v))
	}
	said := regexp.MustCompile("(?s)grants? (.+?) on `events\\.k8s\\.io` `events`").FindStringSubmatch(doc)
	if said == nil {
		t.Fatal("operations.md does not say which verbs the ClusterRole grants on events.k8s.io events")
	}
	var saidVerbs []string
	for _, m := range regexp.MustCompile("`([a-z]+)`").FindAllStringSubmatch(said[1], -1) {
		saidVerbs = append(saidVerbs, m[1])
	}
	slices.Sort(verbs)
	slices.Sort(saidVerbs)
	if !slices.Equal(verbs, saidVerbs) {
		t.Errorf("operations.md says the ClusterRole grants %v on Events; prog/kube/weft.yaml grants %v", saidVerbs, verbs)
	}
}
