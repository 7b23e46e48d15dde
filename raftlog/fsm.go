package raftlog

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"

	"github.com/tandem-project/tandem/volume"
	"github.com/tandem-project/tandem/volume/blockfile"
)

// errReplicaFailed reports that this replica could not apply a committed
// entry to its volume file. Its copy no longer matches the log, so it stops
// serving and stops applying; the other replicas carry on.
var errReplicaFailed = errors.New("raftlog: replica failed to apply a committed entry")

// fsm applies committed log entries to the replica's volume file.
//
// Raft snapshots are checkpoints, not copies: Persist makes the volume file
// durable (fdatasync) and records only the index it covers, so that the log
// before it may be dropped. A restart skips the restore
// (NoSnapshotRestoreOnStart) and replays the log after the checkpoint over
// the file; entries are idempotent, so replaying entries the file already
// holds is harmless. A follower that missed entries no longer in the log
// gets a snapshot; its Restore pulls the volume from a replica that has
// applied at least as far (see restorer and docs/replication.md).
type fsm struct {
	file *blockfile.File
	log  *slog.Logger

	// applied is the index of the last command entry applied.
	applied atomic.Uint64
	// sinceSnapshot counts bytes applied since the last checkpoint.
	sinceSnapshot atomic.Int64
	// failed holds the first apply error; once set nothing more is applied.
	failed atomic.Pointer[error]

	// restore pulls the volume as of at least index from another replica
	// into file. Set before raft starts.
	restore func(ctx context.Context, s snapshotInfo) error

	mu      sync.Mutex
	waiters []waiter // callers of waitApplied

	// seen holds the ids of recently applied ops: a request re-sent after
	// a leader change may already be in the log, and must not be applied
	// twice (another client may have written the range in between). Only
	// the FSM goroutine touches it.
	seen *seenSet

	// stripes serialize the application of an op with reads of the same
	// range, so that a read never sees half of a write.
	stripes [numStripes]sync.RWMutex

	// versions records, per checksum range, the last entry that changed
	// it (membership.go: integrity checks after a replica move).
	versions rangeVersions
	// pinned holds the checksums of the last opChecksum entries applied
	// (pinned.go).
	pinned pinnedSums

	// writer is the epoch whose writes the volume accepts (0: any), set
	// by the fence of generation writerGen. Only the FSM goroutine
	// changes them (docs/fencing.md).
	writer, writerGen atomic.Uint64

	// committed, if set, is told of each entry of writes and zeroes once
	// it is committed and its ranges locked, before they are written
	// (with the ops refused as fenced): the group answers its requests
	// then. Set before raft starts.
	committed func(l *raft.Log, res *applyResult)
	// onFail, if set, is called once, on the FSM goroutine, with the error
	// that failed the replica. Set before raft starts.
	onFail func(err error)
	// room, if set, is asked once per entry for the n bytes of the file
	// its writes and non-punching zeroes may allocate: an error (the disk
	// reserve is reached) fails the replica before any of them is
	// applied. Set before raft starts.
	room func(n int64) error
	// scratch holds an entry's ops while Apply runs (FSM goroutine only).
	scratch []op
}

// applyResult is what Apply returns for an entry it applied: the ids of
// the ops it refused because their writer epoch was fenced off.
type applyResult struct {
	fenced []uint64
}

// ErrFenced is the error of a write refused because another writer owns
// the volume now.
var ErrFenced = fmt.Errorf("%w: another writer owns the volume (fenced)", volume.ErrFenced)

const (
	// maxSeen is how many applied op ids the FSM remembers; retries happen
	// within seconds, while this covers at least 65536 requests.
	maxSeen = 1 << 16
	// Stripes of the volume for read/apply exclusion (numStripes: a
	// multiple of 64, see stripeSet).
	numStripes  = 256
	stripeShift = 16 // 64 KiB
)

// seenSet is a bounded set of op ids with first-in first-out eviction. Its
// content only depends on the ops applied, so it is the same on every
// replica.
type seenSet struct {
	ring []uint64
	next int
	set  map[uint64]struct{}
}

func newSeenSet() *seenSet {
	return &seenSet{ring: make([]uint64, 0, maxSeen), set: make(map[uint64]struct{}, maxSeen)}
}

func (s *seenSet) has(id uint64) bool { _, ok := s.set[id]; return ok }

func (s *seenSet) add(id uint64) {
	if len(s.ring) < maxSeen {
		s.ring = append(s.ring, id)
	} else {
		delete(s.set, s.ring[s.next])
		s.ring[s.next] = id
		s.next = (s.next + 1) % maxSeen
	}
	s.set[id] = struct{}{}
}

