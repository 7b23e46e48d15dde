package raftlog

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// TestHandBack checks when a leader hands leadership to the preferred
// host: after leading for a heartbeat timeout, not while its heartbeats to
// that host fail or within handBackEvery of a failure, and at most every
// handBackEvery.
func TestHandBack(t *testing.T) {
	const hb = 650 * time.Millisecond
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	type step struct {
		at      time.Duration
		ready   bool
		failed  string // a heartbeat to this peer failed at this step
		wantDue bool
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"not ready", []step{{0, false, "", false}, {time.Minute, false, "", false}}},
		{"after a heartbeat timeout of leading", []step{
			{0, true, "", false}, {hb / 2, true, "", false}, {hb, true, "", true},
		}},
		{"at most every handBackEvery", []step{
			{0, true, "", false}, {hb, true, "", true}, {hb + time.Second, true, "", false},
			{hb + handBackEvery - time.Millisecond, true, "", false}, {hb + handBackEvery, true, "", true},
		}},
		{"not to a host whose heartbeats fail", []step{
			{0, true, "", false}, {100 * time.Millisecond, true, "n1", false}, {hb, true, "", false},
			{hb + 300*time.Millisecond, true, "n1", false}, {hb + 900*time.Millisecond, true, "", false},
			// It answers again, but has not had handBackEvery to catch up.
			{hb + 300*time.Millisecond + handBackEvery - time.Millisecond, true, "", false},
			{hb + 300*time.Millisecond + handBackEvery, true, "", true},
		}},
		{"failures of other hosts do not count", []step{
			{0, true, "n2", false}, {hb, true, "n3", true},
		}},
		{"leading anew restarts the wait", []step{
			{0, true, "", false}, {hb / 2, false, "", false}, {hb, true, "", false}, {2 * hb, true, "", true},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHandBack(hb)
			for i, s := range tc.steps {
				if s.failed != "" {
					h.heartbeatFailed(raft.ServerID(s.failed), at(s.at))
				}
				h.ready(s.ready, at(s.at))
				if got := h.due("n1", at(s.at)); got != s.wantDue {
					t.Fatalf("step %d (at %v): due %v, want %v", i, s.at, got, s.wantDue)
				}
			}
		})
	}
}
