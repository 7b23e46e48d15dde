package raftlog

import (
	"time"

	"github.com/hashicorp/raft"
)

// handBackEvery is the least time between two attempts of a leader to hand
// leadership to the volume's preferred host, and how long that host must
// have answered the leader's heartbeats before an attempt: a host that
// came back gets that long to catch up (replay its log, receive what it
// missed; 3–5 s in the leader-kill benchmark) before it is asked to lead.
const handBackEvery = 10 * time.Second

// handBack decides when a leader hands leadership to the preferred host.
//
// A transfer stops the leader's I/O until the target takes over and
// serves, or for raft's ElectionTimeout if it never does; so it is tried
// only on a host that answers and has had time to catch up. Before, the
// successor of a preferred leader that died tried at once and stalled for
// the timeout (650 ms in the leader-kill benchmark, on top of the
// election), and again every 10 s while the host stayed down.
//
// A host counts as not answering while the leader's heartbeats to it
// fail: raft reports each failure (FailedHeartbeatObservation) and retries
// after at most half a heartbeat timeout, so a dead host shows a failure at
// least once per heartbeat timeout. A host cut off by a partition fails
// them only once the connection times out (10 s), so it also counts as not
// answering while no AppendEntries to it got an answer for a heartbeat
// timeout (the transport's Answered): before, a leader elected because
// the preferred host was cut off tried to hand leadership back to it at
// once and stalled for the transfer's timeout (650 ms). The leader also
// waits one heartbeat timeout after becoming ready, for its first
// heartbeats to have reached (or failed to reach) every peer.
type handBack struct {
	wait   time.Duration               // one heartbeat timeout
	since  time.Time                   // when this host last became a ready leader (zero: it is not one)
	failed map[raft.ServerID]time.Time // the last heartbeat failure to each peer
	last   time.Time                   // the last attempt
}

func newHandBack(heartbeatTimeout time.Duration) *handBack {
	return &handBack{wait: heartbeatTimeout, failed: map[raft.ServerID]time.Time{}}
}

// heartbeatFailed records a failed heartbeat to peer at now.
func (h *handBack) heartbeatFailed(peer raft.ServerID, now time.Time) {
	h.failed[peer] = now
}

// ready records whether this host is a ready leader at now.
func (h *handBack) ready(ready bool, now time.Time) {
	switch {
	case !ready:
		h.since = time.Time{}
	case h.since.IsZero():
		h.since = now
	}
}

// due reports whether to try handing leadership to preferred at now, and
// if so counts the attempt. answered is when preferred last answered this
// leader's AppendEntries (heartbeats included): a host that has not within
// a heartbeat timeout is not tried, even before a heartbeat to it failed
// (a host cut off by a partition fails them only when the transport's
// connection times out, after 10 s).
func (h *handBack) due(preferred string, now, answered time.Time) bool {
	if h.since.IsZero() || now.Sub(h.since) < h.wait || now.Sub(h.last) < handBackEvery || now.Sub(answered) >= h.wait {
		return false
	}
	if t, ok := h.failed[raft.ServerID(preferred)]; ok && now.Sub(t) < handBackEvery {
		return false
	}
	h.last = now
	return true
}
