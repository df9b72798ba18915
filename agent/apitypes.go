package agent

import (
	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/ipam"
	"github.com/weftnet/weft/mesh"
)

// The domain packages speak their own types; these turn them into the local
// API's stable JSON at the edge, so a change of either side is one edit here.

func apiPeers(ps []mesh.Peer) []api.Peer {
	out := make([]api.Peer, 0, len(ps))
	for _, p := range ps {
		out = append(out, api.Peer{
			Name: p.Name, Address: p.Address, DataPort: p.DataPort, State: p.State.String(),
			Local: p.Local, Version: p.Version, Protocol: p.Protocol, Since: p.Since,
		})
	}
	return out
}

func apiIPAMSummary(st ipam.Status) api.IPAMSummary {
	return api.IPAMSummary{State: st.State, Range: st.Range, Ready: st.Ready}
}

func apiIPAMStatus(st ipam.Status) api.IPAMStatus {
	out := api.IPAMStatus{IPAMSummary: apiIPAMSummary(st), Mode: st.Mode}
	for _, e := range st.Entries {
		sh := api.IPAMPeerShare{
			Name: e.Name, Owned: e.Owned, Share: e.Share, InUse: e.InUse, Free: e.Free,
			Reachable: e.Reachable, Local: e.Local,
		}
		for _, r := range e.Ranges {
			sh.Ranges = append(sh.Ranges, r.String())
		}
		out.Entries = append(out.Entries, sh)
	}
	return out
}
