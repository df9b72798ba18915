package agent

import (
	"net/http"

	"github.com/weftnet/weft/api"
)

// TEMPORARY until ipam/router land (deleted at integration).
func (a *Agent) ipamRoutes(get, post func(string, func(*http.Request) (any, error))) {}
func (a *Agent) ipamStatus() *api.IPAMStatus                                         { return nil }
func (a *Agent) containers() []api.Container                                         { return []api.Container{} }
func (a *Agent) connections() []api.Connection                                       { return []api.Connection{} }
func (a *Agent) notReadyReason() string                                              { return "starting" }
