// Package logx holds the one logger default every weft package uses.
package logx

import "log/slog"

// OrDiscard returns log, or a logger that drops everything when log is nil,
// so that components built without a logger (tests, libraries) stay quiet.
func OrDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}
