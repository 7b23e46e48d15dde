// Copyright (c) HashiCorp, Inc.
// SPDX-License-Identifier: MPL-2.0

// This file is Tandem's addition to its copy of hashicorp/raft (see
// third_party/README.md in the Tandem repository).

package raft

import (
	"errors"
	"sync"
	"testing"
)

// typedStore is an InmemStore that is a LogTypeStore and counts the
// entries GetLog reads.
type typedStore struct {
	*InmemStore
	mu   sync.Mutex
	gets map[uint64]int
}

func (s *typedStore) GetLog(index uint64, log *Log) error {
	s.mu.Lock()
	s.gets[index]++
	s.mu.Unlock()
	return s.InmemStore.GetLog(index, log)
}

func (s *typedStore) LogType(index uint64) (LogType, error) {
	var l Log
	if err := s.InmemStore.GetLog(index, &l); err != nil {
		return 0, err
	}
	return l.Type, nil
}

// TestNewRaftReadsOnlyConfigurationEntries checks that NewRaft's start-up
// scan, over a LogCache whose store is a LogTypeStore, reads in full only
// the configuration entries (and the last entry, which it reads anyway),
// and still finds the latest configuration.
func TestNewRaftReadsOnlyConfigurationEntries(t *testing.T) {
	store := &typedStore{InmemStore: NewInmemStore(), gets: map[uint64]int{}}
	conf := Configuration{Servers: []Server{{Suffrage: Voter, ID: "a", Address: "a"}}}
	var logs []*Log
	for i := uint64(1); i <= 20; i++ {
		l := &Log{Index: i, Term: 1, Type: LogCommand, Data: []byte("x")}
		if i == 1 || i == 10 {
			l.Type, l.Data = LogConfiguration, EncodeConfiguration(conf)
		}
		logs = append(logs, l)
	}
	if err := store.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	cache, err := NewLogCache(4, store)
	if err != nil {
		t.Fatal(err)
	}
	_, trans := NewInmemTransport("a")
	c := inmemConfig(t)
	c.LocalID = "a"
	r, err := NewRaft(c, &MockFSM{}, cache, NewInmemStore(), NewDiscardSnapshotStore(), trans)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Shutdown()
	store.mu.Lock()
	defer store.mu.Unlock()
	for i := uint64(2); i < 20; i++ {
		if i != 10 && store.gets[i] > 0 {
			t.Errorf("entry %d (a command) read %d times", i, store.gets[i])
		}
	}
	if store.gets[1] == 0 || store.gets[10] == 0 {
		t.Errorf("configuration entries read %d and %d times, want at least once", store.gets[1], store.gets[10])
	}
	if idx := r.configurations.latestIndex; idx != 10 {
		t.Errorf("latest configuration at %d, want 10", idx)
	}
}

// TestLogCacheLogTypeUntypedStore checks that a LogCache over a store that
// is no LogTypeStore answers LogType for an entry it has not cached with an
// error, not a panic, and that logTypeStore does not offer it.
func TestLogCacheLogTypeUntypedStore(t *testing.T) {
	store := NewInmemStore()
	if err := store.StoreLog(&Log{Index: 1, Term: 1, Type: LogCommand}); err != nil {
		t.Fatal(err)
	}
	cache, err := NewLogCache(4, store)
	if err != nil {
		t.Fatal(err)
	}
	if ts := logTypeStore(cache); ts != nil {
		t.Fatalf("logTypeStore offered a cache over an untyped store: %T", ts)
	}
	if _, err := cache.LogType(1); !errors.Is(err, errNoLogType) {
		t.Fatalf("LogType of an uncached entry = %v, want errNoLogType", err)
	}
}
