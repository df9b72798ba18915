package logx

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
)

func TestOrDiscard(t *testing.T) {
	if OrDiscard(nil).Enabled(context.Background(), slog.LevelError) {
		t.Fatal("nil logger should discard")
	}
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, nil))
	OrDiscard(l).Info("kept")
	if !bytes.Contains(buf.Bytes(), []byte("kept")) {
		t.Fatal("given logger not used")
	}
}
