package raftlog

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/raft"
)

// Pinned checksums: the fallback of an integrity check for ranges that
// change faster than two replicas can be read one after the other.
//
// Volume.Checksums reads each replica while writes go on, and two sums
// compare only where both describe a common log index (RangeSum.
// Comparable). A range a VM writes every few milliseconds (a journal)
// never does. PinChecksums instead commits an entry that every replica's
// FSM answers, when it applies it, by hashing the ranges it names: the
// FSM applies entries one at a time, so every replica hashes its file at
// exactly that entry's index, whatever the writes around it. It costs the
// volume's writes the time to hash the ranges on each replica, once, so
// it is kept for the ranges that need it, MaxPinnedRanges at a time.

// MaxPinnedRanges bounds the ranges one checksum entry hashes (a pause of
// the volume's applies of about a millisecond per range: SHA-256 ran at
// 0.8 GB/s on this project's 2-core test machines).
const MaxPinnedRanges = 8

// keepPinned is how many checksum entries' results a replica keeps for
// the leader's agent to collect.
const keepPinned = 256

// pinnedSums holds the results of the last checksum entries applied, by
// op id.
type pinnedSums struct {
	mu    sync.Mutex
	byID  map[uint64]pinnedResult
	order []uint64 // ids, oldest first
}

// pinnedResult is what a replica found when it applied one checksum entry.
type pinnedResult struct {
	index uint64
	sums  []RangeSum
	err   error
}

func (p *pinnedSums) put(id uint64, r pinnedResult) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.byID == nil {
		p.byID = map[uint64]pinnedResult{}
	}
	if _, ok := p.byID[id]; !ok {
		p.order = append(p.order, id)
	}
	p.byID[id] = r
	for len(p.order) > keepPinned {
		delete(p.byID, p.order[0])
		p.order = p.order[1:]
	}
}

// errNoPinned reports a checksum entry this replica did not apply (it was
// copied from another replica past it, or it restarted from a checkpoint
// after it) or no longer remembers.
var errNoPinned = errors.New("raftlog: no result of this checksum entry here")

func (p *pinnedSums) get(index, id uint64) ([]RangeSum, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.byID[id]
	switch {
	case !ok || r.index != index:
		return nil, fmt.Errorf("%w (entry %d)", errNoPinned, index)
	case r.err != nil:
		return nil, r.err
	}
	return r.sums, nil
}

// pinSums hashes the ranges of checksum op o, applied at index, and keeps
// the result. A read error is the result: it does not fail the replica.
func (f *fsm) pinSums(ctx context.Context, index uint64, o op) {
	r := pinnedResult{index: index}
	n := (f.file.Size() + ChecksumRange - 1) / ChecksumRange
	buf := make([]byte, ChecksumRange)
	for i := o.off; i < min(n, o.off+o.n); i++ {
		sum, err := f.rangeSum(ctx, i, buf)
		if err != nil {
			r.err = fmt.Errorf("raftlog: checksum of range %d at entry %d: %w", i, index, err)
			break
		}
		r.sums = append(r.sums, RangeSum{Sum: sum, Since: index, Until: index})
	}
	f.pinned.put(o.id, r)
}

// PinChecksums hashes ranges [first, first+count) of every replica at one
// log index (count at most MaxPinnedRanges): it commits an entry that each replica's FSM
// answers by hashing its file as it applies it. It returns the entry's
// index, the id other replicas know the result by (PinnedChecksums), and
// this replica's checksums, each with Since = Until = index. Only the
// leader's host may call it (elsewhere it fails with raft.ErrNotLeader).
// Ranges past the end of the volume are left out.
func (v *Volume) PinChecksums(ctx context.Context, first, count int64) (index, id uint64, sums []RangeSum, err error) {
	g := v.g
	if first < 0 || count < 1 || count > MaxPinnedRanges {
		return 0, 0, nil, fmt.Errorf("raftlog: volume %s: pinned checksums of ranges %d+%d: want 1 to %d ranges", g.spec.Name, first, count, MaxPinnedRanges)
	}
	if !g.ready.Load() {
		return 0, 0, nil, fmt.Errorf("raftlog: volume %s: pinned checksums: %w", g.spec.Name, raft.ErrNotLeader)
	}
	id = g.h.newOpID()
	f := g.raft.Apply(encodeEntry([]*op{{kind: opChecksum, off: first, n: count, id: id}}), applyTimeout)
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		return 0, 0, nil, fmt.Errorf("raftlog: volume %s: pinned checksums: %w", g.spec.Name, err)
	}
	index = f.Index()
	if sums, err = g.fsm.pinned.get(index, id); err != nil {
		return 0, 0, nil, fmt.Errorf("raftlog: volume %s: %w", g.spec.Name, err)
	}
	return index, id, sums, nil
}

// PinnedChecksums returns this replica's checksums of the ranges that the
// checksum entry at index (op id, from the leader's PinChecksums) named,
// once it applied index. A replica that did not apply that entry itself
// (it was copied past it) has none.
func (v *Volume) PinnedChecksums(ctx context.Context, index, id uint64) ([]RangeSum, error) {
	g := v.g
	if err := g.fsm.waitApplied(ctx, index); err != nil {
		return nil, fmt.Errorf("raftlog: volume %s: waiting to apply %d: %w", g.spec.Name, index, err)
	}
	if err := g.err(); err != nil {
		return nil, err
	}
	sums, err := g.fsm.pinned.get(index, id)
	if err != nil {
		return nil, fmt.Errorf("raftlog: volume %s: %w", g.spec.Name, err)
	}
	return sums, nil
}
