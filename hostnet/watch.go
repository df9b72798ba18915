package hostnet

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/logx"
)

// Watch signals every link, address and route change, and every change of
// nftables table ip weft, in the network namespace of the calling thread
// until ctx ends. Signals are coalesced:
// the channel holds at most one, so a reader that looks at the whole host
// after each signal misses nothing. An error of a subscription (the
// kernel's buffer overran, say) is signalled too, since changes may have
// been lost with it.
func Watch(ctx context.Context, log *slog.Logger) (<-chan struct{}, error) {
	log = logx.OrDiscard(log)
	out := make(chan struct{}, 1)
	signal := func() {
		select {
		case out <- struct{}{}:
		default:
		}
	}
	onErr := func(err error) {
		log.Debug("netlink subscription", "err", err)
		signal()
	}
	done := make(chan struct{})
	links := make(chan netlink.LinkUpdate, 64)
	addrs := make(chan netlink.AddrUpdate, 64)
	routes := make(chan netlink.RouteUpdate, 64)
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		close(done)
		return nil, fmt.Errorf("hostnet: subscribe to link changes: %w", err)
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{ErrorCallback: onErr}); err != nil {
		close(done)
		return nil, fmt.Errorf("hostnet: subscribe to address changes: %w", err)
	}
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{ErrorCallback: onErr}); err != nil {
		close(done)
		return nil, fmt.Errorf("hostnet: subscribe to route changes: %w", err)
	}
	nft, err := watchTable(ctx, signal, log)
	if err != nil {
		close(done)
		return nil, err
	}
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-links:
				if !ok {
					links = nil
				}
			case _, ok := <-addrs:
				if !ok {
					addrs = nil
				}
			case _, ok := <-routes:
				if !ok {
					routes = nil
				}
			case <-nft:
				// watchTable signals by itself; this only ends with it.
				nft = nil
				continue
			}
			signal()
		}
	}()
	return out, nil
}

// watchTable calls signal after every nftables transaction that touched
// table ip weft (`nft flush table ip weft`, say, which makes no link,
// address or route event). The returned channel closes when the watch ends.
func watchTable(ctx context.Context, signal func(), log *slog.Logger) (<-chan struct{}, error) {
	conn, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("hostnet: nftables: %w", err)
	}
	mon := nftables.NewMonitor(nftables.WithMonitorEventBuffer(64))
	gens, err := conn.AddGenerationalMonitor(mon)
	if err != nil {
		return nil, fmt.Errorf("hostnet: watch nftables: %w", err)
	}
	ended := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { _ = mon.Close() })
	go func() {
		defer close(ended)
		defer stop()
		for gen := range gens { // closed by mon.Close or a receive error
			for _, ev := range gen.Changes {
				if ev.Type == nftables.MonitorEventTypeOOB {
					log.Debug("nftables watch", "err", ev.Error)
					signal()
				} else if touchesTable(ev) {
					signal()
				}
			}
		}
	}()
	return ended, nil
}

// touchesTable reports whether an nftables event may concern table ip weft:
// events naming another table do not (a kube-proxy in nftables mode
// rewrites its own often), those naming none (set elements) may.
func touchesTable(ev *nftables.MonitorEvent) bool {
	var t *nftables.Table
	switch d := ev.Data.(type) {
	case *nftables.Table:
		t = d
	case *nftables.Chain:
		t = d.Table
	case *nftables.Rule:
		t = d.Table
	case *nftables.Set:
		t = d.Table
	default:
		return true
	}
	return t == nil || (t.Name == NftTable && t.Family == nftables.TableFamilyIPv4)
}