// list returns the ids oldest first.
func (s *seenSet) list() []uint64 {
	if len(s.ring) < maxSeen {
		return slices.Clone(s.ring)
	}
	return append(slices.Clone(s.ring[s.next:]), s.ring[:s.next]...)
}

// stripeSet is a set of stripes (bit i: stripe i).
type stripeSet [numStripes / 64]uint64

// add adds the stripes [off, off+n) covers.
func (s *stripeSet) add(off, n int64) {
	first, last := off>>stripeShift, (off+max(n, 1)-1)>>stripeShift
	if last-first+1 >= numStripes {
		for i := range s {
			s[i] = ^uint64(0)
		}
		return
	}
	for st := first; st <= last; st++ {
		i := st % numStripes
		s[i/64] |= 1 << (i % 64)
	}
}

// each calls fn for each stripe of s, in ascending order.
func (s *stripeSet) each(fn func(i int)) {
	for w, word := range s {
		for ; word != 0; word &= word - 1 {
			fn(w*64 + bits.TrailingZeros64(word))
		}
	}
}

// lockStripes locks the stripes of s, exclusively or shared, in ascending
// order (the one order every locker uses), and returns the unlock function.
func (f *fsm) lockStripes(s stripeSet, write bool) func() {
	s.each(func(i int) {
		if write {
			f.stripes[i].Lock()
		} else {
			f.stripes[i].RLock()
		}
	})
	return func() {
		s.each(func(i int) {
			if write {
				f.stripes[i].Unlock()
			} else {
				f.stripes[i].RUnlock()
			}
		})
	}
}

// lockRange locks the stripes of [off, off+n), exclusively or shared, and
// returns the unlock function.
func (f *fsm) lockRange(off, n int64, write bool) func() {
	var s stripeSet
	s.add(off, n)
	return f.lockStripes(s, write)
}

// readAt reads from the volume file without overlapping an op being
// applied. It fails (retryably) once the replica failed: the file may lack
// an entry whose writes were answered.
func (f *fsm) readAt(ctx context.Context, p []byte, off int64) error {
	unlock := f.lockRange(off, int64(len(p)), false)
	defer unlock()
	if err := f.err(); err != nil {
		return err
	}
	return f.file.ReadAt(ctx, p, off)
}

// extents reports the allocation of [off, off+n) (at most max extents)
// without overlapping an op being applied. Like a read it must wait: a
// write is answered once its ranges are locked, before the file holds it,
// and an extent still a hole there would tell a client that skips holes
// (nbdcopy, qemu-img convert) to copy zeros over data it was told is
// written.
func (f *fsm) extents(ctx context.Context, off, n int64, max int) ([]volume.Extent, error) {
	unlock := f.lockRange(off, n, false)
	defer unlock()
	if err := f.err(); err != nil {
		return nil, err
	}
	return f.file.Extents(ctx, off, n, max)
}

// readAtNowait is readAt for cached data only (see volume.NowaitReader);
// a failed replica leaves the read to readAt.
func (f *fsm) readAtNowait(p []byte, off int64) (bool, error) {
	unlock := f.lockRange(off, int64(len(p)), false)
	defer unlock()
	if f.err() != nil {
		return false, nil
	}
	return f.file.ReadAtNowait(p, off)
}

type waiter struct {
	index uint64
	ch    chan struct{}
}

func newFSM(file *blockfile.File, log *slog.Logger) *fsm {
	return &fsm{file: file, log: log, seen: newSeenSet()}
}

