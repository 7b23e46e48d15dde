package raftlog

import (
	"testing"

	"github.com/hashicorp/raft"
)

// TestLogCovers checks when a replica may acknowledge an InstallSnapshot
// without installing it: it holds the snapshot's last entry (in its log or
// as its own checkpoint's) and entries after it.
func TestLogCovers(t *testing.T) {
	logs := raft.NewInmemStore()
	for i := uint64(101); i <= 120; i++ {
		if err := logs.StoreLog(&raft.Log{Index: i, Term: 3, Type: raft.LogCommand}); err != nil {
			t.Fatal(err)
		}
	}
	snaps := raft.NewInmemSnapshotStore()
	sink, err := snaps.Create(raft.SnapshotVersionMax, 100, 2, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		index, term uint64
		want        bool
	}{
		{"the checkpoint's last entry, entries after it", 100, 2, true},
		{"an entry of the log, entries after it", 110, 3, true},
		{"an entry of the log, another term", 110, 2, false},
		{"the checkpoint's index, another term", 100, 3, false},
		{"the log's last entry: nothing after it", 120, 3, false},
		{"past the log", 130, 3, false},
		{"before the checkpoint", 50, 1, false},
	}
	for _, tt := range tests {
		if got := logCovers(logs, snaps, tt.index, tt.term); got != tt.want {
			t.Errorf("%s: logCovers(%d, %d) = %v, want %v", tt.name, tt.index, tt.term, got, tt.want)
		}
	}
}
