package kubecluster

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/kube/client/clientset"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/kube"
)

// The cluster's Event checks are only as good as what they reject: each
// case below is an Event (or a missing one) that must fail the check.

func ev(node, reason, typ, note string) NodeEvent {
	return NodeEvent{Node: node, Reason: reason, Type: typ, Note: note, Controller: kube.ReportingController, Instance: node}
}

func TestDecodeNodeEventsReadsCoreView(t *testing.T) {
	// What `kubectl get events -o json` prints for an events.k8s.io Event.
	out := []byte(`{"apiVersion":"v1","kind":"List","items":[
	 {"metadata":{"name":"node2.b","namespace":"default","creationTimestamp":"2026-12-01T00:00:02Z"},
	  "involvedObject":{"kind":"Node","name":"node2","uid":"node2","apiVersion":"v1"},
	  "reason":"WeftReady","message":"weft is ready: pods on this node can be networked","type":"Normal",
	  "eventTime":"2026-12-01T00:00:02.500000Z","reportingComponent":"weft","reportingInstance":"node2","action":"BecameReady"},
	 {"metadata":{"name":"node1.a","namespace":"default","creationTimestamp":"2026-12-01T00:00:01Z"},
	  "involvedObject":{"kind":"Node","name":"node1","uid":"node1","apiVersion":"v1"},
	  "reason":"WeftReady","message":"weft is ready","type":"Normal",
	  "eventTime":null,"reportingComponent":"weft","reportingInstance":"node1"}]}`)
	evs, err := decodeNodeEvents(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].Node != "node1" || evs[1].Node != "node2" {
		t.Fatalf("want both, oldest first: %+v", evs)
	}
	if want := time.Date(2026, 12, 1, 0, 0, 2, 500_000_000, time.UTC); !evs[1].Time.Equal(want) {
		t.Errorf("eventTime %s, want %s", evs[1].Time, want)
	}
	if want := time.Date(2026, 12, 1, 0, 0, 1, 0, time.UTC); !evs[0].Time.Equal(want) {
		t.Errorf("no eventTime: time %s, want the creation time %s", evs[0].Time, want)
	}
	if evs[1].Controller != "weft" || evs[1].Instance != "node2" || evs[1].Note == "" {
		t.Errorf("fields not read: %+v", evs[1])
	}
	if _, err := decodeNodeEvents([]byte("not json")); err == nil {
		t.Error("garbage decoded")
	}
}

func TestSinceKeepsEventsFromTheChangeOn(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	evs := []NodeEvent{{Node: "old", Time: t0.Add(-time.Second)}, {Node: "edge", Time: t0.Add(-time.Microsecond)}, {Node: "new", Time: t0.Add(time.Second)}}
	got := since(evs, t0)
	if len(got) != 2 || got[0].Node != "edge" || got[1].Node != "new" {
		t.Errorf("since: %+v", got)
	}
}

func TestReadyOnEvery(t *testing.T) {
	nodes := []string{"node1", "node2"}
	ok := []NodeEvent{ev("node1", kube.ReasonReady, "Normal", "ready"), ev("node2", kube.ReasonReady, "Normal", "ready")}
	if err := readyOnEvery(ok, nodes); err != nil {
		t.Errorf("good Events refused: %v", err)
	}
	if err := readyOnEvery(ok[:1], nodes); err == nil || !strings.Contains(err.Error(), "node2") || errors.Is(err, errStop) {
		t.Errorf("a node without its Event: %v (want a retryable error naming node2)", err)
	}
	other := ev("node2", kube.ReasonReady, "Normal", "ready")
	other.Instance = "node1"
	warn := ev("node2", kube.ReasonReady, "Warning", "ready")
	foreign := ev("node2", kube.ReasonReady, "Normal", "ready")
	foreign.Controller = "kubelet"
	for name, bad := range map[string]NodeEvent{"reported by another node": other, "wrong type": warn, "not weft's": foreign} {
		if err := readyOnEvery([]NodeEvent{ok[0], bad}, nodes); !errors.Is(err, errStop) {
			t.Errorf("%s: %v, want a final error", name, err)
		}
	}
}

