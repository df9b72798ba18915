package main

import (
	"github.com/weftnet/weft/hostnet"
	"net/netip"
)

// defaultHost is the address of the default-route interface (--host default).
func defaultHost() (netip.Addr, error) { return hostnet.DefaultRouteAddr() }
