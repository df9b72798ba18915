package policy

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// world is the reference: Kubernetes' NetworkPolicy semantics written
// straight from the API documentation, over the API objects, sharing no
// code with the compiler. Invalid parts match nothing (the engine's
// fail-closed reading of objects the API server would have refused).
type world struct {
	policies   []*networkingv1.NetworkPolicy
	namespaces map[string]map[string]string
	pods       []Pod
	node       []netip.Addr
	denyLog    bool // Config.DenyLog of the Engine under test: changes no verdict
}

func (w *world) podByIP(a netip.Addr) *Pod {
	for i := range w.pods {
		for _, ip := range w.pods[i].IPs {
			if ip == a {
				return &w.pods[i]
			}
		}
	}
	return nil
}

func (w *world) isNode(a netip.Addr) bool {
	for _, n := range w.node {
		if n == a {
			return true
		}
	}
	return false
}

func (w *world) nsLabels(ns string) labels.Set {
	s := labels.Set{"kubernetes.io/metadata.name": ns}
	for k, v := range w.namespaces[ns] {
		s[k] = v
	}
	return s
}

func types(np *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		ingress = ingress || t == networkingv1.PolicyTypeIngress
		egress = egress || t == networkingv1.PolicyTypeEgress
	}
	return ingress, egress
}

func (w *world) selects(np *networkingv1.NetworkPolicy, p *Pod) bool {
	if np.Namespace != p.Namespace {
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	return err == nil && s.Matches(labels.Set(p.Labels))
}

// isolated reports whether local pod p is isolated for ingress / egress.
func (w *world) isolated(p *Pod) (ingress, egress bool) {
	if p == nil || !p.Local {
		return false, false
	}
	for _, np := range w.policies {
		if !w.selects(np, p) {
			continue
		}
		i, e := types(np)
		ingress, egress = ingress || i, egress || e
	}
	return ingress, egress
}

// allowed is the verdict for pk on this node.
func (w *world) allowed(pk packet) bool {
	if pk.state == ctEstablished {
		return true
	}
	src, dst := w.podByIP(pk.src), w.podByIP(pk.dst)
	_, srcEgress := w.isolated(src)
	dstIngress, _ := w.isolated(dst)
	if pk.state == ctInvalid && (srcEgress || dstIngress) {
		return false
	}
	if srcEgress && !w.isNode(pk.dst) {
		ok := false
		for _, np := range w.policies {
			if _, e := types(np); !e || !w.selects(np, src) {
				continue
			}
			for _, r := range np.Spec.Egress {
				if w.peersMatch(np.Namespace, r.To, pk.dst, dst) && w.portsMatch(r.Ports, pk, dst) {
					ok = true
				}
			}
		}
		if !ok {
			return false
		}
	}
	if dstIngress && !w.isNode(pk.src) {
		ok := false
		for _, np := range w.policies {
			if i, _ := types(np); !i || !w.selects(np, dst) {
				continue
			}
			for _, r := range np.Spec.Ingress {
				if w.peersMatch(np.Namespace, r.From, pk.src, src) && w.portsMatch(r.Ports, pk, dst) {
					ok = true
				}
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// peersMatch: an empty list matches everyone, else any peer.
func (w *world) peersMatch(ns string, peers []networkingv1.NetworkPolicyPeer, a netip.Addr, p *Pod) bool {
	if len(peers) == 0 {
		return true
	}
	for _, pr := range peers {
		if w.peerMatch(ns, pr, a, p) {
			return true
		}
	}
	return false
}

func (w *world) peerMatch(ns string, pr networkingv1.NetworkPolicyPeer, a netip.Addr, p *Pod) bool {
	if pr.IPBlock != nil {
		if pr.PodSelector != nil || pr.NamespaceSelector != nil {
			return false
		}
		cidr, err := netip.ParsePrefix(pr.IPBlock.CIDR)
		if err != nil || !cidr.Contains(a) {
			return false
		}
		for _, ex := range pr.IPBlock.Except {
			e, err := netip.ParsePrefix(ex)
			if err != nil || e.Contains(a) {
				return false
			}
		}
		return true
	}
	if pr.PodSelector == nil && pr.NamespaceSelector == nil {
		return false
	}
	if p == nil {
		return false // selectors only ever match pods
	}
	if pr.NamespaceSelector == nil {
		if p.Namespace != ns {
			return false
		}
	} else {
		s, err := metav1.LabelSelectorAsSelector(pr.NamespaceSelector)
		if err != nil || !s.Matches(w.nsLabels(p.Namespace)) {
			return false
		}
	}
	if pr.PodSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(pr.PodSelector)
		if err != nil || !s.Matches(labels.Set(p.Labels)) {
			return false
		}
	}
	return true
}

func protoNum(p *corev1.Protocol) (uint8, bool) {
	if p == nil {
		return 6, true
	}
	switch *p {
	case "TCP":
		return 6, true
	case "UDP":
		return 17, true
	case "SCTP":
		return 132, true
	}
	return 0, false
}

// portsMatch: an empty list matches all traffic, else any entry.
func (w *world) portsMatch(ports []networkingv1.NetworkPolicyPort, pk packet, dst *Pod) bool {
	if len(ports) == 0 {
		return true
	}
	for _, pp := range ports {
		proto, ok := protoNum(pp.Protocol)
		if !ok || proto != pk.proto {
			continue
		}
		switch {
		case pp.Port == nil:
			if pp.EndPort == nil {
				return true
			}
		case pp.Port.Type == intstr.String:
			if pp.EndPort != nil || dst == nil {
				continue
			}
			for _, np := range dst.Ports {
				npProto := np.Protocol
				if npProto == "" {
					npProto = "TCP"
				}
				if n, ok := protoNum(&npProto); ok && n == proto && np.Name == pp.Port.StrVal &&
					np.Port >= 1 && np.Port <= 65535 && int(np.Port) == int(pk.dport) {
					return true
				}
			}
		default:
			lo, hi := int(pp.Port.IntVal), int(pp.Port.IntVal)
			if pp.EndPort != nil {
				hi = int(*pp.EndPort)
			}
			if lo >= 1 && hi <= 65535 && lo <= hi && int(pk.dport) >= lo && int(pk.dport) <= hi {
				return true
			}
		}
	}
	return false
}
