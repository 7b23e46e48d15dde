// Copyright (c) HashiCorp, Inc.
// SPDX-License-Identifier: MPL-2.0

// This file is Tandem's addition to its copy of hashicorp/raft (see
// third_party/README.md in the Tandem repository).

package raft

import (
	"fmt"
	"testing"
)

// TestCommitOnlyVouchedEntries gives a follower entries of an older term
// past its committed log, as an old leader that lost its place would have
// left there, and then an AppendEntries of the current leader's term whose
// commit index reaches them but whose entries do not. The follower must
// not apply them: the request vouched for its log only up to its last
// entry (Raft's "index of last new entry"). Upstream committed up to the
// follower's own last index and applied the old leader's entries, which
// differ from the entries the leader commits at those indexes.
func TestCommitOnlyVouchedEntries(t *testing.T) {
	conf := inmemConfig(t)
	c := MakeClusterCustom(t, &MakeClusterOpts{Peers: 3, Bootstrap: true, Conf: conf, MonotonicLogs: true})
	defer c.Close()
	leader := c.Leader()
	applyTest(t, leader, 0, 10)
	c.WaitForReplication(10)

	f := c.Followers()[0]
	last, lastTerm := leader.getLastEntry()
	term := leader.getCurrentTerm()
	if lastTerm != term || term < 2 {
		t.Fatalf("leader's last entry of term %d in term %d", lastTerm, term)
	}
	send := func(entries []*Log, commit uint64) {
		t.Helper()
		req := AppendEntriesRequest{
			RPCHeader:         leader.getRPCHeader(),
			Term:              term,
			PrevLogEntry:      last,
			PrevLogTerm:       lastTerm,
			Entries:           entries,
			LeaderCommitIndex: commit,
		}
		var resp AppendEntriesResponse
		if err := leader.trans.AppendEntries(f.localID, f.localAddr, &req, &resp); err != nil {
			t.Fatal(err)
		}
		if !resp.Success {
			t.Fatalf("AppendEntries refused: %+v", resp)
		}
	}
	// Three entries of an older term after the leader's last one: an
	// old leader's, never committed.
	var stale []*Log
	for i := uint64(1); i <= 3; i++ {
		stale = append(stale, &Log{Index: last + i, Term: term - 1, Type: LogCommand, Data: []byte(fmt.Sprintf("stale%d", i))})
	}
	send(stale, last)
	// A commit index past them, from a request that carries none of them.
	send(nil, last+3)
	if got := f.getCommitIndex(); got != last {
		t.Errorf("follower's commit index %d, want %d: it committed entries no request vouched for", got, last)
	}

	// The leader's own entries at those indexes replace the stale ones
	// everywhere.
	applyTest(t, leader, 10, 15)
	c.WaitForReplication(15)
	c.EnsureSame(t)
}

// applyTest applies commands "test<from>" to "test<to-1>" through leader
// and waits for the last one.
func applyTest(t *testing.T, leader *Raft, from, to int) {
	t.Helper()
	var f Future
	for i := from; i < to; i++ {
		f = leader.Apply([]byte(fmt.Sprintf("test%d", i)), 0)
	}
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
}