// Apply implements raft.FSM.
//
// It decides every op of the entry first (a retry already applied, a
// write of a fenced-off writer, or one to apply; fences take effect in
// order), then applies them. An entry of writes and zeroes only is
// reported committed (see committed) as soon as the ranges it changes are
// locked, before the file is written: its requests are answered while the
// file catches up, and a read of those ranges waits for the locks, so no
// client that saw the answer reads older data.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	if p := f.failed.Load(); p != nil {
		return *p
	}
	ctx := context.Background()
	var res *applyResult
	ops := f.scratch[:0]
	early := f.committed != nil
	err := decodeEntry(l.Data, func(o op) error {
		if o.id != 0 && f.seen.has(o.id) {
			return nil // a retry of a request already applied
		}
		if w := f.writer.Load(); w != 0 && o.epoch != w && (o.kind == opWrite || o.kind == opZero) {
			// Refused, and not recorded as seen: a retry is judged
			// again against the fence of its time.
			if res == nil {
				res = &applyResult{}
			}
			res.fenced = append(res.fenced, o.id)
			return nil
		}
		if o.id != 0 {
			f.seen.add(o.id)
		}
		switch o.kind {
		case opFence:
			if gen := uint64(o.off); gen > f.writerGen.Load() {
				f.writer.Store(o.epoch)
				f.writerGen.Store(gen)
				f.log.Info("volume writer fenced", "index", l.Index, "writer_epoch", o.epoch, "writer_gen", gen)
			}
			return nil
		case opWrite, opZero:
		default:
			early = false
		}
		ops = append(ops, o)
		return nil
	})
	first := false
	if err == nil {
		if early {
			unlock := f.lockOps(ops)
			f.committed(l, res)
			if err = f.applyOps(ctx, l.Index, ops, false); err != nil {
				// Recorded before the ranges unlock: a read waiting for
				// them (its client may have seen this entry answered)
				// must find the failure, not the file without the entry.
				first, err = f.fail(l.Index, err)
			}
			unlock()
		} else {
			err = f.applyOps(ctx, l.Index, ops, true)
		}
	}
	clear(ops) // no references to the entry's data stay behind
	f.scratch = ops[:0]
	if err != nil {
		if !first && !errors.Is(err, errReplicaFailed) {
			first, err = f.fail(l.Index, err)
		}
		if first && f.onFail != nil {
			f.onFail(err)
		}
		return err
	}
	f.setApplied(l.Index)
	if res != nil {
		return res
	}
	return nil
}

// applyOps applies the ops of entry index to the file, in order, each
// under the lock of its range if lock is set (else the caller holds them:
// see lockOps).
func (f *fsm) applyOps(ctx context.Context, index uint64, ops []op, lock bool) error {
	// One room check for the entry: what its writes and non-punching
	// zeroes may allocate.
	if f.room != nil {
		var n int64
		for i := range ops {
			if ops[i].allocates() {
				n += ops[i].n
			}
		}
		if n > 0 {
			if err := f.room(n); err != nil {
				return err
			}
		}
	}
	for _, o := range ops {
		if o.kind == opChecksum {
			f.pinSums(ctx, index, o)
			continue
		}
		var unlock func()
		if lock && (o.kind == opWrite || o.kind == opZero) {
			unlock = f.lockRange(o.off, o.n, true)
		}
		var err error
		switch o.kind {
		case opWrite:
			f.versions.touch(o.off, o.n, index)
			err = f.file.WriteAt(ctx, o.data, o.off, 0)
		case opZero:
			flags := volume.NoHole
			if o.flags&flagPunch != 0 {
				flags = 0
			}
			f.versions.touch(o.off, o.n, index)
			err = f.file.Zero(ctx, o.off, o.n, flags)
		case opGrow:
			if old := f.file.Size(); o.off > old {
				f.versions.touch(old, o.off-old, index)
				err = f.file.Grow(o.off)
			}
		}
		if unlock != nil {
			unlock()
		}
		if err != nil {
			return err
		}
		f.sinceSnapshot.Add(o.n)
	}
	return nil
}

// lockOps locks, exclusively, every stripe an op of ops covers, and
// returns the unlock function.
func (f *fsm) lockOps(ops []op) func() {
	var s stripeSet
	for _, o := range ops {
		s.add(o.off, o.n)
	}
	return f.lockStripes(s, true)
}

