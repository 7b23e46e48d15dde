package raftlog

import (
	"sync/atomic"
	"time"
)

// lease says until when this leader may serve reads from its own volume
// file without asking the other replicas.
//
// Argument: a follower only votes for a new leader after its own election
// timer expires, at least HeartbeatTimeout after it last heard from the
// current leader (hashicorp/raft also refuses votes while it knows a leader,
// unless the leader itself asked for a transfer). If a majority acknowledged
// a message this leader sent at time s (an entry committed, or a
// VerifyLeader round), no new leader can exist before s + HeartbeatTimeout.
// Until then nobody else can commit a write, so the local file, which holds
// every write acknowledged to any client, is current. The lease is that
// bound minus a safety margin for clock-rate differences, measured on the
// monotonic clock. A leader that starts a leadership transfer drops its
// lease first.
type lease struct {
	base     time.Time // monotonic origin
	duration time.Duration
	until    atomic.Int64 // nanoseconds since base; 0 = no lease
}

func newLease(d time.Duration) *lease {
	return &lease{base: time.Now(), duration: d}
}

// renew extends the lease to start + duration, where start is a time before
// a message that a majority has since acknowledged was sent.
func (l *lease) renew(start time.Time) {
	u := int64(start.Sub(l.base) + l.duration)
	for {
		cur := l.until.Load()
		if cur >= u || l.until.CompareAndSwap(cur, u) {
			return
		}
	}
}

// valid reports whether the lease holds now.
func (l *lease) valid() bool {
	return int64(time.Since(l.base)) < l.until.Load()
}

// remaining is how long the lease still holds (≤ 0 when it does not).
func (l *lease) remaining() time.Duration {
	return time.Duration(l.until.Load() - int64(time.Since(l.base)))
}

// drop ends the lease now.
func (l *lease) drop() { l.until.Store(0) }
