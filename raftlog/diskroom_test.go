package raftlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-project/tandem/raftlog/wal"
	"github.com/tandem-project/tandem/volume"
)

// TestDiskRoom checks the reserve arithmetic, the caching of the file
// system's free space, and that a failing statfs does not block writes.
func TestDiskRoom(t *testing.T) {
	const mib = 1 << 20
	type step struct {
		at    time.Duration // since the start
		free  int64         // what statfs says (-1: it fails)
		n     int64
		full  bool // want ErrNoSpace
		calls int  // statfs calls so far
	}
	for _, tc := range []struct {
		name    string
		reserve int64
		steps   []step
	}{
		{"no reserve", 0, []step{{0, 0, mib, false, 0}}},
		{"room", 256 * mib, []step{{0, 300 * mib, 10 * mib, false, 1}}},
		{"into the reserve", 256 * mib, []step{{0, 300 * mib, 50 * mib, true, 1}}},
		{"at the reserve", 256 * mib, []step{{0, 256 * mib, 0, false, 1}, {diskRoomEvery, 256*mib - 1, 0, true, 2}}},
		{"cached for a while", 256 * mib, []step{
			{0, 300 * mib, 0, false, 1},
			{diskRoomEvery / 2, 100 * mib, 0, false, 1}, // not looked at yet
			{diskRoomEvery, 100 * mib, 0, true, 2},
		}},
		{"statfs fails: last figure", 256 * mib, []step{
			{0, -1, 0, false, 1}, // nothing known: no limit
			{diskRoomEvery, 100 * mib, 0, true, 2},
			{2 * diskRoomEvery, -1, 0, true, 3},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Unix(1e9, 0)
			var now time.Time
			var free int64
			calls := 0
			d := newDiskRoom("/data", tc.reserve)
			d.now = func() time.Time { return now }
			d.statfs = func(string) (int64, error) {
				calls++
				if free < 0 {
					return 0, errors.New("statfs failed")
				}
				return free, nil
			}
			for i, s := range tc.steps {
				now, free = start.Add(s.at), s.free
				err := d.check(s.n)
				if got := errors.Is(err, volume.ErrNoSpace); got != s.full || (err != nil && !got) {
					t.Fatalf("step %d: %v, want full %v", i, err, s.full)
				}
				if calls != s.calls {
					t.Fatalf("step %d: %d statfs calls, want %d", i, calls, s.calls)
				}
			}
		})
	}
}

// TestDiskReserveFailsReplica checks that a follower whose host reaches
// its disk reserve fails on its next write, as on a full disk, and
// leaves its group, while the others go on.
func TestDiskReserveFailsReplica(t *testing.T) {
	c, _, l, f := volumeOnThree(t)
	ctx := context.Background()
	lv := c.hosts[l].vol["vol"]
	if err := lv.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), 0, 0); err != nil {
		t.Fatal(err)
	}
	room := c.hosts[f].h.room
	room.mu.Lock()
	room.reserve = 1 << 62 // more than any disk has free
	room.checked = time.Time{}
	room.mu.Unlock()
	if err := lv.WriteAt(ctx, bytes.Repeat([]byte{2}, 4096), 4096, 0); err != nil {
		t.Fatalf("write with a follower out of room: %v", err)
	}
	if err := waitFailed(t, c.hosts[f].vol["vol"]); !errors.Is(err, volume.ErrNoSpace) || !strings.Contains(err.Error(), "disk-reserve") {
		t.Fatalf("follower's failure: %v", err)
	}
	if err := lv.WriteAt(ctx, bytes.Repeat([]byte{3}, 4096), 8192, 0); err != nil {
		t.Fatalf("write after the follower failed: %v", err)
	}
}

