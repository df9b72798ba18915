package kubecluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/weftnet/weft/kube"
)

// NodeEvent is one Event weft wrote on a Node, as the operator reads it with
// `kubectl get events -A --field-selector involvedObject.kind=Node,reason=R`.
type NodeEvent struct {
	Node, Reason, Type, Note string
	Controller, Instance     string // reportingController, reportingInstance
	Time                     time.Time
}

// NodeEvents lists the Node Events with the given reason, oldest first, the
// way site/operations.md tells the operator to (core/v1 view of the
// events.k8s.io Events the agents write).
func (c *Cluster) NodeEvents(ctx context.Context, reason string) ([]NodeEvent, error) {
	out, err := c.Kubectl(ctx, "get", "events", "-A", "-o", "json",
		"--field-selector", "involvedObject.kind=Node,reason="+reason)
	if err != nil {
		return nil, err
	}
	return decodeNodeEvents(out)
}

func decodeNodeEvents(out []byte) ([]NodeEvent, error) {
	var list corev1.EventList
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, fmt.Errorf("decode events: %w", err)
	}
	evs := make([]NodeEvent, 0, len(list.Items))
	for _, e := range list.Items {
		t := e.EventTime.Time
		if t.IsZero() { // an Event written through core/v1 without eventTime
			t = e.CreationTimestamp.Time
		}
		evs = append(evs, NodeEvent{
			Node: e.InvolvedObject.Name, Reason: e.Reason, Type: e.Type, Note: e.Message,
			Controller: e.ReportingController, Instance: e.ReportingInstance, Time: t,
		})
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].Time.Before(evs[j].Time) })
	return evs, nil
}

// eventSlack absorbs eventTime's microsecond precision when an Event is
// compared with a time.Now taken just before the change that caused it.
const eventSlack = time.Millisecond

// since keeps the Events at or after t.
func since(evs []NodeEvent, t time.Time) []NodeEvent {
	var out []NodeEvent
	for _, e := range evs {
		if !e.Time.Before(t.Add(-eventSlack)) {
			out = append(out, e)
		}
	}
	return out
}

// wellFormed checks what every weft Event must carry: written by weft, by
// the agent of the Node it is about, of the type its reason has.
func wellFormed(e NodeEvent) error {
	want := map[string]string{
		kube.ReasonReady: corev1.EventTypeNormal, kube.ReasonNotReady: corev1.EventTypeWarning,
		kube.ReasonRangeReclaimed: corev1.EventTypeNormal, kube.ReasonPasswordMismatch: corev1.EventTypeWarning,
		kube.ReasonUnderlayChanged: corev1.EventTypeNormal,
	}[e.Reason]
	switch {
	case want == "":
		return fmt.Errorf("Event on %s: unknown reason %q", e.Node, e.Reason)
	case e.Type != want:
		return fmt.Errorf("%s Event on %s: type %q, want %q", e.Reason, e.Node, e.Type, want)
	case e.Controller != kube.ReportingController:
		return fmt.Errorf("%s Event on %s: reportingController %q, want %q", e.Reason, e.Node, e.Controller, kube.ReportingController)
	case e.Instance != e.Node:
		return fmt.Errorf("%s Event on %s: reported by %q, not by the node's own agent", e.Reason, e.Node, e.Instance)
	case e.Note == "":
		return fmt.Errorf("%s Event on %s: no note", e.Reason, e.Node)
	}
	return nil
}

