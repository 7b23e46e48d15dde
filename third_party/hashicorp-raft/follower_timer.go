// Copyright (c) HashiCorp, Inc.
// SPDX-License-Identifier: MPL-2.0

// This file is Tandem's addition to its copy of hashicorp/raft (see
// third_party/README.md in the Tandem repository): when a follower starts
// an election.

package raft

import (
	"math/rand"
	"time"
)

// silenceTimer returns the timer of a follower's next check for its
// leader's silence, made at a check that found the last contact since ago
// (less than hb): it fires at a random moment between one and two heartbeat
// timeouts after that contact, so a follower notices a silent leader within
// two heartbeat timeouts of its last message, as with a timer restarted at
// every contact. Upstream restarted a full random timeout (one to two
// heartbeat timeouts) at every check, which noticed the silence up to
// three heartbeat timeouts after the last message when a check came just
// after it.
func silenceTimer(hb, since time.Duration) <-chan time.Time {
	return time.After(silenceWait(hb, since, rand.Int63()))
}

// silenceWait is silenceTimer's wait for the random number r >= 0: the rest
// of the heartbeat timeout after a contact since ago, plus r modulo hb.
func silenceWait(hb, since time.Duration, r int64) time.Duration {
	return hb - since + time.Duration(r)%hb
}

// hintCampaign is called on the main thread when this server turns down a
// vote or pre-vote request because the candidate's log is behind its own.
// The request was not turned down for a leader heard within the heartbeat
// timeout (leaderHeard), so the leader is silent or unknown: a candidate
// exists only because another server noticed that too. This server, whose
// log the other cannot beat, then checks for the silence at once instead of
// at its next timer and stands itself if it finds it. Upstream waited for
// its own timer, and the election for up to another heartbeat timeout (in
// Tandem's leader-kill benchmark: a follower one entry behind was refused
// 1.33 s after the leader's death and the other follower stood 450 ms
// later). An election is always safe; this only starts one that the
// server's own timer would start within two heartbeat timeouts anyway.
func (r *Raft) hintCampaign() {
	if r.getState() == Follower {
		r.campaignHint = true
	}
}

// takeCampaignHint reports whether hintCampaign was called since the last
// call, and clears the hint. Main thread only.
func (r *Raft) takeCampaignHint() bool {
	h := r.campaignHint
	r.campaignHint = false
	return h
}
