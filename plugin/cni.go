package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weftnet/weft/api"

	"github.com/weftnet/weft/internal/logx"
	"github.com/weftnet/weft/internal/nlconv"
)

// AgentTimeout bounds every call to the agent. ADD and STATUS must answer
// "try again later" within 2 s when the agent is absent or hung, so one call
// plus the shim's own start-up has to fit well under that.
const AgentTimeout = 1500 * time.Millisecond

// Plugin runs the CNI verbs. Its fields are the seams tests replace.
type Plugin struct {
	// Net does the kernel work; NetlinkPodNetwork{} in production.
	Net PodNetwork
	// Agent returns the client of the agent at socket; api.NewClient in
	// production.
	Agent func(socket string) *api.Client
	// Logger receives diagnostics; the runtime shows the shim's stderr only
	// on failure. nil discards.
	Logger *slog.Logger
	// Stdout receives results; os.Stdout when nil.
	Stdout io.Writer
}

// New returns the production plugin logging to log (nil discards).
func New(log *slog.Logger) *Plugin {
	return &Plugin{
		Net:    NetlinkPodNetwork{},
		Agent:  func(socket string) *api.Client { return api.NewClient(socket, AgentTimeout) },
		Logger: log,
	}
}

// Main is the whole weft-cni program: dispatch the CNI verb from the
// environment and exit non-zero with a CNI error on failure.
func Main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p := New(log)
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status,
	}, version.PluginSupports(SupportedVersions...), "weft-cni: attaches pods to the weft overlay network")
}

func (p *Plugin) log() *slog.Logger {
	return logx.OrDiscard(p.Logger)
}

func (p *Plugin) stdout() io.Writer {
	if p.Stdout == nil {
		return os.Stdout
	}
	return p.Stdout
}

// parse decodes stdin into a Config, as a CNI error.
func parse(args *skel.CmdArgs) (*Config, error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid weft-cni network configuration", err.Error())
	}
	return conf, nil
}

// agentError turns a failure to talk to the agent into a CNI error: absent,
// hung or not-ready agents are "try again later" (code 11), the rest is
// reported as what it is.
func agentError(what string, err error) *types.Error {
	switch {
	case errors.Is(err, api.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return types.NewError(types.ErrTryAgainLater, "weft agent not reachable", fmt.Sprintf("%s: %v", what, err))
	case api.Code(err) == api.CodeNotReady:
		return types.NewError(types.ErrTryAgainLater, "weft agent not ready", fmt.Sprintf("%s: %v", what, err))
	default:
		return types.NewError(types.ErrInternal, what+" failed", err.Error())
	}
}

func agentCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), AgentTimeout)
}

// Add allocates an address from the agent and attaches the pod. On any
// failure after the allocation it releases the address again.
func (p *Plugin) Add(args *skel.CmdArgs) (err error) {
	start := time.Now()
	conf, err := parse(args)
	if err != nil {
		return err
	}
	if args.Netns == "" {
		return types.NewError(types.ErrInvalidNetNS, "ADD needs CNI_NETNS", "")
	}
	agent := p.Agent(conf.Socket)
	defer func() { reportAddTiming(agent, start, err != nil) }()

	ctx, cancel := agentCtx()
	network, err := agent.Network(ctx)
	cancel()
	if err != nil {
		return agentError("get network from agent", err)
	}
	pod := podOf(args.Args)
	ctx, cancel = agentCtx()
	alloc, err := agent.Allocate(ctx, api.AllocateRequest{
		ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns,
		PodNamespace: pod.Namespace, PodName: pod.Name, PodUID: pod.UID,
	})
	cancel()
	if err != nil {
		return agentError("allocate address", err)
	}

	att, err := attachment(args, conf, network, alloc)
	if err == nil {
		var links Links
		links, err = p.Net.Attach(att)
		if err == nil {
			return p.print(result(conf, args, att, links), conf.CNIVersion)
		}
		err = fmt.Errorf("attach %s: %w", args.IfName, err)
	}

	// Roll back the allocation; Attach already removed what it made.
	ctx, cancel = agentCtx()
	defer cancel()
	if rerr := agent.Release(ctx, api.ReleaseRequest{ContainerID: args.ContainerID, IfName: args.IfName}); rerr != nil {
		p.log().Warn("rollback: release failed; GC will free it", "container", args.ContainerID, "ifname", args.IfName, "err", rerr)
		err = fmt.Errorf("%w (and rollback release: %v)", err, rerr)
	}
	code := uint(types.ErrInternal)
	switch {
	case errors.Is(err, ErrNetnsGone):
		code = types.ErrInvalidNetNS
	case errors.Is(err, ErrNoBridge):
		code = types.ErrTryAgainLater
	}
	return types.NewError(code, "weft-cni ADD failed", err.Error())
}

