package raftlog

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// repeatWindow is how long a line the same as one just logged (see
// repeatKey) is held back: a raft leader retries a host that is down or
// left its group several times a second, for every volume they share.
const repeatWindow = 30 * time.Second

// hclogger returns an hclog.Logger (what hashicorp/raft logs to) that
// forwards every line to log at the line's level, holding back repeats
// for repeatWindow.
func hclogger(log *slog.Logger, name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:            name,
		Level:           hclog.Info,
		Output:          &slogWriter{log: log, now: time.Now},
		DisableTime:     true,
		IncludeLocation: false,
	})
}

// slogWriter parses hclog's "[LEVEL] name: message" lines. A line the
// same as one logged less than repeatWindow before is counted, not
// logged; the next one logged after the window says how many were held
// back ("repeated").
type slogWriter struct {
	log *slog.Logger
	now func() time.Time

	mu   sync.Mutex
	seen map[string]*repeat
}

// repeat is what a slogWriter knows of one kind of line.
type repeat struct {
	logged time.Time // when it was last logged
	held   int       // lines held back since
}

func (w *slogWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte("\n")) {
		s := strings.TrimSpace(string(line))
		level := slog.LevelInfo
		for tag, l := range map[string]slog.Level{"[ERROR]": slog.LevelError, "[WARN]": slog.LevelWarn, "[INFO]": slog.LevelInfo, "[DEBUG]": slog.LevelDebug, "[TRACE]": slog.LevelDebug - 4} {
			if rest, ok := strings.CutPrefix(s, tag); ok {
				level, s = l, strings.TrimSpace(rest)
				break
			}
		}
		if !w.log.Enabled(context.Background(), level) {
			continue
		}
		held, ok := w.admit(level, s)
		if !ok {
			continue
		}
		if held > 0 {
			w.log.Log(context.Background(), level, s, "repeated", held)
		} else {
			w.log.Log(context.Background(), level, s)
		}
	}
	return len(p), nil
}

// admit reports whether line s at level is to be logged now, and how many
// lines like it were held back since the last one logged.
func (w *slogWriter) admit(level slog.Level, s string) (held int, ok bool) {
	now := w.now()
	key := level.String() + " " + repeatKey(s)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen == nil {
		w.seen = map[string]*repeat{}
	}
	r := w.seen[key]
	if r != nil && now.Sub(r.logged) < repeatWindow {
		r.held++
		return 0, false
	}
	if r == nil {
		if len(w.seen) >= 256 {
			w.forget(now)
		}
		r = &repeat{}
		w.seen[key] = r
	}
	held, r.logged, r.held = r.held, now, 0
	return held, true
}

// forget drops the kinds of lines not logged for a window (their counts
// of held back lines are lost), so that the map stays small.
func (w *slogWriter) forget(now time.Time) {
	for k, r := range w.seen {
		if now.Sub(r.logged) >= repeatWindow {
			delete(w.seen, k)
		}
	}
}

// repeatKey is what makes two lines the same: the message without the
// fields that differ from one failure to the next (the error, with its
// connection's ports; the backoff or contact time).
func repeatKey(s string) string {
	for _, f := range []string{" error=", " backoff time=", " time="} {
		if i := strings.Index(s, f); i >= 0 {
			s = s[:i]
		}
	}
	return s
}

// HCLogger returns an hclog.Logger for hashicorp libraries (raft) that
// forwards every line to log at the line's level, holding back repeats
// for repeatWindow.
func HCLogger(log *slog.Logger, name string) hclog.Logger { return hclogger(log, name) }
