// Copyright (c) HashiCorp, Inc.
// SPDX-License-Identifier: MPL-2.0

// This file is Tandem's addition to its copy of hashicorp/raft (see
// third_party/README.md in the Tandem repository).

package raft

import (
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
)

// DeferredSyncLogStore is a LogStore that can append entries without waiting
// for them to be durable. A leader whose LogStore implements it (directly, or
// as the store behind a LogCache) writes new entries with StoreLogsNoSync,
// has them sent to its followers at once, and makes them durable with
// SyncLogs in the background. It counts its own copy of an entry toward the
// commit index only after SyncLogs has returned, so an entry is still
// committed only once it is durable on a majority; but the leader's sync now
// overlaps the followers' instead of preceding it (Raft dissertation,
// section 10.2.1). Followers keep using StoreLogs, which returns only once
// the entries are durable, before they acknowledge them.
type DeferredSyncLogStore interface {
	LogStore

	// StoreLogsNoSync appends logs like StoreLogs but may return before
	// they are durable. GetLog and LastIndex must see them at once.
	StoreLogsNoSync(logs []*Log) error

	// SyncLogs makes every entry stored before the call durable.
	SyncLogs() error
}

// deferredSyncStore returns the DeferredSyncLogStore behind logs, or nil.
func deferredSyncStore(logs LogStore) DeferredSyncLogStore {
	if c, ok := logs.(*LogCache); ok {
		if _, ok := c.store.(DeferredSyncLogStore); !ok {
			return nil
		}
		return c
	}
	ds, _ := logs.(DeferredSyncLogStore)
	return ds
}

// leaderSyncer makes a leader's new entries durable in the background and
// then records its own match index. One runs per term of leadership.
type leaderSyncer struct {
	store      DeferredSyncLogStore
	commitment *commitment
	id         ServerID
	stepDown   chan struct{}
	logger     hclog.Logger

	want atomic.Uint64 // highest index stored and not yet known durable
	kick chan struct{}
	stop chan struct{}
	done chan struct{}
}

func newLeaderSyncer(store DeferredSyncLogStore, c *commitment, id ServerID, stepDown chan struct{}, logger hclog.Logger) *leaderSyncer {
	s := &leaderSyncer{
		store:      store,
		commitment: c,
		id:         id,
		stepDown:   stepDown,
		logger:     logger,
		kick:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	go s.run()
	return s
}

// sync asks for the entries up to index, which the caller has stored with
// StoreLogsNoSync, to be made durable and then counted.
func (s *leaderSyncer) sync(index uint64) {
	s.want.Store(index)
	asyncNotifyCh(s.kick)
}

func (s *leaderSyncer) run() {
	defer close(s.done)
	var durable uint64
	for {
		select {
		case <-s.kick:
		case <-s.stop:
			return
		}
		// Entries up to index were stored before this load, hence
		// before the sync below starts.
		index := s.want.Load()
		if index <= durable {
			continue
		}
		if err := s.store.SyncLogs(); err != nil {
			// The leader's copy is not known durable: it never
			// counts it, and steps down.
			s.logger.Error("failed to sync logs", "error", err)
			asyncNotifyCh(s.stepDown)
			return
		}
		durable = index
		s.commitment.match(s.id, index)
	}
}

// close stops the syncer and then makes every stored entry durable, so that
// the log is synced before the server acts as a follower or candidate.
func (s *leaderSyncer) close() {
	close(s.stop)
	<-s.done
	if err := s.store.SyncLogs(); err != nil {
		s.logger.Error("failed to sync logs on leaving the leader state", "error", err)
	}
}
