package fastdp

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weftnet/weft/mesh"
)

var (
	testSelf = Self{Enabled: true, VNI: DefaultVNI, Port: DefaultPort, UnderlayMTU: 1500,
		Range: netip.MustParsePrefix("10.32.0.0/12"), Src: netip.MustParseAddr("10.32.0.1")}
	vxOK = &mesh.VXLAN{MAC: [6]byte{2, 0, 0, 0, 0, 2}, VNI: DefaultVNI, Port: DefaultPort, UnderlayMTU: 1500}
)

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestPlanDecisions(t *testing.T) {
	small := *vxOK
	small.UnderlayMTU = 1400
	other := *vxOK
	other.Port = 4789
	ul := func(i byte) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, i}) }
	peers := []PeerView{
		{Name: "up", Underlay: ul(2), VXLAN: vxOK, Probe: ProbeUp, Ranges: pfx("10.40.0.0/14", "10.36.0.0/14")},
		{Name: "down", Underlay: ul(3), VXLAN: vxOK, Probe: ProbeDown, Ranges: pfx("10.44.0.0/14"), Routed: true},
		{Name: "pending-routed", Underlay: ul(4), VXLAN: vxOK, Probe: ProbePending, Routed: true, Ranges: pfx("10.33.0.0/16")},
		{Name: "pending-new", Underlay: ul(5), VXLAN: vxOK, Probe: ProbePending, Ranges: pfx("10.34.0.0/16")},
		{Name: "userspace", Underlay: ul(6), Probe: ProbeUp, Ranges: pfx("10.35.0.0/16")},
		{Name: "encrypted", Underlay: ul(7), VXLAN: vxOK, Encrypted: true, Probe: ProbeUp},
		{Name: "other-port", Underlay: ul(8), VXLAN: &other, Probe: ProbeUp},
		{Name: "small-mtu", Underlay: ul(9), VXLAN: &small, Probe: ProbeUp, Ranges: pfx("10.46.0.0/15")},
		{Name: "no-address", VXLAN: vxOK, Probe: ProbeUp},
	}
	want, ds := Plan(testSelf, peers)
	fast := map[string]bool{}
	reasons := map[string]string{}
	for _, d := range ds {
		fast[d.Peer] = d.Fast
		reasons[d.Peer] = d.Reason
		if d.Fast != (d.Reason == "") {
			t.Errorf("%s: fast=%v with reason %q", d.Peer, d.Fast, d.Reason)
		}
	}
	for name, wantFast := range map[string]bool{"up": true, "down": false, "pending-routed": true, "pending-new": false,
		"userspace": false, "encrypted": false, "other-port": false, "small-mtu": true, "no-address": false} {
		if fast[name] != wantFast {
			t.Errorf("%s: fast=%v, want %v (reason %q)", name, fast[name], wantFast, reasons[name])
		}
	}
	for name, sub := range map[string]string{"down": "port 6786 blocked", "pending-new": "probing", "userspace": "offers no fast path",
		"encrypted": "encrypted", "other-port": "4789", "no-address": "address"} {
		if !strings.Contains(reasons[name], sub) {
			t.Errorf("%s: reason %q does not say %q", name, reasons[name], sub)
		}
	}
	entries := map[string]PeerEntry{}
	for _, e := range want.Peers {
		entries[e.Name] = e
	}
	// Neighbour and FDB entries for every candidate (probing needs them),
	// routes for the fast ones only.
	for _, name := range []string{"up", "down", "pending-routed", "pending-new", "small-mtu"} {
		if _, ok := entries[name]; !ok {
			t.Errorf("%s has no neighbour/FDB entry", name)
		}
	}
	for _, name := range []string{"userspace", "encrypted", "other-port", "no-address"} {
		if _, ok := entries[name]; ok {
			t.Errorf("%s, not a candidate, has entries", name)
		}
	}
	if got := entries["up"].Prefixes; !slices.Equal(got, pfx("10.36.0.0/14", "10.40.0.0/14")) {
		t.Errorf("up routes %v", got)
	}
	if got := entries["down"].Prefixes; len(got) != 0 {
		t.Errorf("a peer whose probe is down keeps routes %v", got)
	}
	if got := entries["pending-routed"].Prefixes; !slices.Equal(got, pfx("10.33.0.0/16")) {
		t.Errorf("a pending peer routed before lost its routes: %v", got)
	}
	if got := entries["up"].MTU; got != 1450 {
		t.Errorf("route MTU %d, want 1450", got)
	}
	if got := entries["small-mtu"].MTU; got != 1350 {
		t.Errorf("route MTU to a host with a 1400 underlay: %d, want 1350", got)
	}
	if entries["up"].MAC.String() != "02:00:00:00:00:02" {
		t.Errorf("MAC %v", entries["up"].MAC)
	}
}

func TestPlanDisabledHost(t *testing.T) {
	self := Self{Reason: "this host runs --datapath userspace"}
	want, ds := Plan(self, []PeerView{{Name: "b", Underlay: netip.MustParseAddr("198.18.0.2"), VXLAN: vxOK, Probe: ProbeUp, Routed: true}})
	if len(want.Peers) != 0 {
		t.Fatalf("a host without the fast path wants entries: %+v", want.Peers)
	}
	if ds[0].Fast || ds[0].Reason != self.Reason {
		t.Fatalf("decision %+v", ds[0])
	}
}

