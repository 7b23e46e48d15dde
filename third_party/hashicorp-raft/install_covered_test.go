// Copyright (c) HashiCorp, Inc.
// SPDX-License-Identifier: MPL-2.0

// This file is Tandem's addition to its copy of hashicorp/raft (see
// third_party/README.md in the Tandem repository).

package raft

import "testing"

// TestSnapshotCovered checks which InstallSnapshot requests a server may
// acknowledge without installing: those up to an index it applied, or
// whose last entry its log holds with the same term.
func TestSnapshotCovered(t *testing.T) {
	logs := NewInmemStore()
	for i := uint64(101); i <= 120; i++ {
		if err := logs.StoreLog(&Log{Index: i, Term: 3, Type: LogCommand}); err != nil {
			t.Fatal(err)
		}
	}
	r := &Raft{logs: logs}
	r.setLastSnapshot(100, 2)
	r.setLastApplied(105)
	r.setLastLog(120, 3)
	tests := []struct {
		name        string
		index, term uint64
		want        bool
	}{
		{"applied: the snapshot's own index", 100, 2, true},
		{"applied: before the snapshot", 50, 1, true},
		{"applied: an entry of the log", 105, 3, true},
		{"not applied, in the log, same term", 110, 3, true},
		{"not applied, in the log, another term", 110, 2, false},
		{"the log's last entry", 120, 3, true},
		{"the log's last entry, another term", 120, 4, false},
		{"past the log", 130, 3, false},
	}
	for _, tt := range tests {
		if got := r.snapshotCovered(tt.index, tt.term); got != tt.want {
			t.Errorf("%s: snapshotCovered(%d, %d) = %v, want %v", tt.name, tt.index, tt.term, got, tt.want)
		}
	}
}

// TestStaleSnapshotKeepsLog sends a follower of a cluster with monotonic
// log stores a snapshot older than what it applied, as a leader does when
// an earlier InstallSnapshot's answer was lost. Upstream installed it: the
// follower emptied its log but kept its last index, accepted the next
// AppendEntries after that index, and panicked applying entries it no
// longer had ("log not found"). The follower now acknowledges it without
// installing, and then takes an AppendEntries whose previous entry it
// compacted away (the leader's retry from the snapshot's index).
func TestStaleSnapshotKeepsLog(t *testing.T) {
	conf := inmemConfig(t)
	conf.TrailingLogs = 10
	c := MakeClusterCustom(t, &MakeClusterOpts{Peers: 3, Bootstrap: true, Conf: conf, MonotonicLogs: true})
	defer c.Close()
	leader := c.Leader()
	applyTest(t, leader, 0, 50)
	c.WaitForReplication(50)
	if err := leader.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	snaps, err := leader.snapshots.List()
	if err != nil || len(snaps) == 0 {
		t.Fatalf("leader's snapshots: %v, %v", snaps, err)
	}
	applyTest(t, leader, 50, 100)
	c.WaitForReplication(100)

	f := c.Followers()[0]
	// The follower compacts its own log past the leader's snapshot.
	if err := f.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	applied := f.getLastApplied()
	lastBefore, _ := f.getLastLog()
	meta, rc, err := leader.snapshots.Open(snaps[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if meta.Index >= applied {
		t.Fatalf("snapshot at %d is not behind the follower's applied index %d", meta.Index, applied)
	}
	req := InstallSnapshotRequest{
		RPCHeader:          leader.getRPCHeader(),
		SnapshotVersion:    meta.Version,
		Term:               leader.getCurrentTerm(),
		Leader:             leader.trans.EncodePeer(leader.localID, leader.localAddr),
		LastLogIndex:       meta.Index,
		LastLogTerm:        meta.Term,
		Size:               meta.Size,
		Configuration:      EncodeConfiguration(meta.Configuration),
		ConfigurationIndex: meta.ConfigurationIndex,
	}
	var resp InstallSnapshotResponse
	if err := leader.trans.InstallSnapshot(f.localID, f.localAddr, &req, &resp, rc); err != nil {
		t.Fatal(err)
	}
	if !resp.Success {
		t.Fatalf("stale snapshot refused: %+v", resp)
	}
	if got := f.getLastApplied(); got != applied {
		t.Errorf("applied index after the stale snapshot: %d, want %d", got, applied)
	}
	if last, _ := f.getLastLog(); last != lastBefore {
		t.Errorf("last log index after the stale snapshot: %d, want %d", last, lastBefore)
	}
	if last, err := f.logs.LastIndex(); err != nil || last != lastBefore {
		t.Errorf("log store's last index after the stale snapshot: %d (%v), want %d", last, err, lastBefore)
	}

	// The leader's retry after such an acknowledgement starts at the
	// snapshot's index, which the follower compacted away; the entries
	// up to its own last one are duplicates.
	first, err := f.logs.FirstIndex()
	if err != nil || first <= meta.Index+1 {
		t.Fatalf("follower's first log index %d (%v): not past the snapshot's %d", first, err, meta.Index)
	}
	var entries []*Log
	for i := meta.Index + 1; i <= lastBefore; i++ {
		var l Log
		if err := leader.logs.GetLog(i, &l); err != nil {
			t.Fatalf("leader's entry %d: %v", i, err)
		}
		entries = append(entries, &l)
	}
	ae := AppendEntriesRequest{
		RPCHeader:         leader.getRPCHeader(),
		Term:              leader.getCurrentTerm(),
		PrevLogEntry:      meta.Index,
		PrevLogTerm:       meta.Term,
		Entries:           entries,
		LeaderCommitIndex: leader.getCommitIndex(),
	}
	var aeResp AppendEntriesResponse
	if err := leader.trans.AppendEntries(f.localID, f.localAddr, &ae, &aeResp); err != nil {
		t.Fatal(err)
	}
	if !aeResp.Success {
		t.Fatalf("AppendEntries from the snapshot's index refused: %+v", aeResp)
	}
	if got, err := f.logs.FirstIndex(); err != nil || got != first {
		t.Errorf("follower's first log index after the retry: %d (%v), want %d", got, err, first)
	}

	applyTest(t, leader, 100, 120)
	c.WaitForReplication(120)
	c.EnsureSame(t)
}
