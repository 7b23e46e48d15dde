// Copyright (c) HashiCorp, Inc.
// SPDX-License-Identifier: MPL-2.0

// This file is Tandem's addition to its copy of hashicorp/raft (see
// third_party/README.md in the Tandem repository).

package raft

import "errors"

// LogTypeStore is a LogStore that can tell an entry's type without reading
// its data. NewRaft scans every entry after the last snapshot for
// configuration changes; with a LogTypeStore (directly, or as the store
// behind a LogCache) it reads only the configuration entries in full,
// which matters when the entries are large and not cached.
type LogTypeStore interface {
	// LogType returns the type of the entry at index, or an error as
	// GetLog would.
	LogType(index uint64) (LogType, error)
}

// logTypeStore returns the LogTypeStore behind logs, or nil (as
// deferredSyncStore does for DeferredSyncLogStore): a LogCache is one only
// when its store is.
func logTypeStore(logs LogStore) LogTypeStore {
	if c, ok := logs.(*LogCache); ok {
		if _, ok := c.store.(LogTypeStore); !ok {
			return nil
		}
		return c
	}
	ts, _ := logs.(LogTypeStore)
	return ts
}

// errNoLogType is LogCache.LogType's answer for an entry it has not cached
// when its store is no LogTypeStore.
var errNoLogType = errors.New("raft: the log store cannot tell entry types")

// LogType implements LogTypeStore: from the cache, else from the store if
// it is a LogTypeStore, else errNoLogType (logTypeStore does not hand such
// a cache out as a LogTypeStore).
func (c *LogCache) LogType(idx uint64) (LogType, error) {
	c.l.RLock()
	cached := c.cache[idx%uint64(len(c.cache))]
	c.l.RUnlock()
	if cached != nil && cached.Index == idx {
		return cached.Type, nil
	}
	ts, ok := c.store.(LogTypeStore)
	if !ok {
		return 0, errNoLogType
	}
	return ts.LogType(idx)
}

// isConfigurationType reports whether entries of type t change the
// configuration (see processConfigurationLogEntry).
func isConfigurationType(t LogType) bool {
	return t == LogConfiguration || t == LogAddPeerDeprecated || t == LogRemovePeerDeprecated
}