func TestPasswordEventsOK(t *testing.T) {
	ips := map[string]string{"node1": "198.18.0.1", "node2": "198.18.0.2", "node3": "198.18.0.3"}
	pw := func(node, addr string) NodeEvent {
		return ev(node, kube.ReasonPasswordMismatch, "Warning",
			"refused the host at "+addr+": a peer has no password but this one has (repeats about this address are not reported for 10m0s)")
	}
	good := []NodeEvent{pw("node1", "198.18.0.2"), pw("node1", "198.18.0.3"), pw("node2", "198.18.0.3"), pw("node1", "198.18.0.2")}
	if err := passwordEventsOK(good, ips); err != nil {
		t.Errorf("good Events refused: %v", err)
	}
	if err := passwordEventsOK(nil, ips); err == nil || errors.Is(err, errStop) {
		t.Errorf("none yet: %v, want a retryable error", err)
	}
	for name, bad := range map[string][]NodeEvent{
		"its own address":   {pw("node1", "198.18.0.1")},
		"not a node":        {pw("node1", "198.18.9.9")},
		"unknown address":   {ev("node1", kube.ReasonPasswordMismatch, "Warning", "refused the host at an unknown address: x")},
		"rate limit broken": {pw("node1", "198.18.0.2"), pw("node1", "198.18.0.2"), pw("node1", "198.18.0.2")},
		"normal type":       {ev("node1", kube.ReasonPasswordMismatch, "Normal", "refused the host at 198.18.0.2: x")},
	} {
		if err := passwordEventsOK(bad, ips); !errors.Is(err, errStop) {
			t.Errorf("%s: %v, want a final error", name, err)
		}
	}
}

func TestReclaimEventsOK(t *testing.T) {
	rc := func(node, note string) NodeEvent { return ev(node, kube.ReasonRangeReclaimed, "Normal", note) }
	good := rc("node1", "took over 4096 addresses (10.32.0.0/20) of deleted node node3")
	if err := reclaimEventsOK([]NodeEvent{good}, "node3", 4096); err != nil {
		t.Errorf("good Event refused: %v", err)
	}
	if err := reclaimEventsOK(nil, "node3", 4096); err == nil || errors.Is(err, errStop) {
		t.Errorf("none yet: %v, want a retryable error", err)
	}
	for name, bad := range map[string]NodeEvent{
		"by the dead node":   rc("node3", "took over 4096 addresses (10.32.0.0/20) of deleted node node3"),
		"another node":       rc("node1", "took over 4096 addresses (10.32.0.0/20) of deleted node node2"),
		"more than it owned": rc("node1", "took over 8192 addresses (10.32.0.0/19) of deleted node node3"),
		"nothing":            rc("node1", "took over 0 addresses () of deleted node node3"),
		"unreadable":         rc("node1", "reclaimed node3"),
	} {
		if err := reclaimEventsOK([]NodeEvent{good, bad}, "node3", 4096); !errors.Is(err, errStop) {
			t.Errorf("%s: %v, want a final error", name, err)
		}
	}
}

// The notes the checks parse are the ones kube.Events writes: its Events,
// written to a fake API server, pass the checks.
func TestChecksAcceptKubeEvents(t *testing.T) {
	client := fake.NewClientset()
	var written []NodeEvent
	for _, node := range []string{"node1", "node2"} {
		e, err := kube.NewEvents(kube.EventsConfig{Client: clientset.Wrap(client), NodeName: node})
		if err != nil {
			t.Fatal(err)
		}
		e.Readiness(true, "")
		e.PasswordMismatch(netip.MustParseAddr("198.18.0.3"), "a peer has no password but this one has")
		e.RangeReclaimed("node3", []netip.Prefix{netip.MustParsePrefix("10.32.0.0/31"), netip.MustParsePrefix("10.32.0.4/32")}, 3)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { e.Run(ctx); close(done) }()
		deadline := time.Now().Add(10 * time.Second)
		for e.Written() < 3 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
		}
		cancel()
		<-done
		if e.Written() != 3 {
			t.Fatalf("%s: %d Events written, %d dropped", node, e.Written(), e.Dropped())
		}
	}
	l, err := client.EventsV1().Events("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range l.Items {
		written = append(written, NodeEvent{Node: x.Regarding.Name, Reason: x.Reason, Type: x.Type, Note: x.Note,
			Controller: x.ReportingController, Instance: x.ReportingInstance, Time: x.EventTime.Time})
	}
	of := func(reason string) []NodeEvent {
		var out []NodeEvent
		for _, e := range written {
			if e.Reason == reason {
				out = append(out, e)
			}
		}
		return out
	}
	if err := readyOnEvery(of(kube.ReasonReady), []string{"node1", "node2"}); err != nil {
		t.Error(err)
	}
	ips := map[string]string{"node1": "198.18.0.1", "node2": "198.18.0.2", "node3": "198.18.0.3"}
	if err := passwordEventsOK(of(kube.ReasonPasswordMismatch), ips); err != nil {
		t.Error(err)
	}
	if err := reclaimEventsOK(of(kube.ReasonRangeReclaimed), "node3", 4); err != nil {
		t.Error(err)
	}
}
