package hostnet

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/logx"
)

// Watch signals every link, address and route change in the network
// namespace of the calling thread until ctx ends. Signals are coalesced:
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
			}
			signal()
		}
	}()
	return out, nil
}
