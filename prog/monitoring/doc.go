// Package monitoring ships weft's monitoring for Kubernetes: the metrics
// Service and ServiceMonitor (weft-metrics.yaml), the PrometheusRule alerts
// (weft-alerts.yaml) and the Grafana dashboard (weft-dashboard.json). Its
// test checks that they parse and that every metric they name is served by
// a live agent.
package monitoring

import "embed"

// Files are the manifests and the dashboard, for tools that ship them.
//
//go:embed weft-metrics.yaml weft-alerts.yaml weft-dashboard.json
var Files embed.FS