// readyOnEvery checks that each of nodes has a WeftReady Event in evs.
func readyOnEvery(evs []NodeEvent, nodes []string) error {
	have := map[string]bool{}
	for _, e := range evs {
		if err := wellFormed(e); err != nil {
			return fmt.Errorf("%w: %w", errStop, err)
		}
		have[e.Node] = true
	}
	var missing []string
	for _, n := range nodes {
		if !have[n] {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("no %s Event yet on %s", kube.ReasonReady, strings.Join(missing, ", "))
	}
	return nil
}

// refusedAddr reads the peer address out of a WeftPasswordMismatch note
// ("refused the host at ADDR: ...").
var refusedAddr = regexp.MustCompile(`^refused the host at ([0-9a-fA-F.:]+):`)

// passwordEventsOK checks the WeftPasswordMismatch Events of a password
// switch: at least one; each names another node of the cluster (nodeIPs:
// name -> underlay address); and the per-address rate limit held, so no node
// reported one address more than twice (once per agent process: only the
// hand-off can give a node two processes in the window).
func passwordEventsOK(evs []NodeEvent, nodeIPs map[string]string) error {
	if len(evs) == 0 {
		return fmt.Errorf("no %s Event: while the mesh was mixed, no node reported a peer with another password", kube.ReasonPasswordMismatch)
	}
	byIP := map[string]string{}
	for n, ip := range nodeIPs {
		byIP[ip] = n
	}
	per := map[string]int{}
	for _, e := range evs {
		if err := wellFormed(e); err != nil {
			return fmt.Errorf("%w: %w", errStop, err)
		}
		m := refusedAddr.FindStringSubmatch(e.Note)
		if m == nil {
			return fmt.Errorf("%w: %s Event on %s does not name the peer: %q", errStop, e.Reason, e.Node, e.Note)
		}
		peer, ok := byIP[m[1]]
		if !ok || peer == e.Node {
			return fmt.Errorf("%w: %s Event on %s names %s, not another node's address", errStop, e.Reason, e.Node, m[1])
		}
		key := e.Node + " <- " + peer
		if per[key]++; per[key] > 2 {
			return fmt.Errorf("%w: %s reported %s %d times within one password switch: the per-address limit did not hold",
				errStop, e.Node, peer, per[key])
		}
	}
	return nil
}

// reclaimedAddrs reads the address count out of a WeftRangeReclaimed note
// ("took over N addresses (RANGES) of deleted node NAME").
var reclaimedAddrs = regexp.MustCompile(`^took over ([0-9]+) addresses \(([^)]*)\) of deleted node (\S+)$`)

// reclaimEventsOK checks the WeftRangeReclaimed Events after dead's Node was
// deleted: at least one, each by a surviving node, naming dead and at most
// the owned addresses dead had.
func reclaimEventsOK(evs []NodeEvent, dead string, owned uint64) error {
	if len(evs) == 0 {
		return fmt.Errorf("no %s Event about %s yet", kube.ReasonRangeReclaimed, dead)
	}
	for _, e := range evs {
		if err := wellFormed(e); err != nil {
			return fmt.Errorf("%w: %w", errStop, err)
		}
		m := reclaimedAddrs.FindStringSubmatch(e.Note)
		if m == nil {
			return fmt.Errorf("%w: %s Event on %s: note %q", errStop, e.Reason, e.Node, e.Note)
		}
		n, err := strconv.ParseUint(m[1], 10, 64)
		switch {
		case e.Node == dead:
			return fmt.Errorf("%w: %s Event written on the deleted node %s", errStop, e.Reason, dead)
		case m[3] != dead:
			return fmt.Errorf("%w: %s Event on %s names %s, but only %s was deleted", errStop, e.Reason, e.Node, m[3], dead)
		case err != nil || n == 0 || n > owned || m[2] == "":
			return fmt.Errorf("%w: %s Event on %s took over %s addresses (%s); %s owned %d", errStop, e.Reason, e.Node, m[1], m[2], dead, owned)
		}
	}
	return nil
}

// runningNodes names the nodes whose processes are up.
func (c *Cluster) runningNodes() []string {
	var names []string
	for _, n := range c.Nodes {
		if n.Running() {
			names = append(names, n.Name)
		}
	}
	return names
}

func formatEvents(evs []NodeEvent) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "%s  %-7s %-20s %-6s %s\n", e.Time.Format("15:04:05.000"), e.Type, e.Reason, e.Node, e.Note)
	}
	return b.String()
}

