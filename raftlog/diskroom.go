package raftlog

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-project/tandem/volume"
)

// diskRoomEvery is how often a diskRoom looks at the file system again.
const diskRoomEvery = 50 * time.Millisecond

// diskRoom keeps volume data and write logs out of a reserve of free space
// on the file system of the host's data directory (Config.DiskReserve):
// the metadata database (badger) writes through memory-mapped files, and
// a page it touches first on a full file system kills the whole agent
// with SIGBUS, where a replica that fails only leaves its group.
type diskRoom struct {
	dir    string
	now    func() time.Time
	statfs func(dir string) (free int64, err error)

	mu      sync.Mutex
	reserve int64
	checked time.Time
	free    int64 // -1: not known
}

func newDiskRoom(dir string, reserve int64) *diskRoom {
	return &diskRoom{dir: dir, reserve: reserve, now: time.Now, statfs: freeBytes, free: -1}
}

// freeBytes returns the bytes of dir's file system free to unprivileged
// users.
func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// check returns an error wrapping volume.ErrNoSpace if writing n more bytes
// would eat into the reserve, as of the file system's free space at most
// diskRoomEvery old. A failing statfs leaves the last figure in force
// (none: no limit).
func (d *diskRoom) check(n int64) error {
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.reserve <= 0 {
		return nil
	}
	if now := d.now(); now.Sub(d.checked) >= diskRoomEvery {
		if free, err := d.statfs(d.dir); err == nil {
			d.free = free
		}
		d.checked = now
	}
	if d.free >= 0 && d.free-n < d.reserve {
		return fmt.Errorf("%w: %s has %s free, and %s are kept for the metadata (--disk-reserve)",
			volume.ErrNoSpace, d.dir, volume.FormatSize(max(d.free, 0)), volume.FormatSize(d.reserve))
	}
	return nil
}