// print writes the result in the config's CNI version.
func (p *Plugin) print(res *current.Result, cniVersion string) error {
	out, err := res.GetAsVersion(cniVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, "cannot express result", err.Error())
	}
	return out.PrintTo(p.stdout())
}

// attachment turns the agent's answers into what PodNetwork needs.
func attachment(args *skel.CmdArgs, conf *Config, network api.Network, alloc api.AllocateResponse) (Attachment, error) {
	addr, err := netip.ParsePrefix(alloc.Address)
	if err != nil || !addr.Addr().Is4() {
		return Attachment{}, fmt.Errorf("agent gave address %q: not an IPv4 CIDR", alloc.Address)
	}
	gw, err := netip.ParseAddr(alloc.Gateway)
	if err != nil || !gw.Is4() {
		return Attachment{}, fmt.Errorf("agent gave gateway %q: not an IPv4 address", alloc.Gateway)
	}
	if network.Bridge == "" {
		return Attachment{}, errors.New("agent named no bridge")
	}
	a := Attachment{
		Netns:    args.Netns,
		IfName:   args.IfName,
		HostVeth: HostVethName(args.ContainerID, args.IfName),
		Owner:    HostVethOwner(args.ContainerID, args.IfName),
		Bridge:   network.Bridge,
		Address:  addr,
		Gateway:  gw,
		MTU:      alloc.MTU,
	}
	if conf.MTU != 0 {
		a.MTU = conf.MTU
	}
	for _, r := range alloc.Routes {
		pr, err := netip.ParsePrefix(r)
		if err != nil || !pr.Addr().Is4() {
			return Attachment{}, fmt.Errorf("agent gave route %q: not an IPv4 CIDR", r)
		}
		a.Routes = append(a.Routes, pr.Masked())
	}
	return a, nil
}

// result is the CNI result of an ADD: the host veth (0), the pod interface
// (1), the pod's address on interface 1, and its routes via the gateway.
func result(conf *Config, args *skel.CmdArgs, a Attachment, links Links) *current.Result {
	podIf := 1
	res := &current.Result{
		CNIVersion: conf.CNIVersion,
		Interfaces: []*current.Interface{
			{Name: a.HostVeth, Mac: links.HostMAC.String()},
			{Name: a.IfName, Mac: links.PodMAC.String(), Sandbox: args.Netns, Mtu: a.MTU},
		},
		IPs: []*current.IPConfig{{
			Interface: &podIf,
			Address:   *nlconv.IPNet(a.Address),
			Gateway:   net.IP(a.Gateway.AsSlice()),
		}},
	}
	for _, r := range a.Routes {
		res.Routes = append(res.Routes, &types.Route{Dst: *nlconv.IPNet(r), GW: net.IP(a.Gateway.AsSlice())})
	}
	return res
}

// Del removes the pod interface and releases its address. Both steps are
// idempotent, so DEL of a gone pod, a gone namespace or an unknown container
// succeeds. The links go first: releasing first could hand the address to a
// new pod while the old veth still carries it.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, err := parse(args)
	if err != nil {
		return err
	}
	if err := p.Net.Detach(args.Netns, args.IfName, HostVethName(args.ContainerID, args.IfName), HostVethOwner(args.ContainerID, args.IfName)); err != nil {
		return types.NewError(types.ErrInternal, "weft-cni DEL failed", err.Error())
	}
	ctx, cancel := agentCtx()
	defer cancel()
	err = p.Agent(conf.Socket).Release(ctx, api.ReleaseRequest{ContainerID: args.ContainerID, IfName: args.IfName})
	if err != nil && api.Code(err) != api.CodeNotFound {
		return agentError("release address", err)
	}
	return nil
}

// Check verifies the pod interface against the prevResult the runtime
// kept, and that the agent still holds the allocation.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, err := parse(args)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult", "")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "CHECK: cannot read prevResult", err.Error())
	}
	want, err := expectedFromResult(prev, args)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK: prevResult does not describe a weft interface", err.Error())
	}

	agent := p.Agent(conf.Socket)
	ctx, cancel := agentCtx()
	network, err := agent.Network(ctx)
	cancel()
	if err != nil {
		return agentError("get network from agent", err)
	}
	ctx, cancel = agentCtx()
	containers, err := agent.Containers(ctx)
	cancel()
	if err != nil {
		return agentError("list containers", err)
	}
	held := false
	for _, c := range containers {
		if c.ContainerID == args.ContainerID && c.IfName == args.IfName {
			if addr, err := c.Addr(); err == nil && addr == want.Address.Addr() {
				held = true
			}
		}
	}
	if !held {
		return types.NewError(types.ErrInternal, "weft-cni CHECK failed",
			fmt.Sprintf("agent holds no allocation of %s for %s/%s", want.Address, args.ContainerID, args.IfName))
	}

	want.Bridge = network.Bridge
	if err := p.Net.Check(want); err != nil {
		return types.NewError(types.ErrInternal, "weft-cni CHECK failed", err.Error())
	}
	return nil
}

