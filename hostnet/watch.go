package hostnet

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/logx"
)

// Watch signals every link, address and route change, and every change of
// nftables table ip weft, in the network namespace of the calling thread
// until ctx ends. Signals are coalesced:
// the channel holds at most one, so a reader that looks at the whole host
// after each signal misses nothing. An error of a subscription (the
// kernel's buffer overran, say) is signalled too, since changes may have
// been lost with it.
//
// weft's own writes are not signalled: a route weft added (its protocol)
// and an nftables transaction of this process change nothing a check
// would repair, and with 50 peers they were a check and a fast-path resync
// at every membership change and every fast-path sync (issue 21). Routes
// weft loses (deletions) are signalled whoever deletes them.
func Watch(ctx context.Context, log *slog.Logger) (<-chan struct{}, error) {
	return watch(ctx, log, nil)
}

// watchStats counts what watch did, for tests.
type watchStats struct {
	own, signalled atomic.Uint64
}

func watch(ctx context.Context, log *slog.Logger, stats *watchStats) (<-chan struct{}, error) {
	log = logx.OrDiscard(log)
	if stats == nil {
		stats = &watchStats{}
	}
	out := make(chan struct{}, 1)
	signal := func() {
		stats.signalled.Add(1)
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
	nft, err := watchTable(ctx, signal, stats, log)
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
			case u, ok := <-routes:
				if !ok {
					routes = nil
				} else if ownRoute(u) {
					stats.own.Add(1)
					continue
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
func watchTable(ctx context.Context, signal func(), stats *watchStats, log *slog.Logger) (<-chan struct{}, error) {
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
			if ownGeneration(gen) {
				stats.own.Add(1)
				continue
			}
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

// ownRoute reports whether u is a route weft added or replaced: one of its
// protocol that is not a deletion.
func ownRoute(u netlink.RouteUpdate) bool {
	return u.Type == unix.RTM_NEWROUTE && u.Route.Protocol == RouteProtocol
}

// ownGeneration reports whether an nftables transaction came from this
// process. The kernel names the thread that committed it (its id in the
// initial PID namespace); a thread of this process is in /proc/self/task.
// In a PID namespace of its own the id is not found there, and every
// transaction counts as foreign, as before. Errors (OOB) are never own.
func ownGeneration(gen *nftables.MonitorEvents) bool {
	if gen == nil || gen.GeneratedBy == nil {
		return false
	}
	g, ok := gen.GeneratedBy.Data.(*nftables.GenMsg)
	if !ok || g == nil || g.ProcPID == 0 {
		return false
	}
	for _, ev := range gen.Changes {
		if ev.Type == nftables.MonitorEventTypeOOB {
			return false
		}
	}
	_, err := os.Stat("/proc/self/task/" + strconv.FormatUint(uint64(g.ProcPID), 10))
	return err == nil
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