func (f *fsm) setApplied(i uint64) {
	f.applied.Store(i)
	f.mu.Lock()
	kept := f.waiters[:0]
	for _, w := range f.waiters {
		if w.index <= i {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	f.waiters = kept
	f.mu.Unlock()
}

// waitApplied returns once an entry at or after index has been applied.
func (f *fsm) waitApplied(ctx context.Context, index uint64) error {
	f.mu.Lock()
	if f.applied.Load() >= index {
		f.mu.Unlock()
		return nil
	}
	w := waiter{index: index, ch: make(chan struct{})}
	f.waiters = append(f.waiters, w)
	f.mu.Unlock()
	select {
	case <-w.ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fail records err, from applying entry index, as the replica's failure,
// and returns whether it is the first, and err wrapped.
func (f *fsm) fail(index uint64, err error) (bool, error) {
	err = fmt.Errorf("%w: entry %d: %w", errReplicaFailed, index, err)
	return f.failed.CompareAndSwap(nil, &err), err
}

// err returns the apply failure, if any.
func (f *fsm) err() error {
	if p := f.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// snapshotInfo is the whole content of a raft snapshot of a volume: which
// volume, its size, and the last command entry the checkpoint covers.
type snapshotInfo struct {
	Format string `json:"format"`
	Volume string `json:"volume"`
	Size   int64  `json:"size"`
	Index  uint64 `json:"index"`
	// Writer and WriterGen are the fence in force at Index.
	Writer    uint64 `json:"writer,omitempty"`
	WriterGen uint64 `json:"writer_gen,omitempty"`
}

const snapshotFormat = "tandem-volume-checkpoint-v1"

// Snapshot implements raft.FSM. It runs between two Apply calls and only
// records the index; the work happens in Persist.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	if err := f.err(); err != nil {
		return nil, err
	}
	f.sinceSnapshot.Store(0)
	info := snapshotInfo{Format: snapshotFormat, Size: f.file.Size(), Index: f.applied.Load(), Writer: f.writer.Load(), WriterGen: f.writerGen.Load()}
	return &checkpoint{f: f, info: info, seen: f.seen.list()}, nil
}

// Restore implements raft.FSM: the volume is pulled from a replica that has
// applied at least the snapshot's index. Raft then applies the entries after
// the snapshot on top, which makes the copy exact.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s, seen, err := readSnapshot(rc)
	if err != nil {
		return err
	}
	if f.restore == nil {
		return errors.New("raftlog: no way to restore a volume snapshot")
	}
	if err := f.restore(context.Background(), s); err != nil {
		return err
	}
	f.failed.Store(nil)
	f.loadSeen(seen)
	f.loadFence(s)
	f.versions.reset(s.Index)
	f.setApplied(s.Index)
	return nil
}

// loadFence sets the fence a checkpoint recorded.
func (f *fsm) loadFence(s snapshotInfo) {
	f.writer.Store(s.Writer)
	f.writerGen.Store(s.WriterGen)
}

// loadSeen replaces the seen ids (oldest first).
func (f *fsm) loadSeen(ids []uint64) {
	f.seen = newSeenSet()
	for _, id := range ids {
		f.seen.add(id)
	}
}

// readSnapshot decodes a checkpoint: a JSON line, then the seen op ids as
// big-endian uint64s.
func readSnapshot(r io.Reader) (snapshotInfo, []uint64, error) {
	br := bufio.NewReader(r)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return snapshotInfo{}, nil, fmt.Errorf("raftlog: reading snapshot: %w", err)
	}
	var s snapshotInfo
	if err := json.Unmarshal(line, &s); err != nil {
		return snapshotInfo{}, nil, fmt.Errorf("raftlog: reading snapshot: %w", err)
	}
	if s.Format != snapshotFormat {
		return snapshotInfo{}, nil, fmt.Errorf("raftlog: unknown snapshot format %q", s.Format)
	}
	var ids []uint64
	var b [8]byte
	for len(ids) < maxSeen {
		if _, err := io.ReadFull(br, b[:]); err == io.EOF {
			break
		} else if err != nil {
			return snapshotInfo{}, nil, fmt.Errorf("raftlog: reading snapshot ids: %w", err)
		}
		ids = append(ids, binary.BigEndian.Uint64(b[:]))
	}
	return s, ids, nil
}

// checkpoint is an FSMSnapshot: Persist syncs the volume file, after which
// everything applied up to the index is durable without the log.
type checkpoint struct {
	f    *fsm
	info snapshotInfo
	seen []uint64
}

// Persist implements raft.FSMSnapshot.
func (c *checkpoint) Persist(sink raft.SnapshotSink) error {
	if err := c.f.file.FlushPaced(context.Background(), checkpointFlushWindow); err != nil {
		sink.Cancel()
		return fmt.Errorf("raftlog: checkpoint: %w", err)
	}
	b, err := json.Marshal(c.info)
	if err == nil {
		b = append(b, '\n')
		for _, id := range c.seen {
			b = binary.BigEndian.AppendUint64(b, id)
		}
		_, err = sink.Write(b)
	}
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("raftlog: checkpoint: %w", err)
	}
	return sink.Close()
}

// checkpointFlushWindow is how much of the volume file a checkpoint writes
// back at a time before its final sync (blockfile.File.FlushPaced): the
// replicas' log syncs on the same device wait behind one window at most
// instead of behind all the dirty data (about 3 ms of this disk's
// bandwidth).
const checkpointFlushWindow = 4 << 20

// Release implements raft.FSMSnapshot.
func (c *checkpoint) Release() {}
