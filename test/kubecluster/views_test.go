package kubecluster

import (
	"testing"

	"github.com/weftnet/weft/api"
)

func TestMeshOK(t *testing.T) {
	nodes := []string{"node1", "node2"}
	peer := func(name, other, state string, ready bool, version string) api.PeerHealth {
		return api.PeerHealth{Name: name, Ready: ready, Version: version, Connections: []api.PeerLink{{Peer: other, State: state}}}
	}
	good := api.MeshHealth{Peers: []api.PeerHealth{peer("node1", "node2", "established", true, "v1"), peer("node2", "node1", "established", true, "v1")}}
	if err := meshOK(good, nodes, "v1"); err != nil {
		t.Errorf("healthy mesh refused: %v", err)
	}
	if err := meshOK(good, nodes, ""); err != nil {
		t.Errorf("no version to check: %v", err)
	}
	for name, m := range map[string]api.MeshHealth{
		"a node missing":  {Peers: good.Peers[:1]},
		"a stranger":      {Peers: []api.PeerHealth{good.Peers[0], peer("node9", "node1", "established", true, "v1")}},
		"not ready":       {Peers: []api.PeerHealth{good.Peers[0], peer("node2", "node1", "established", false, "v1")}},
		"old version":     {Peers: []api.PeerHealth{good.Peers[0], peer("node2", "node1", "established", true, "v0")}},
		"not established": {Peers: []api.PeerHealth{good.Peers[0], peer("node2", "node1", "connecting", true, "v1")}},
	} {
		if err := meshOK(m, nodes, "v1"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestPodsNamed(t *testing.T) {
	pods := []PodStatus{{Name: "web-1", Node: "node1", IP: "10.32.0.5"}, {Name: "web-2", Node: "node2", IP: "10.40.0.3"}}
	cs := []api.Container{
		{ContainerID: "weft:host", Address: "10.32.0.1"},
		{ContainerID: "abc", Address: "10.32.0.5", PodNamespace: "default", PodName: "web-1"},
	}
	if err := podsNamed(cs, "node1", "default", pods); err != nil {
		t.Errorf("named pod refused: %v", err)
	}
	anon := []api.Container{{ContainerID: "abc", Address: "10.32.0.5"}}
	if err := podsNamed(anon, "node1", "default", pods); err == nil {
		t.Error("a pod without its name accepted")
	}
	if err := podsNamed(cs[:1], "node1", "default", pods); err == nil {
		t.Error("a missing pod accepted")
	}
	if err := podsNamed(cs, "node1", "kube-system", pods); err == nil {
		t.Error("the wrong namespace accepted")
	}
}
