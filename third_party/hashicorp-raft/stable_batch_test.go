// Copyright (c) HashiCorp, Inc.
// SPDX-License-Identifier: MPL-2.0

// This file is Tandem's addition to its copy of hashicorp/raft (see
// third_party/README.md in the Tandem repository).

package raft

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// batchStore is an InmemStore that can batch, and records its writes.
type batchStore struct {
	*InmemStore
	mu     sync.Mutex
	writes []string
}

func (b *batchStore) record(w string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.writes = append(b.writes, w)
}

func (b *batchStore) Set(k, v []byte) error {
	b.record("Set " + string(k))
	return b.InmemStore.Set(k, v)
}

func (b *batchStore) SetUint64(k []byte, v uint64) error {
	b.record("SetUint64 " + string(k))
	return b.InmemStore.SetUint64(k, v)
}

func (b *batchStore) SetBatch(uints map[string]uint64, vals map[string][]byte) error {
	var keys []string
	for k, v := range uints {
		keys = append(keys, k)
		if err := b.InmemStore.SetUint64([]byte(k), v); err != nil {
			return err
		}
	}
	for k, v := range vals {
		keys = append(keys, k)
		if err := b.InmemStore.Set([]byte(k), v); err != nil {
			return err
		}
	}
	slices.Sort(keys)
	b.record(fmt.Sprint("SetBatch ", keys))
	return nil
}

func (b *batchStore) taken() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	w := b.writes
	b.writes = nil
	return w
}

// TestBatchStableStore checks that a candidate persists its term and its
// vote for itself in one write, and a vote in one write, when the stable
// store can batch.
func TestBatchStableStore(t *testing.T) {
	conf := inmemConfig(t)
	conf.LocalID = "a"
	logs := NewInmemStore()
	stable := &batchStore{InmemStore: NewInmemStore()}
	snaps := NewInmemSnapshotStore()
	_, trans := NewInmemTransport("a")
	if err := BootstrapCluster(conf, logs, stable, snaps, trans, Configuration{Servers: []Server{{Suffrage: Voter, ID: "a", Address: "a"}}}); err != nil {
		t.Fatal(err)
	}
	stable.taken()
	r, err := NewRaft(conf, &MockFSM{}, logs, stable, snaps, trans)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Shutdown()
	// NewRaft writes back the stored term before it starts; the election
	// comes at least a heartbeat timeout later.
	if got := stable.taken(); !slices.Equal(got, []string{"SetUint64 CurrentTerm"}) {
		t.Fatalf("NewRaft wrote %q", got)
	}
	for deadline := time.Now().Add(10 * time.Second); r.State() != Leader; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no election")
		}
	}
	want := []string{"SetBatch [CurrentTerm LastVoteCand LastVoteTerm]"}
	if got := stable.taken(); !slices.Equal(got, want) {
		t.Fatalf("the election wrote %q, want %q", got, want)
	}
	if term, err := stable.GetUint64(keyCurrentTerm); err != nil || term != r.getCurrentTerm() {
		t.Fatalf("stored term %d (%v), raft's %d", term, err, r.getCurrentTerm())
	}
	if v, err := stable.GetUint64(keyLastVoteTerm); err != nil || v != r.getCurrentTerm() {
		t.Fatalf("stored vote term %d (%v)", v, err)
	}
	if v, err := stable.Get(keyLastVoteCand); err != nil || string(v) != string(r.getRPCHeader().Addr) {
		t.Fatalf("stored vote %q (%v)", v, err)
	}

	if err := r.persistVote(9, []byte("b")); err != nil {
		t.Fatal(err)
	}
	want = []string{"SetBatch [LastVoteCand LastVoteTerm]"}
	if got := stable.taken(); !slices.Equal(got, want) {
		t.Fatalf("a vote wrote %q, want %q", got, want)
	}
}
