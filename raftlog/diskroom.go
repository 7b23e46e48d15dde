package raftlog

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-project/tandem/volume"
)

// diskRoomEvery is how often a diskRoom looks at the file system again.
const diskRoomEvery = 50 * time.Millisecond

// RoomMargin is the free space above the disk reserve under which a host
// is short of room: a write that finds no leader there gets ENOSPC (see
// outOfRoom), and an agent reopens a replica that failed for lack of space
// once the disk has this much again (a log segment, and as much for the
// entries the replica has to apply).
const RoomMargin = 128 << 20

// outOfRoom returns the error that answers a write which has found no
// leader for waited, once that is ten heartbeat timeouts (at most
// StallTimeout), while the volume's replicas are short of disk space:
// this host's replica failed for lack of it (failure), or this host's file
// system has less than RoomMargin above the reserve; or the hosts of so
// many of the volume's replicas said they are short (SetPeerShortOfRoom)
// that the others are no quorum. Otherwise nil, and the write goes on
// waiting for a leader until StallTimeout. replicas are the IDs of the
// volume's replica hosts; this host's disk counts only if it is one of
// them (a stand-in's is, a proxy's is not).
//
// When the disks of a volume's replicas fill, they fail at their reserve
// (or lose their quorum as the others fail) and no leader can emerge until
// an operator makes room. ENOSPC then tells the client so within seconds,
// on every host, including those with room; QEMU's default
// (werror=enospc) pauses the VM and retries the write when it is resumed,
// where an EIO after StallTimeout would reach the guest.
func (h *Host) outOfRoom(name string, failure error, waited time.Duration, replicas []string) error {
	wait := min(10*h.cfg.HeartbeatTimeout, h.cfg.StallTimeout)
	if waited < wait {
		return nil
	}
	if !slices.Contains(replicas, h.cfg.ID) {
		failure = nil // a proxy's host: its own disk holds nothing of the volume
	} else if !errors.Is(failure, volume.ErrNoSpace) {
		failure = h.room.check(RoomMargin)
	}
	if failure != nil {
		return fmt.Errorf("%w: volume %s: no leader took the write in %v, and this host is short of disk space: %v",
			volume.ErrNoSpace, name, wait, failure)
	}
	short, quorum := h.ShortOfRoom(replicas, nil)
	if quorum {
		return nil
	}
	return fmt.Errorf("%w: volume %s: no leader took the write in %v, and the hosts of %d of its %d replicas (%s) say their disks are short of space",
		volume.ErrNoSpace, name, wait, len(short), len(replicas), strings.Join(short, ", "))
}

// ShortOfRoom returns the hosts among a volume's replicas whose disks are
// short of space: this one, if it is among them, when its replica failed
// for lack of space (failure) or its file system has less than RoomMargin
// above the reserve; the others when they said so (SetPeerShortOfRoom).
// quorum reports whether the other replicas are still a majority.
func (h *Host) ShortOfRoom(replicas []string, failure error) (short []string, quorum bool) {
	f := h.peerShort.Load()
	for _, id := range replicas {
		var is bool
		switch {
		case id == h.cfg.ID:
			is = errors.Is(failure, volume.ErrNoSpace) || h.room.check(RoomMargin) != nil
		case f != nil:
			is = (*f)(id)
		}
		if is {
			short = append(short, id)
		}
	}
	return short, len(replicas)-len(short) >= len(replicas)/2+1
}

// SetPeerShortOfRoom makes writes that find no leader consult f on the
// other hosts of the volume's replicas: f reports whether a host last said
// (gossip) that its disk is short of space, within RoomMargin of its
// reserve or with a replica failed for lack of it. When those hosts leave
// the others no quorum, the write gets ENOSPC after ten heartbeat
// timeouts, as on a host short of space itself (see outOfRoom).
func (h *Host) SetPeerShortOfRoom(f func(host string) bool) {
	h.peerShort.Store(&f)
}

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
