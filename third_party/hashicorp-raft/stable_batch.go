// Copyright (c) HashiCorp, Inc.
// SPDX-License-Identifier: MPL-2.0

// This file is Tandem's addition to its copy of hashicorp/raft (see
// third_party/README.md in the Tandem repository): fewer syncs per
// election.

package raft

import "fmt"

// BatchStableStore is a StableStore that can set several keys in one
// durable write. When the StableStore given to NewRaft implements it, a
// candidate persists its new term and its vote for itself with one write
// instead of three, and a server granting a vote persists the vote with
// one write instead of two: each is a sync on the path of every election,
// and under write-back pressure a sync can take a hundred milliseconds or
// more.
type BatchStableStore interface {
	StableStore
	// SetBatch sets every key of uints as SetUint64 would and every key
	// of vals as Set would, in one durable write: after a crash the store
	// holds all of them or none.
	SetBatch(uints map[string]uint64, vals map[string][]byte) error
}

// setTermAndVote makes term the current term and records this server's vote
// for candidate in it, in one write if the stable store can batch (it
// reports whether it did). Like setCurrentTerm it panics if the write
// fails.
func (r *Raft) setTermAndVote(term uint64, candidate []byte) bool {
	b, ok := r.stable.(BatchStableStore)
	if !ok {
		r.setCurrentTerm(term)
		return false
	}
	err := b.SetBatch(map[string]uint64{string(keyCurrentTerm): term, string(keyLastVoteTerm): term},
		map[string][]byte{string(keyLastVoteCand): candidate})
	if err != nil {
		panic(fmt.Errorf("failed to save current term and vote: %v", err))
	}
	r.raftState.setCurrentTerm(term)
	return true
}
