package raftlog

import (
	"bytes"
	"context"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// hclogger returns an hclog.Logger (what hashicorp/raft logs to) that
// forwards every line to log at the line's level.
func hclogger(log *slog.Logger, name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:            name,
		Level:           hclog.Info,
		Output:          slogWriter{log},
		DisableTime:     true,
		IncludeLocation: false,
	})
}

// slogWriter parses hclog's "[LEVEL] name: message" lines.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte("\n")) {
		s := strings.TrimSpace(string(line))
		level := slog.LevelInfo
		for tag, l := range map[string]slog.Level{"[ERROR]": slog.LevelError, "[WARN]": slog.LevelWarn, "[INFO]": slog.LevelInfo, "[DEBUG]": slog.LevelDebug, "[TRACE]": slog.LevelDebug - 4} {
			if rest, ok := strings.CutPrefix(s, tag); ok {
				level, s = l, strings.TrimSpace(rest)
				break
			}
		}
		w.log.Log(context.Background(), level, s)
	}
	return len(p), nil
}

// HCLogger returns an hclog.Logger for hashicorp libraries (raft) that
// forwards every line to log at the line's level.
func HCLogger(log *slog.Logger, name string) hclog.Logger { return hclogger(log, name) }
