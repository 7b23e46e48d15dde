package raftlog

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// idleTick is one call of spareReleaser.tick: the log's last index, and
// the time since the start.
type idleTick struct {
	last uint64
	at   time.Duration
}

// spareLog is a log store that counts ReleaseSpares calls.
type spareLog struct {
	raft.LogStore
	calls []int
}

func (s *spareLog) ReleaseSpares(keep int) (int, error) {
	s.calls = append(s.calls, keep)
	return 3, nil
}

// TestSpareReleaser checks that spare segments are released once per idle
// period, only after spareIdleAfter without a new entry.
func TestSpareReleaser(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	for _, tc := range []struct {
		name      string
		ticks     []idleTick
		wantCalls int
	}{
		{"busy", []idleTick{{10, 0}, {11, 30 * time.Second}, {12, 60 * time.Second}, {13, 90 * time.Second}}, 0},
		{"idle a minute", []idleTick{{10, 0}, {10, 30 * time.Second}, {10, 61 * time.Second}}, 1},
		{"idle long: once", []idleTick{{10, 0}, {10, 61 * time.Second}, {10, 2 * time.Minute}, {10, time.Hour}}, 1},
		{"idle, written, idle again", []idleTick{{10, 0}, {10, 61 * time.Second}, {11, 62 * time.Second}, {11, 2 * time.Minute}, {11, 3 * time.Minute}}, 2},
		{"first tick only sets the start", []idleTick{{10, time.Hour}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &spareLog{}
			r := spareReleaser{logs: logs}
			for _, k := range tc.ticks {
				if _, err := r.tick(k.last, t0.Add(k.at)); err != nil {
					t.Fatal(err)
				}
			}
			if len(logs.calls) != tc.wantCalls {
				t.Fatalf("ReleaseSpares called %d times, want %d", len(logs.calls), tc.wantCalls)
			}
			for _, keep := range logs.calls {
				if keep != spareKeep {
					t.Fatalf("ReleaseSpares(%d), want %d kept", keep, spareKeep)
				}
			}
		})
	}
	// A store without spares is left alone.
	r := spareReleaser{logs: raft.NewInmemStore()}
	r.tick(1, t0)
	if n, err := r.tick(1, t0.Add(time.Hour)); n != 0 || err != nil {
		t.Fatalf("tick on a store without spares: %d, %v", n, err)
	}
}
