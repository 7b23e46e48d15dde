package raftlog

import (
	"bytes"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestHCLogRepeats checks that the raft logger holds back a line like one
// logged less than repeatWindow before, and says how many it held back.
func TestHCLogRepeats(t *testing.T) {
	const hb = `[ERROR] raft: failed to heartbeat to: peer=127.0.0.3:7000 backoff time=%s error="read tcp 127.0.0.1:%d->127.0.0.3:7000: connection reset by peer"`
	type step struct {
		at   time.Duration // since the start
		line string
	}
	for _, tc := range []struct {
		name  string
		steps []step
		want  []string // the records, as "LEVEL msg [repeated=N]"
	}{
		{
			name: "repeats within the window are held back, then counted",
			steps: []step{
				{0, strings.Replace(hb, "%s", "10ms", 1)},
				{time.Second, strings.Replace(hb, "%s", "20ms", 1)},
				{2 * time.Second, strings.Replace(hb, "%s", "40ms", 1)},
				{31 * time.Second, strings.Replace(hb, "%s", "80ms", 1)},
				{32 * time.Second, strings.Replace(hb, "%s", "80ms", 1)},
			},
			want: []string{"ERROR raft: failed to heartbeat to: peer=127.0.0.3:7000", "ERROR raft: failed to heartbeat to: peer=127.0.0.3:7000 repeated=2"},
		},
		{
			name: "other peers, levels and messages are other lines",
			steps: []step{
				{0, strings.Replace(hb, "%s", "10ms", 1)},
				{0, strings.Replace(strings.Replace(hb, "%s", "10ms", 1), "127.0.0.3:7000 backoff", "127.0.0.2:7000 backoff", 1)},
				{0, strings.Replace(strings.Replace(hb, "%s", "10ms", 1), "[ERROR]", "[WARN]", 1)},
				{0, "[INFO] raft: entering follower state: follower=\"Node at 127.0.0.1:7000 [Follower]\" leader-id=n2"},
				{0, "[INFO] raft: entering follower state: follower=\"Node at 127.0.0.1:7000 [Follower]\" leader-id=n3"},
			},
			want: []string{
				"ERROR raft: failed to heartbeat to: peer=127.0.0.3:7000",
				"ERROR raft: failed to heartbeat to: peer=127.0.0.2:7000",
				"WARN raft: failed to heartbeat to: peer=127.0.0.3:7000",
				`INFO raft: entering follower state: follower="Node at 127.0.0.1:7000 [Follower]" leader-id=n2`,
				`INFO raft: entering follower state: follower="Node at 127.0.0.1:7000 [Follower]" leader-id=n3`,
			},
		},
		{
			name:  "levels the logger drops are not counted",
			steps: []step{{0, "[DEBUG] raft: x"}, {time.Minute, "[DEBUG] raft: x"}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			start := time.Unix(1e9, 0)
			now := start
			w := &slogWriter{
				log: slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelInfo, ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
					if a.Key == slog.TimeKey {
						return slog.Attr{}
					}
					return a
				}})),
				now: func() time.Time { return now },
			}
			for i, s := range tc.steps {
				now = start.Add(s.at)
				line := strings.Replace(s.line, "%d", "4000"+string(rune('0'+i)), 1)
				if _, err := w.Write([]byte(line + "\n")); err != nil {
					t.Fatal(err)
				}
			}
			var got []string
			for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				if l == "" {
					continue
				}
				got = append(got, simplify(t, l))
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("logged:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// simplify turns a text handler's record into "LEVEL msg [repeated=N]",
// the message cut before its error and time fields.
func simplify(t *testing.T, l string) string {
	t.Helper()
	level, rest, ok := strings.Cut(strings.TrimPrefix(l, "level="), " msg=")
	if !ok {
		t.Fatalf("record %q", l)
	}
	msg, repeated := rest, ""
	if i := strings.LastIndex(rest, " repeated="); i >= 0 {
		msg, repeated = rest[:i], rest[i:]
	}
	if strings.HasPrefix(msg, `"`) {
		var err error
		if msg, err = strconv.Unquote(msg); err != nil {
			t.Fatalf("record %q: %v", l, err)
		}
	}
	return level + " " + repeatKey(msg) + repeated
}