// expectedFromResult rebuilds the Attachment an earlier ADD described.
func expectedFromResult(prev *current.Result, args *skel.CmdArgs) (Attachment, error) {
	a := Attachment{
		Netns:    args.Netns,
		IfName:   args.IfName,
		HostVeth: HostVethName(args.ContainerID, args.IfName),
		Owner:    HostVethOwner(args.ContainerID, args.IfName),
	}
	podIf := -1
	for i, intf := range prev.Interfaces {
		if intf.Name == args.IfName && intf.Sandbox != "" {
			podIf = i
		}
	}
	if podIf < 0 {
		return a, fmt.Errorf("no interface %s with a sandbox", args.IfName)
	}
	a.MTU = prev.Interfaces[podIf].Mtu
	for _, ip := range prev.IPs {
		if ip.Interface == nil || *ip.Interface != podIf {
			continue
		}
		addr, ok := netip.AddrFromSlice(ip.Address.IP)
		gw, gok := netip.AddrFromSlice(ip.Gateway)
		if !ok || !gok {
			return a, errors.New("address or gateway missing")
		}
		ones, _ := ip.Address.Mask.Size()
		a.Address = netip.PrefixFrom(addr.Unmap(), ones)
		a.Gateway = gw.Unmap()
	}
	if !a.Address.IsValid() {
		return a, fmt.Errorf("no address on interface %s", args.IfName)
	}
	for _, r := range prev.Routes {
		a.Routes = append(a.Routes, nlconv.Prefix(&r.Dst))
	}
	return a, nil
}

// Status answers whether ADD would work now: the agent answers and can
// allocate.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, err := parse(args)
	if err != nil {
		return err
	}
	ctx, cancel := agentCtx()
	defer cancel()
	st, err := p.Agent(conf.Socket).Status(ctx)
	if err != nil {
		return agentError("agent status", err)
	}
	if !st.Ready {
		return types.NewError(types.ErrTryAgainLater, "weft agent not ready", "IPAM cannot allocate yet")
	}
	return nil
}

// GC asks the agent to release every allocation not in
// cni.dev/valid-attachments and removes the host veths of what it released.
// A config without the key has no valid attachment, as libcni sends it.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	conf, err := parse(args)
	if err != nil {
		return err
	}
	req := api.GCRequest{Valid: []api.Attachment{}}
	for _, a := range conf.ValidAttachments {
		req.Valid = append(req.Valid, api.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	ctx, cancel := agentCtx()
	defer cancel()
	resp, err := p.Agent(conf.Socket).GC(ctx, req)
	if err != nil {
		return agentError("agent GC", err)
	}
	var failed []error
	for _, a := range resp.Released {
		// The pod namespace is unknown here: removing the host end removes
		// the pair.
		if err := p.Net.Detach("", a.IfName, HostVethName(a.ContainerID, a.IfName), HostVethOwner(a.ContainerID, a.IfName)); err != nil {
			failed = append(failed, err)
		}
	}
	if len(failed) > 0 {
		return types.NewError(types.ErrInternal, "weft-cni GC: released addresses but could not remove some veths",
			errors.Join(failed...).Error())
	}
	return nil
}

// podID is the pod a CNI call is for, as the runtime names it.
type podID struct{ Namespace, Name, UID string }

// podOf reads K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID from
// CNI_ARGS ("K=V;K=V"), which Kubernetes runtimes pass; "" when absent.
// The UID tells a pod from an older one of the same name, which the
// agent's cache may still hold when the new one's ADD comes.
func podOf(cniArgs string) podID {
	var p podID
	for _, kv := range strings.Split(cniArgs, ";") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "K8S_POD_NAMESPACE":
			p.Namespace = v
		case "K8S_POD_NAME":
			p.Name = v
		case "K8S_POD_UID":
			p.UID = v
		}
	}
	return p
}

// timingTimeout bounds the report of an ADD's duration: it is for metrics
// only and must not hold up the runtime.
const timingTimeout = 200 * time.Millisecond

// reportAddTiming tells the agent how long the whole ADD took
// (weft_cni_add_seconds); failures to report are ignored.
func reportAddTiming(agent *api.Client, start time.Time, failed bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timingTimeout)
	defer cancel()
	_ = agent.ReportCNITiming(ctx, api.CNITiming{Op: api.CNIOpAdd, Seconds: time.Since(start).Seconds(), Failed: failed})
}
