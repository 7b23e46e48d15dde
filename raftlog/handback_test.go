package raftlog

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// TestHandBack checks when a leader hands leadership to the preferred
// host: after leading for a heartbeat timeout, not while its heartbeats to
// that host fail or within handBackEvery of a failure, nor while that
// host has not answered for a heartbeat timeout, and at most every
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
		silent  bool // n1 last answered a heartbeat timeout ago
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"not ready", []step{{0, false, "", false, false}, {time.Minute, false, "", false, false}}},
		{"after a heartbeat timeout of leading", []step{
			{0, true, "", false, false}, {hb / 2, true, "", false, false}, {hb, true, "", true, false},
		}},
		{"at most every handBackEvery", []step{
			{0, true, "", false, false}, {hb, true, "", true, false}, {hb + time.Second, true, "", false, false},
			{hb + handBackEvery - time.Millisecond, true, "", false, false}, {hb + handBackEvery, true, "", true, false},
		}},
		{"not to a host whose heartbeats fail", []step{
			{0, true, "", false, false}, {100 * time.Millisecond, true, "n1", false, false}, {hb, true, "", false, false},
			{hb + 300*time.Millisecond, true, "n1", false, false}, {hb + 900*time.Millisecond, true, "", false, false},
			// It answers again, but has not had handBackEvery to catch up.
			{hb + 300*time.Millisecond + handBackEvery - time.Millisecond, true, "", false, false},
			{hb + 300*time.Millisecond + handBackEvery, true, "", true, false},
		}},
		{"not to a host that stopped answering, before any failure", []step{
			{0, true, "", false, false}, {hb, true, "", false, true}, {hb + time.Second, true, "", false, true},
			{hb + 2*time.Second, true, "", true, false},
		}},
		{"failures of other hosts do not count", []step{
			{0, true, "n2", false, false}, {hb, true, "n3", true, false},
		}},
		{"leading anew restarts the wait", []step{
			{0, true, "", false, false}, {hb / 2, false, "", false, false}, {hb, true, "", false, false}, {2 * hb, true, "", true, false},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHandBack(hb)
			for i, s := range tc.steps {
				if s.failed != "" {
					h.heartbeatFailed(raft.ServerID(s.failed), at(s.at))
				}
				h.ready(s.ready, at(s.at))
				answered := at(s.at)
				if s.silent {
					answered = at(s.at - hb)
				}
				if got := h.due("n1", at(s.at), answered); got != s.wantDue {
					t.Fatalf("step %d (at %v): due %v, want %v", i, s.at, got, s.wantDue)
				}
			}
		})
	}
}