// Only prefixes of the overlay range are routed, masked, deduplicated and
// sorted; nothing covering this host's own address is.
func TestPlanRoutableRanges(t *testing.T) {
	in := []netip.Prefix{
		netip.MustParsePrefix("10.40.0.7/14"), // host bits
		netip.MustParsePrefix("10.40.0.0/14"), // duplicate once masked
		netip.MustParsePrefix("10.32.0.0/24"), // holds this host's own address
		netip.MustParsePrefix("10.0.0.0/8"),   // wider than the range
		netip.MustParsePrefix("192.168.0.0/24"),
		netip.MustParsePrefix("10.33.0.128/25"),
		netip.MustParsePrefix("10.33.0.0/25"),
		{},
	}
	got := routable(testSelf, in)
	if want := pfx("10.33.0.0/25", "10.33.0.128/25", "10.40.0.0/14"); !slices.Equal(got, want) {
		t.Fatalf("routable = %v, want %v", got, want)
	}
}

func TestMACStableUnicastLocal(t *testing.T) {
	a, b := MAC("host1"), MAC("host1")
	if a.String() != b.String() {
		t.Fatal("MAC is not stable")
	}
	if MAC("host2").String() == a.String() {
		t.Fatal("two names, one MAC")
	}
	if a[0]&1 != 0 || a[0]&2 == 0 {
		t.Fatalf("MAC %v is not unicast and locally administered", a)
	}
}

func TestParseReply(t *testing.T) {
	// An echo reply is the request with type 0; build one by hand.
	body := append(append([]byte{}, probeMagic...), 1, 2, 3, 4, 5, 6, 7, 8)
	msg := []byte{0, 0, 0, 0, 0x12, 0x34, 0, 1}
	msg = append(msg, body...)
	if n, ok := parseReply(msg, 0x1234); !ok || n != 0x0102030405060708 {
		t.Fatalf("reply: %x %v", n, ok)
	}
	if _, ok := parseReply(msg, 0x1235); ok {
		t.Fatal("a reply to another identifier counted")
	}
	req := append([]byte{8}, msg[1:]...)
	if _, ok := parseReply(req, 0x1234); ok {
		t.Fatal("an echo request counted as a reply")
	}
	if _, ok := parseReply(msg[:len(msg)-1], 0x1234); ok {
		t.Fatal("a short payload counted")
	}
}

// FuzzParseReply: ICMP reaches the probe socket from anyone; parsing never
// panics, and only a well-formed echo reply of this prober counts.
func FuzzParseReply(f *testing.F) {
	body := append(append([]byte{}, probeMagic...), 1, 2, 3, 4, 5, 6, 7, 8)
	f.Add(append([]byte{0, 0, 0, 0, 0x12, 0x34, 0, 1}, body...))
	f.Add(append([]byte{8, 0, 0, 0, 0x12, 0x34, 0, 1}, body...))
	f.Add([]byte{3, 4, 0, 0, 0, 0, 5, 0x78})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		n, ok := parseReply(b, 0x1234)
		if !ok {
			return
		}
		if len(b) < 8+probeLen || b[0] != 0 || b[4] != 0x12 || b[5] != 0x34 {
			t.Fatalf("accepted %x", b)
		}
		_ = n
	})
}

// Equal tells apart every field Sync applies: the agent skips a Sync when
// the desired state is Equal to the last one applied.
func TestDesiredEqual(t *testing.T) {
	base := func() Desired {
		return Desired{Src: netip.MustParseAddr("10.32.0.1"), Peers: []PeerEntry{{
			Name: "b", Underlay: netip.MustParseAddr("198.18.0.2"), MAC: MAC("b"), MTU: 1450, Prefixes: pfx("10.33.0.0/16"),
		}}}
	}
	if !base().Equal(base()) {
		t.Fatal("equal states differ")
	}
	for name, change := range map[string]func(*Desired){
		"src":      func(d *Desired) { d.Src = netip.MustParseAddr("10.32.0.2") },
		"prune":    func(d *Desired) { d.Prune = true },
		"peer":     func(d *Desired) { d.Peers = append(d.Peers, d.Peers[0]) },
		"name":     func(d *Desired) { d.Peers[0].Name = "c" },
		"underlay": func(d *Desired) { d.Peers[0].Underlay = netip.MustParseAddr("198.18.0.3") },
		"mac":      func(d *Desired) { d.Peers[0].MAC = MAC("c") },
		"mtu":      func(d *Desired) { d.Peers[0].MTU = 1400 },
		"prefixes": func(d *Desired) { d.Peers[0].Prefixes = pfx("10.33.0.0/17") },
		"no route": func(d *Desired) { d.Peers[0].Prefixes = nil },
	} {
		d := base()
		change(&d)
		if d.Equal(base()) || base().Equal(d) {
			t.Errorf("a change of %s is not seen", name)
		}
	}
}
