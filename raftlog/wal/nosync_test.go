package wal

import (
	"errors"
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

// TestStoreLogsNoSyncWritesLater checks that StoreLogsNoSync leaves its
// batch unwritten until SyncLogs: a crash before the sync (the files as
// they are) recovers the log without the batch, cleanly, while GetLog
// serves it from memory; after SyncLogs the files hold it.
func TestStoreLogsNoSyncWritesLater(t *testing.T) {
	for _, direct := range []bool{true, false} {
		t.Run(map[bool]string{true: "direct", false: "page-cache"}[direct], func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig()
			cfg.DirectIO = direct
			l := mustOpen(t, dir, cfg)
			defer l.Close()
			if err := l.StoreLogs(makeEntries(1, 10, 1)); err != nil {
				t.Fatal(err)
			}
			// 11-40 cross into a second 64 KiB segment (entries of up
			// to 4 KiB), whose rename is durable before the batch is
			// written.
			for _, b := range [][2]uint64{{11, 12}, {13, 40}} {
				if err := l.StoreLogsNoSync(makeEntries(b[0], b[1], 1)); err != nil {
					t.Fatal(err)
				}
				checkRange(t, l, 1, b[1], term1)
				expectRecovered(t, copyDir(t, dir), b[0]-1)
			}
			if err := l.SyncLogs(); err != nil {
				t.Fatal(err)
			}
			if n := len(l.segs); n < 2 {
				t.Fatalf("%d segment; the test wants the deferred batch to start a new one", n)
			}
			expectRecovered(t, copyDir(t, dir), 40)
		})
	}
}

// TestStoreLogsNoSyncWriteFails checks a deferred write that fails: the
// sync reports it, the log is failed, and the entries stay readable.
func TestStoreLogsNoSyncWriteFails(t *testing.T) {
	ffs := &faultFS{}
	l, err := open(t.TempDir(), testConfig(), ffs)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.StoreLogs(makeEntries(1, 5, 1)); err != nil {
		t.Fatal(err)
	}
	ffs.set("writev", errInjected)
	if err := l.StoreLogsNoSync(makeEntries(6, 9, 1)); err != nil {
		t.Fatalf("StoreLogsNoSync wrote at once: %v", err)
	}
	if err := l.SyncLogs(); !errors.Is(err, errInjected) {
		t.Fatalf("SyncLogs = %v, want the write's error", err)
	}
	if err := l.StoreLogs(makeEntries(10, 10, 1)); !errors.Is(err, ErrFailed) {
		t.Fatalf("StoreLogs after the failed write = %v, want ErrFailed", err)
	}
	checkRange(t, l, 1, 9, term1)
}
