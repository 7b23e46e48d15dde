package wal

import (
	"testing"

	"github.com/hashicorp/raft"
)

// TestStoreLogsNoSync checks the deferred-sync appends a raft leader uses:
// the entries are visible at once and synced only by SyncLogs or by the
// next mutation, which syncs them before it writes anything (so no batch is
// ever written after an unsynced one).
func TestStoreLogsNoSync(t *testing.T) {
	dir := t.TempDir()
	ffs := &faultFS{}
	l, err := open(dir, testConfig(), ffs)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	syncs := func(want int64, after string) {
		t.Helper()
		if got := ffs.syncs.Swap(0); got != want {
			t.Fatalf("%s: %d fdatasyncs, want %d", after, got, want)
		}
	}

	if err := l.StoreLogs(makeEntries(1, 10, 1)); err != nil {
		t.Fatal(err)
	}
	syncs(1, "StoreLogs")

	if err := l.StoreLogsNoSync(makeEntries(11, 20, 1)); err != nil {
		t.Fatal(err)
	}
	syncs(0, "StoreLogsNoSync")
	if last, _ := l.LastIndex(); last != 20 {
		t.Fatalf("LastIndex = %d after StoreLogsNoSync, want 20", last)
	}
	checkRange(t, l, 1, 20, term1)

	if err := l.SyncLogs(); err != nil {
		t.Fatal(err)
	}
	syncs(1, "SyncLogs")
	if err := l.SyncLogs(); err != nil {
		t.Fatal(err)
	}
	syncs(0, "SyncLogs with nothing to sync")

	// Each mutation first syncs the batch left unsynced.
	for _, tc := range []struct {
		name   string
		mutate func(next uint64) error
		want   int64
	}{
		{"StoreLogsNoSync", func(next uint64) error { return l.StoreLogsNoSync(makeEntries(next, next+4, 1)) }, 1},
		{"StoreLogs", func(next uint64) error { return l.StoreLogs(makeEntries(next, next+4, 1)) }, 2},
		{"DeleteRange", func(uint64) error { return l.DeleteRange(1, 2) }, 1},
	} {
		last, _ := l.LastIndex()
		if err := l.StoreLogsNoSync(makeEntries(last+1, last+3, 1)); err != nil {
			t.Fatal(err)
		}
		syncs(0, "StoreLogsNoSync")
		if err := tc.mutate(last + 4); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		syncs(tc.want, tc.name+" after StoreLogsNoSync")
		if err := l.SyncLogs(); err != nil {
			t.Fatal(err)
		}
		ffs.syncs.Store(0)
	}
	// Close syncs what is left; a reopen finds it.
	last, _ := l.LastIndex()
	if err := l.StoreLogsNoSync(makeEntries(last+1, last+5, 1)); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	syncs(1, "Close after StoreLogsNoSync")
	l = mustOpen(t, dir, testConfig())
	defer l.Close()
	checkRange(t, l, 3, last+5, term1)
}

// TestStoreLogsNoSyncNewSegments checks deferred-sync appends across
// segment switches: every batch, including each new segment's first, is
// found after a reopen.
func TestStoreLogsNoSyncNewSegments(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, testConfig())
	var e raft.Log
	for first := uint64(1); first < 600; first += 50 {
		if err := l.StoreLogsNoSync(makeEntries(first, first+49, 1)); err != nil {
			t.Fatal(err)
		}
		if err := l.GetLog(first+49, &e); err != nil {
			t.Fatalf("GetLog(%d) before the sync: %v", first+49, err)
		}
	}
	if err := l.SyncLogs(); err != nil {
		t.Fatal(err)
	}
	if n := len(l.segs); n < 3 {
		t.Fatalf("%d segments; the test wants several", n)
	}
	l.Close()
	l = mustOpen(t, dir, testConfig())
	defer l.Close()
	checkRange(t, l, 1, 600, term1)
}