// CheckReadyEvents waits until every running node has a WeftReady Event
// written at or after from: the first readiness of each agent start is one
// (an install, a restart). When noNotReady is set, a WeftNotReady Event since
// from fails the check: readiness Events are transitions, and a healthy
// install has none.
func (s *Scenario) CheckReadyEvents(ctx context.Context, from time.Time, noNotReady bool) error {
	c := s.C
	var got []NodeEvent
	err := c.wait(ctx, time.Minute, "a WeftReady Event on every Node", func() error {
		evs, err := c.NodeEvents(ctx, kube.ReasonReady)
		if err != nil {
			return err
		}
		got = since(evs, from)
		return readyOnEvery(got, c.runningNodes())
	})
	if err != nil {
		return err
	}
	s.Show("$ kubectl get events -A --field-selector involvedObject.kind=Node,reason="+kube.ReasonReady, formatEvents(got))
	if noNotReady {
		evs, err := c.NodeEvents(ctx, kube.ReasonNotReady)
		if err != nil {
			return err
		}
		if bad := since(evs, from); len(bad) > 0 {
			return fmt.Errorf("%s Events while every agent became ready:\n%s", kube.ReasonNotReady, formatEvents(bad))
		}
	}
	// The operator's other way in: `kubectl describe node` lists them too.
	for _, n := range c.runningNodes() {
		out, err := c.Kubectl(ctx, "describe", "node", n)
		if err != nil {
			return err
		}
		if !strings.Contains(string(out), kube.ReasonReady) {
			return fmt.Errorf("kubectl describe node %s does not show its %s Event", n, kube.ReasonReady)
		}
	}
	return nil
}

// CheckPasswordEvents checks the WeftPasswordMismatch Events written since
// from, a password switch during which encrypted and plaintext agents met.
func (s *Scenario) CheckPasswordEvents(ctx context.Context, from time.Time) error {
	c := s.C
	ips := map[string]string{}
	for _, n := range c.Nodes {
		ips[n.Name] = n.IP.String()
	}
	var got []NodeEvent
	err := c.wait(ctx, 30*time.Second, "WeftPasswordMismatch Events of the password switch", func() error {
		evs, err := c.NodeEvents(ctx, kube.ReasonPasswordMismatch)
		if err != nil {
			return err
		}
		got = since(evs, from)
		return passwordEventsOK(got, ips)
	})
	if err != nil {
		return err
	}
	s.Show("$ kubectl get events -A --field-selector involvedObject.kind=Node,reason="+kube.ReasonPasswordMismatch, formatEvents(got))
	return nil
}

// CheckReclaimEvents waits for the WeftRangeReclaimed Event(s) of dead's
// ranges, which owned addresses before its Node was deleted at from.
func (s *Scenario) CheckReclaimEvents(ctx context.Context, from time.Time, dead string, owned uint64) error {
	c := s.C
	var got []NodeEvent
	err := c.wait(ctx, time.Minute, "a WeftRangeReclaimed Event about "+dead, func() error {
		evs, err := c.NodeEvents(ctx, kube.ReasonRangeReclaimed)
		if err != nil {
			return err
		}
		got = since(evs, from)
		return reclaimEventsOK(got, dead, owned)
	})
	if err != nil {
		return err
	}
	s.Show("$ kubectl get events -A --field-selector involvedObject.kind=Node,reason="+kube.ReasonRangeReclaimed, formatEvents(got))
	return nil
}

// errNoOwner: the node to drop owned nothing, so no reclaim would follow.
var errNoOwner = errors.New("owns no addresses")

// Events is the Node Events part of the scenario alone, after Install (which
// checks WeftReady), with the operator's views (views.go): the password switch (WeftPasswordMismatch while the
// mesh is mixed) and a dropped node (WeftRangeReclaimed). Run does the same
// steps between its measurements.
func (s *Scenario) Events(ctx context.Context, r *Results) error {
	c := s.C
	s.Say("   The operator's views: weft status mesh from any node, weft ps naming the CoreDNS pods.")
	if err := s.CheckMeshView(ctx); err != nil {
		return err
	}
	dns, err := c.WaitPods(ctx, 2*time.Minute, "kube-system", "k8s-app=kube-dns", func(pods []PodStatus) error {
		return allRunning(pods, 2)
	})
	if err != nil {
		return err
	}
	if err := s.CheckPodNames(ctx, "kube-system", dns); err != nil {
		return err
	}
	s.Say("14d. The Secret gets a password and the agents restart with it, one node at a time.")
	switched := time.Now()
	if err := s.setSecret(ctx, true); err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, "-n", "weft-system", "rollout", "restart", "ds/weft"); err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, "-n", "weft-system", "rollout", "status", "ds/weft", "--timeout=5m"); err != nil {
		return err
	}
	if err := s.checkDatapath(ctx, true); err != nil {
		return err
	}
	if err := s.CheckReadyEvents(ctx, switched, false); err != nil {
		return err
	}
	s.Say("   the agents that met a peer with the other password said so on their Node:")
	if err := s.CheckPasswordEvents(ctx, switched); err != nil {
		return err
	}
	return s.DropNode(ctx, r)
}
