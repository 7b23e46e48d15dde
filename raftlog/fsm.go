package raftlog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
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
}

type waiter struct {
	index uint64
	ch    chan struct{}
}

func newFSM(file *blockfile.File, log *slog.Logger) *fsm {
	return &fsm{file: file, log: log}
}

// Apply implements raft.FSM.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	if p := f.failed.Load(); p != nil {
		return *p
	}
	ctx := context.Background()
	var bytes int64
	err := decodeEntry(l.Data, func(o op) error {
		bytes += o.n
		switch o.kind {
		case opWrite:
			return f.file.WriteAt(ctx, o.data, o.off, 0)
		case opZero:
			flags := volume.NoHole
			if o.flags&flagPunch != 0 {
				flags = 0
			}
			return f.file.Zero(ctx, o.off, o.n, flags)
		case opGrow:
			if o.off > f.file.Size() {
				return f.file.Grow(o.off)
			}
		}
		return nil
	})
	if err != nil {
		err = fmt.Errorf("%w: entry %d: %w", errReplicaFailed, l.Index, err)
		f.failed.CompareAndSwap(nil, &err)
		f.log.Error("replica failed: cannot apply committed entry; this replica stops serving", "index", l.Index, "err", err)
		return err
	}
	f.sinceSnapshot.Add(bytes)
	f.setApplied(l.Index)
	return nil
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
}

const snapshotFormat = "tandem-volume-checkpoint-v1"

// maxSnapshotInfo bounds the snapshot descriptor read back.
const maxSnapshotInfo = 64 << 10

// Snapshot implements raft.FSM. It runs between two Apply calls and only
// records the index; the work happens in Persist.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	if err := f.err(); err != nil {
		return nil, err
	}
	f.sinceSnapshot.Store(0)
	return &checkpoint{f: f, info: snapshotInfo{Format: snapshotFormat, Size: f.file.Size(), Index: f.applied.Load()}}, nil
}

// Restore implements raft.FSM: the volume is pulled from a replica that has
// applied at least the snapshot's index. Raft then applies the entries after
// the snapshot on top, which makes the copy exact.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var s snapshotInfo
	if err := json.NewDecoder(io.LimitReader(rc, maxSnapshotInfo)).Decode(&s); err != nil {
		return fmt.Errorf("raftlog: reading snapshot: %w", err)
	}
	if s.Format != snapshotFormat {
		return fmt.Errorf("raftlog: unknown snapshot format %q", s.Format)
	}
	if f.restore == nil {
		return errors.New("raftlog: no way to restore a volume snapshot")
	}
	if err := f.restore(context.Background(), s); err != nil {
		return err
	}
	f.failed.Store(nil)
	f.setApplied(s.Index)
	return nil
}

// checkpoint is an FSMSnapshot: Persist syncs the volume file, after which
// everything applied up to the index is durable without the log.
type checkpoint struct {
	f    *fsm
	info snapshotInfo
}

// Persist implements raft.FSMSnapshot.
func (c *checkpoint) Persist(sink raft.SnapshotSink) error {
	if err := c.f.file.Flush(context.Background()); err != nil {
		sink.Cancel()
		return fmt.Errorf("raftlog: checkpoint: %w", err)
	}
	b, err := json.Marshal(c.info)
	if err == nil {
		_, err = sink.Write(append(b, '\n'))
	}
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("raftlog: checkpoint: %w", err)
	}
	return sink.Close()
}

// Release implements raft.FSMSnapshot.
func (c *checkpoint) Release() {}
