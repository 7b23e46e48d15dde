// Copyright (c) HashiCorp, Inc.
// SPDX-License-Identifier: MPL-2.0

// This file is Tandem's addition to its copy of hashicorp/raft (see
// third_party/README.md in the Tandem repository).

package raft

import (
	"testing"
	"time"
)

// TestVoteAfterLeaderSilence checks the rule of leaderHeard: a follower
// that knows a leader turns down another server's pre-vote and vote
// requests while it has heard from that leader within the heartbeat
// timeout, and grants them (for a log as up to date as its own) once it
// has not, even before its own heartbeat timer has made it forget the
// leader. Upstream refused until then.
func TestVoteAfterLeaderSilence(t *testing.T) {
	conf := inmemConfig(t)
	// A timeout long against the microseconds between the steps below, in
	// which the follower's own heartbeat timer must not fire (it would
	// clear the leader).
	conf.HeartbeatTimeout = 500 * time.Millisecond
	conf.ElectionTimeout = 500 * time.Millisecond
	conf.LeaderLeaseTimeout = 250 * time.Millisecond
	c := MakeCluster(3, t, conf)
	defer c.Close()
	leader := c.Leader()
	var followers []*Raft
	for limit := time.Now().Add(c.longstopTimeout); time.Now().Before(limit) && len(followers) != 2; {
		c.WaitEvent(nil, c.conf.CommitTimeout)
		followers = c.GetInState(Follower)
	}
	if len(followers) != 2 {
		t.Fatalf("expected two followers: %v", followers)
	}
	f, other := followers[0], followers[1]
	otherT := c.trans[c.IndexOf(other)]

	// The requests come from the other follower and claim f's own last
	// entry, so only the leader rule can turn them down.
	preVote := func() (bool, error) {
		idx, term := f.getLastEntry()
		req := RequestPreVoteRequest{RPCHeader: other.getRPCHeader(), Term: f.getCurrentTerm() + 1, LastLogIndex: idx, LastLogTerm: term}
		var resp RequestPreVoteResponse
		err := otherT.RequestPreVote(f.localID, f.localAddr, &req, &resp)
		return resp.Granted, err
	}
	vote := func() (bool, error) {
		idx, term := f.getLastEntry()
		req := RequestVoteRequest{RPCHeader: other.getRPCHeader(), Term: f.getCurrentTerm() + 1, LastLogIndex: idx, LastLogTerm: term}
		var resp RequestVoteResponse
		err := otherT.RequestVote(f.localID, f.localAddr, &req, &resp)
		return resp.Granted, err
	}

	// The leader is heard: both are turned down.
	if granted, err := preVote(); err != nil || granted {
		t.Fatalf("pre-vote with the leader heard: granted %v, %v", granted, err)
	}
	if granted, err := vote(); err != nil || granted {
		t.Fatalf("vote with the leader heard: granted %v, %v", granted, err)
	}

	// The leader falls silent (cut off from everyone) and f last heard
	// from it longer ago than the heartbeat timeout, but still knows it.
	c.Disconnect(leader.localAddr)
	f.lastContactLock.Lock()
	f.lastContact = time.Now().Add(-conf.HeartbeatTimeout - time.Millisecond)
	f.lastContactLock.Unlock()
	if got := f.Leader(); got != leader.localAddr {
		t.Fatalf("f already forgot the leader (%q): the test cannot tell the rules apart", got)
	}
	if granted, err := preVote(); err != nil || !granted {
		t.Fatalf("pre-vote after the leader's silence: granted %v, %v", granted, err)
	}
	if granted, err := vote(); err != nil || !granted {
		t.Fatalf("vote after the leader's silence: granted %v, %v", granted, err)
	}
}