// TestWriteLogFailsReplica checks the group's own path for a failed write
// log (the watch loop's logFailed), not the volume file's: a follower
// whose log cannot start a new segment, while its volume file has room,
// leaves its group with the log's error, and the others go on.
func TestWriteLogFailsReplica(t *testing.T) {
	errLogFull := errors.New("test: the log's disk is full")
	full := map[string]*atomic.Bool{"n1": {}, "n2": {}, "n3": {}}
	c := newTestCluster(t, 3, func(cfg *Config) {
		f := full[cfg.ID]
		cfg.logConfig = func(wc *wal.Config) {
			wc.SegmentSize, wc.PreZeroRate, wc.MaxRecycled = 64<<10, 0, 0
			room := wc.Room
			wc.Room = func(n int64) error {
				if f.Load() {
					return errLogFull
				}
				return room(n)
			}
		}
	})
	c.open(VolumeSpec{Name: "vol", Size: 8 << 20})
	l := c.leader("vol")
	f := (l + 1) % 3
	ctx := context.Background()
	lv, fv := c.hosts[l].vol["vol"], c.hosts[f].vol["vol"]
	full[c.peers[f].ID].Store(true)
	// 16 KiB writes: a 64 KiB segment fills in a few, and the follower
	// needs a fresh one (the one prepared before the room failed first).
	for i := 0; fv.Err() == nil; i++ {
		if i > 2000 {
			t.Fatal("the follower's log never failed")
		}
		if err := lv.WriteAt(ctx, bytes.Repeat([]byte{byte(i)}, 16<<10), int64(i%512)*16<<10, 0); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if err := fv.Err(); !errors.Is(err, wal.ErrFailed) || !strings.Contains(err.Error(), errLogFull.Error()) || !strings.Contains(err.Error(), "write log") {
		t.Fatalf("follower's failure: %v, want its write log's", err)
	}
	if err := lv.Err(); err != nil {
		t.Fatalf("leader failed too: %v", err)
	}
	if err := lv.WriteAt(ctx, bytes.Repeat([]byte{0xee}, 4096), 0, 0); err != nil {
		t.Fatalf("write after the follower failed: %v", err)
	}
}

// TestOutOfRoom checks when a write that finds no leader gets ENOSPC:
// after ten heartbeat timeouts (at most StallTimeout), if this host's
// replica failed for lack of space or its disk is within RoomMargin of the
// reserve, or if the hosts that said (gossip) their disks are short of
// space hold so many replicas that the others are no quorum. A proxy's
// host (not among the replicas) does not count its own disk.
func TestOutOfRoom(t *testing.T) {
	const mib = 1 << 20
	full := fmt.Errorf("%w: entry 9: %w", errReplicaFailed, volume.ErrNoSpace)
	eio := fmt.Errorf("%w: entry 9: input/output error", errReplicaFailed)
	three := []string{"a", "b", "c"}
	for _, tc := range []struct {
		name     string
		stall    time.Duration // StallTimeout (HeartbeatTimeout is 1 s)
		failure  error
		free     int64 // above the 256 MiB reserve
		waited   time.Duration
		replicas []string // this host is "a"
		short    []string // the other hosts that say they are short
		enospc   bool
	}{
		{"replica full, not waited enough", time.Minute, full, 0, 9 * time.Second, three, nil, false},
		{"replica full", time.Minute, full, 0, 10 * time.Second, three, nil, true},
		{"replica full, the disk has room again", time.Minute, full, 1 << 40, 10 * time.Second, three, nil, true},
		{"healthy replica, disk short", time.Minute, nil, RoomMargin - mib, 10 * time.Second, three, nil, true},
		{"healthy replica, disk has room", time.Minute, nil, RoomMargin, 10 * time.Second, three, nil, false},
		{"disk error, disk has room", time.Minute, eio, 1 << 40, time.Minute, three, nil, false},
		{"disk error, disk short", time.Minute, eio, 0, 10 * time.Second, three, nil, true},
		{"short StallTimeout bounds the wait", 5 * time.Second, full, 0, 5 * time.Second, three, nil, true},
		{"one peer short: a quorum is left", time.Minute, nil, 1 << 40, time.Minute, three, []string{"b"}, false},
		{"two peers short: no quorum", time.Minute, nil, 1 << 40, 10 * time.Second, three, []string{"b", "c"}, true},
		{"two peers short, not waited enough", time.Minute, nil, 1 << 40, 9 * time.Second, three, []string{"b", "c"}, false},
		{"short hosts hold no replica", time.Minute, nil, 1 << 40, time.Minute, three, []string{"d", "e"}, false},
		{"five replicas, two short", time.Minute, nil, 1 << 40, time.Minute, []string{"a", "b", "c", "d", "e"}, []string{"b", "c"}, false},
		{"five replicas, three short", time.Minute, nil, 1 << 40, 10 * time.Second, []string{"a", "b", "c", "d", "e"}, []string{"b", "c", "d"}, true},
		{"proxy host short, replicas have room", time.Minute, nil, 0, time.Minute, []string{"b", "c", "d"}, nil, false},
		{"proxy host, two replica hosts short", time.Minute, nil, 1 << 40, 10 * time.Second, []string{"b", "c", "d"}, []string{"b", "d"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &Host{cfg: Config{ID: "a", HeartbeatTimeout: time.Second, StallTimeout: tc.stall}, room: newDiskRoom("/data", 256*mib)}
			h.room.statfs = func(string) (int64, error) { return 256*mib + tc.free, nil }
			h.SetPeerShortOfRoom(func(host string) bool {
				if host == "a" {
					t.Error("asked about this host")
				}
				return slices.Contains(tc.short, host)
			})
			err := h.outOfRoom("v", tc.failure, tc.waited, tc.replicas)
			if got := errors.Is(err, volume.ErrNoSpace); got != tc.enospc {
				t.Fatalf("outOfRoom: %v, want ENOSPC %v", err, tc.enospc)
			}
			if err != nil && !strings.Contains(err.Error(), "volume v") {
				t.Errorf("error %q does not name the volume", err)
			}
			for _, s := range tc.short {
				if err != nil && slices.Contains(tc.replicas, s) && tc.failure == nil && tc.free > RoomMargin && !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not name host %s", err, s)
				}
			}
		})
	}
}
