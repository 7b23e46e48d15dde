package wal

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/hashicorp/raft"
	"golang.org/x/sys/unix"
)

const (
	metaName    = "meta"
	metaTmpName = "meta.tmp"
	lockName    = "LOCK"
)

// Log is a segmented, checksummed, fdatasync'd write-ahead log that
// implements raft.LogStore, raft.MonotonicLogStore and
// raft.DeferredSyncLogStore. See the package documentation for the file
// format and the crash-safety argument.
//
// All methods are safe for concurrent use. Writers (StoreLogs,
// StoreLogsNoSync, SyncLogs, DeleteRange, Close) are serialized; GetLog,
// FirstIndex and LastIndex run concurrently with each other and with the
// I/O of a writer.
type Log struct {
	dir    string
	cfg    Config
	fs     fileSystem
	lock   io.Closer
	sparer *sparer

	// writeMu serializes mutations. The fields below are owned by the
	// holder of writeMu.
	writeMu   sync.Mutex
	failed    error         // sticky: first failed write/sync/truncate
	failedCh  chan struct{} // closed once failed is set
	metaFirst uint64        // durable lower bound (meta file); 0 if none
	pending   *pendingBatch // a batch StoreLogsNoSync accepted, not yet written; also read under mu
	enc       []byte        // pooled encode buffer for headers and small entries
	inline    int           // entries below this size go into enc (Config.InlineThreshold; 0 with DirectIO)
	bufs      [][]byte      // pooled iovec list
	pad       [recAlign]byte

	// mu guards the published state below. Writers hold writeMu and take
	// mu for writing only to publish; readers hold mu for reading for the
	// whole of their pread, so a segment's file is never closed under them.
	mu     sync.RWMutex
	segs   []*segment // in index order, contiguous, none empty
	first  uint64     // 0 when the log is empty
	last   uint64
	closed bool
}

// pendingBatch is a batch StoreLogsNoSync encoded and published but left
// unwritten: the next syncPending writes and syncs it. Until then GetLog
// serves its entries from the caller's memory.
type pendingBatch struct {
	seg     *segment
	off     int64
	bufs    [][]byte // the encoded batch, as for WriteV; aliases Log.bufs and Log.enc
	entries []*raft.Log
}

// segment is one open segment file.
type segment struct {
	base uint64
	salt uint32 // seeds the header CRC of every record of this segment
	path string
	f    file
	// offsets[i] is the file offset of the record with index base+i.
	offsets []int64
	// end is the offset just past the last record: the next append goes
	// there.
	end int64
	// capacity is the size reserved for the segment; once end reaches it
	// the next batch goes to a new segment. A truncated segment has
	// capacity == end, so it is never appended to again.
	capacity int64
}

func (s *segment) lastIndex() uint64 { return s.base + uint64(len(s.offsets)) - 1 }

// recordSpan returns the offset and aligned size of the record at idx.
func (s *segment) recordSpan(idx uint64) (int64, int64) {
	i := idx - s.base
	off := s.offsets[i]
	if i+1 < uint64(len(s.offsets)) {
		return off, s.offsets[i+1] - off
	}
	return off, s.end - off
}

// Open opens the log in dir, creating dir if needed, and recovers it: it
// scans every segment, cuts a torn tail (see the package documentation),
// removes files left over by an interrupted truncation and rebuilds the
// in-memory index. It fails with an error wrapping ErrCorrupt if the files
// hold damage a crash cannot explain (in sealed segments it checks record
// headers only: GetLog reports a damaged payload there), and with
// ErrLocked if another Log has dir open.
func Open(dir string, cfg Config) (*Log, error) {
	fsys := osFS{}
	if cfg.DirectIO {
		fsys.stage = new(stagePool)
	}
	l, err := open(dir, cfg, fsys)
	if err == nil && cfg.DirectIO {
		// Direct writes copy every byte into their staging buffer: copying
		// small entries into the encode buffer first would copy them twice.
		l.inline = 0
	}
	return l, err
}

func open(dir string, cfg Config, fsys fileSystem) (*Log, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("wal: open %s: %w", dir, err)
	}
	lock, err := fsys.Lock(dir)
	if err != nil {
		return nil, fmt.Errorf("wal: open %s: %w", dir, err)
	}
	l := &Log{dir: dir, cfg: cfg, fs: fsys, lock: lock, failedCh: make(chan struct{}), inline: cfg.InlineThreshold}
	if err := l.recover(); err != nil {
		for _, s := range l.segs {
			s.f.Close()
		}
		lock.Close()
		return nil, fmt.Errorf("wal: open %s: %w", dir, err)
	}
	l.sparer = newSparer(fsys, dir, cfg)
	return l, nil
}

// recover rebuilds the state from the files. Recovery is idempotent: a crash
// during it leaves files that the next recovery handles the same way.
func (l *Log) recover() error {
	names, err := l.fs.List(l.dir)
	if err != nil {
		return err
	}
	dirty := false // a directory entry was removed
	type segFile struct {
		base uint64
		salt uint32
		name string
	}
	var files []segFile
	for _, name := range names {
		switch {
		case name == metaTmpName || isSpareName(name):
			// An unfinished meta update or an unused spare: never
			// part of the log.
			if err := l.fs.Remove(filepath.Join(l.dir, name)); err != nil {
				return err
			}
			dirty = true
		default:
			if base, salt, ok := parseSegName(name); ok {
				files = append(files, segFile{base, salt, name})
			}
		}
	}
	slices.SortFunc(files, func(a, b segFile) int {
		switch {
		case a.base < b.base:
			return -1
		case a.base > b.base:
			return 1
		}
		return 0
	})

	if b, err := l.fs.ReadFile(filepath.Join(l.dir, metaName)); err == nil {
		if l.metaFirst, err = decodeMeta(b); err != nil {
			return err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}

	// Segments wholly below the durable first index are left over from a
	// prefix truncation interrupted after its meta update: remove them
	// without reading them. (The next segment starting at or below
	// metaFirst proves every entry of this one is below it.)
	for len(files) > 1 && files[1].base <= l.metaFirst {
		if err := l.fs.Remove(filepath.Join(l.dir, files[0].name)); err != nil {
			return err
		}
		dirty = true
		files = files[1:]
	}

	for i, sf := range files {
		path := filepath.Join(l.dir, sf.name)
		f, err := l.fs.Open(path)
		if err != nil {
			return err
		}
		last := i == len(files)-1
		seg, sc, err := scanFile(f, path, sf.base, sf.salt, last)
		if err != nil {
			f.Close()
			return err
		}
		if !last {
			// A sealed segment: its last batch was synced before the
			// next segment received any write, so it must end cleanly.
			if !sc.headerOK || sc.state != tailClean || len(sc.offsets) == 0 {
				f.Close()
				return fmt.Errorf("%w: sealed segment %s is damaged: %s (tail %v, %d records)",
					ErrCorrupt, path, sc.why, sc.state, len(sc.offsets))
			}
			l.segs = append(l.segs, seg)
			continue
		}
		// The last segment may end with a torn batch.
		switch {
		case sc.state == tailCorrupt:
			f.Close()
			return fmt.Errorf("%w: segment %s: %s", ErrCorrupt, path, sc.why)
		case len(sc.offsets) == 0:
			// Its first batch never completed: drop the file.
			f.Close()
			if err := l.fs.Remove(path); err != nil {
				return err
			}
			dirty = true
			continue
		case sc.state == tailTorn:
			// Cut the partial batch so that later appends can never be
			// followed by its leftovers, and make the cut durable
			// before anything new is written.
			if err := f.Truncate(seg.end); err != nil {
				f.Close()
				return err
			}
			if err := f.Datasync(); err != nil {
				f.Close()
				return err
			}
			seg.capacity = seg.end
		}
		l.segs = append(l.segs, seg)
	}

	// Segments whose entries all lie below metaFirst are dead too (the log
	// was emptied and restarted at a higher index).
	for len(l.segs) > 0 && l.segs[0].lastIndex() < l.metaFirst {
		s := l.segs[0]
		s.f.Close()
		if err := l.fs.Remove(s.path); err != nil {
			return err
		}
		dirty = true
		l.segs = l.segs[1:]
	}
	for i := 1; i < len(l.segs); i++ {
		if prev := l.segs[i-1]; l.segs[i].base != prev.lastIndex()+1 {
			return fmt.Errorf("%w: segment %s ends at index %d but the next segment %s starts at %d",
				ErrCorrupt, prev.path, prev.lastIndex(), l.segs[i].path, l.segs[i].base)
		}
	}
	if len(l.segs) > 0 {
		l.first = max(l.metaFirst, l.segs[0].base)
		l.last = l.segs[len(l.segs)-1].lastIndex()
	}
	if dirty {
		if err := l.fs.SyncDir(l.dir); err != nil {
			return err
		}
	}
	return nil
}

// scanFile maps and scans one segment file, checking its records' payloads
// if payloads is set (see scanSegment).
func scanFile(f file, path string, base uint64, salt uint32, payloads bool) (*segment, segScan, error) {
	b, unmap, err := f.Map()
	if err != nil {
		return nil, segScan{}, err
	}
	if !payloads && len(b) > 0 {
		// One block per record is read: no read-ahead of the payloads.
		_ = unix.Madvise(b, unix.MADV_RANDOM)
	}
	sc := scanSegment(b, base, salt, nil, payloads)
	size := int64(len(b))
	if err := unmap(); err != nil {
		return nil, sc, err
	}
	seg := &segment{base: base, salt: salt, path: path, f: f, offsets: sc.offsets, end: sc.end, capacity: size}
	return seg, sc, nil
}

// IsMonotonic implements raft.MonotonicLogStore: the log never holds gaps,
// so raft empties it with DeleteRange after restoring a snapshot instead of
// relying on a gap.
func (l *Log) IsMonotonic() bool { return true }

// FirstIndex implements raft.LogStore: the index of the first entry, 0 if
// the log is empty.
func (l *Log) FirstIndex() (uint64, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return 0, ErrClosed
	}
	return l.first, nil
}

// LastIndex implements raft.LogStore: the index of the last entry, 0 if the
// log is empty.
func (l *Log) LastIndex() (uint64, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return 0, ErrClosed
	}
	return l.last, nil
}

// GetLog implements raft.LogStore. It reads the entry at index into out;
// out.Data and out.Extensions point into a buffer allocated for this call
// that the caller owns, or, for an entry StoreLogsNoSync accepted and the
// log has not written yet, into the Data that call was given. It returns
// raft.ErrLogNotFound if the log does not hold index, an error wrapping
// ErrCorrupt if the record fails its checksum, and ErrClosed after Close.
func (l *Log) GetLog(index uint64, out *raft.Log) error {
	l.mu.RLock()
	pending, s, off, size, err := l.locateLocked(index)
	if err != nil {
		l.mu.RUnlock()
		return err
	}
	if pending != nil {
		l.mu.RUnlock()
		*out = *pending
		return nil
	}
	buf := make([]byte, size)
	err = s.f.ReadAt(buf, off)
	l.mu.RUnlock()
	if err != nil {
		return fmt.Errorf("wal: read entry %d: %w", index, err)
	}
	if _, err := decodeRecord(buf, s.salt, out); err != nil {
		return fmt.Errorf("wal: entry %d at %s offset %d: %w", index, s.path, off, err)
	}
	if out.Index != index {
		return fmt.Errorf("wal: %w: %s offset %d holds entry %d, want %d", ErrCorrupt, s.path, off, out.Index, index)
	}
	return nil
}

// LogType implements raft.LogTypeStore (Tandem's copy of hashicorp/raft):
// the type of the entry at index, read from its record header alone (whose
// checksum is verified), so that raft's start-up scan for configuration
// entries does not read every entry's data. Errors are GetLog's.
func (l *Log) LogType(index uint64) (raft.LogType, error) {
	l.mu.RLock()
	defer l.mu.RUnlock() // held for the pread, as in GetLog
	pending, s, off, _, err := l.locateLocked(index)
	if err != nil {
		return 0, err
	}
	if pending != nil {
		return pending.Type, nil
	}
	var b [recHeaderSize]byte
	if err := s.f.ReadAt(b[:], off); err != nil {
		return 0, fmt.Errorf("wal: read entry %d: %w", index, err)
	}
	h, ok := decodeRecHeader(b[:], s.salt)
	if !ok || h.index != index {
		return 0, fmt.Errorf("wal: %w: %s offset %d: no valid record header for entry %d", ErrCorrupt, s.path, off, index)
	}
	return raft.LogType(h.typ), nil
}

// locateLocked finds the entry at index: the entry itself if it is pending
// (StoreLogsNoSync), else its segment, offset and record size. Called with
// mu held for reading.
func (l *Log) locateLocked(index uint64) (pending *raft.Log, s *segment, off, size int64, err error) {
	if l.closed {
		return nil, nil, 0, 0, ErrClosed
	}
	if l.first == 0 || index < l.first || index > l.last {
		return nil, nil, 0, 0, raft.ErrLogNotFound
	}
	if p := l.pending; p != nil && index >= p.entries[0].Index {
		return p.entries[index-p.entries[0].Index], nil, 0, 0, nil
	}
	i, _ := slices.BinarySearchFunc(l.segs, index, func(s *segment, idx uint64) int {
		switch {
		case s.lastIndex() < idx:
			return -1
		case s.base > idx:
			return 1
		}
		return 0
	})
	s = l.segs[i]
	off, size = s.recordSpan(index)
	return nil, s, off, size, nil
}

// StoreLog implements raft.LogStore; it is StoreLogs with one entry.
func (l *Log) StoreLog(entry *raft.Log) error {
	return l.StoreLogs([]*raft.Log{entry})
}

// StoreLogs implements raft.LogStore. It appends entries, which must extend
// the log contiguously (ErrOutOfOrder otherwise; any first index is accepted
// on an empty log), with one pwritev and one fdatasync (plus a rename and a
// directory fsync when a new segment starts). When it returns nil every
// entry is durable. The entries and their Data are not retained; Data of
// InlineThreshold bytes or more (all Data, with DirectIO) is written from
// the caller's memory without a copy other than the direct write's
// staging. If the write or sync fails the log enters the failed state
// (ErrFailed) until it is reopened.
func (l *Log) StoreLogs(entries []*raft.Log) error {
	return l.store(entries, true)
}

// StoreLogsNoSync implements raft.DeferredSyncLogStore (Tandem's copy of
// hashicorp/raft): it appends entries like StoreLogs, but returns once they
// are encoded, before they are written: GetLog and LastIndex see them at
// once, GetLog from the entries' own memory, which the log keeps (and the
// caller must not change) until they are written. They are written and
// made durable by SyncLogs, or when the next StoreLogs, StoreLogsNoSync or
// DeleteRange starts: each of those first writes and syncs what an earlier
// call left pending, so a batch is never written before the one before it
// is durable (the invariant recovery relies on). A raft leader's syncer
// thus does the leader's disk write while its replicators are already
// sending the entries (docs/replication.md, "Latency").
func (l *Log) StoreLogsNoSync(entries []*raft.Log) error {
	return l.store(entries, false)
}

// SyncLogs implements raft.DeferredSyncLogStore: when it returns nil, every
// entry stored before the call is written and durable. A failed write or
// sync puts the log in the failed state (ErrFailed).
func (l *Log) SyncLogs() error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	if err := l.writable(); err != nil {
		return err
	}
	return l.syncPending()
}

// syncPending writes and syncs the batch StoreLogsNoSync left pending, if
// any. Called with writeMu held. A failure leaves the batch pending (GetLog
// still serves it) and the log failed.
func (l *Log) syncPending() error {
	p := l.pending
	if p == nil {
		return nil
	}
	if err := writeBatch(p.seg, p.bufs, p.off, p.entries); err != nil {
		return l.fail(err)
	}
	l.mu.Lock()
	l.pending = nil
	l.mu.Unlock()
	return nil
}

// store appends entries; with sync it returns once they are durable.
func (l *Log) store(entries []*raft.Log, sync bool) error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	if err := l.writable(); err != nil {
		return err
	}
	if err := l.syncPending(); err != nil {
		return err
	}
	if len(entries) == 0 {
		return nil
	}
	first := entries[0].Index
	if first == 0 || (l.last != 0 && first != l.last+1) {
		return fmt.Errorf("%w: first entry has index %d, log ends at %d", ErrOutOfOrder, first, l.last)
	}
	var inlineBytes int64
	for i, e := range entries {
		if e.Index != first+uint64(i) {
			return fmt.Errorf("%w: entry %d of the batch has index %d, want %d", ErrOutOfOrder, i, e.Index, first+uint64(i))
		}
		payload := uint64(len(e.Data)) + uint64(len(e.Extensions))
		if payload > maxPayload {
			return fmt.Errorf("%w: entry %d has %d bytes", ErrTooLarge, e.Index, payload)
		}
		size := recSize(payload)
		inlineBytes += recHeaderSize
		if payload < uint64(l.inline) {
			inlineBytes += size - recHeaderSize
		}
	}
	if len(entries) > 1<<31 {
		return fmt.Errorf("%w: batch of %d entries", ErrTooLarge, len(entries))
	}

	if l.last == 0 && l.metaFirst > first {
		// The log is empty and restarts below the durable lower bound:
		// lower the bound first, or a reopen would hide the new entries.
		if err := l.writeMeta(first); err != nil {
			return l.fail(err)
		}
	}

	var seg *segment
	var off int64 // where the write starts
	newSeg := false
	// Fill, then roll: a batch goes to the last segment while it has any
	// reserved space left (growing the file past its reservation if the
	// batch is larger), so each segment's preallocation is used fully and
	// segments exceed SegmentSize by less than one batch.
	if n := len(l.segs); n > 0 && l.segs[n-1].end < l.segs[n-1].capacity {
		seg = l.segs[n-1]
		off = seg.end
	} else {
		var err error
		if seg, err = l.startSegment(first); err != nil {
			return err
		}
		newSeg = true
		inlineBytes += segHeaderSize
	}

	// Encode. enc is sized once so the slices taken from it stay valid.
	if int64(cap(l.enc)) < inlineBytes {
		l.enc = make([]byte, inlineBytes)
	}
	enc := l.enc[:inlineBytes]
	bufs := l.bufs[:0]
	pos, chunk := int64(0), int64(0)
	if newSeg {
		encodeSegHeader(enc, first, seg.salt)
		pos = segHeaderSize
	}
	recOff := off + pos
	offsets := seg.offsets
	for i, e := range entries {
		payload := int64(len(e.Data)) + int64(len(e.Extensions))
		size := recSize(uint64(payload))
		h := recHeader{
			dataCRC:    payloadCRC(e.Data, e.Extensions),
			typ:        uint8(e.Type),
			batchOff:   uint32(i),
			index:      e.Index,
			term:       e.Term,
			appendedAt: encodeTime(e.AppendedAt),
			dataLen:    uint32(len(e.Data)),
			extLen:     uint32(len(e.Extensions)),
		}
		if i == len(entries)-1 {
			h.flags = flagBatchEnd
		}
		h.encode(enc[pos:], seg.salt)
		pos += recHeaderSize
		padLen := size - recHeaderSize - payload
		if payload < int64(l.inline) {
			pos += int64(copy(enc[pos:], e.Data))
			pos += int64(copy(enc[pos:], e.Extensions))
			clear(enc[pos : pos+padLen])
			pos += padLen
		} else {
			bufs = append(bufs, enc[chunk:pos], e.Data, e.Extensions, l.pad[:padLen])
			chunk = pos
		}
		offsets = append(offsets, recOff)
		recOff += size
	}
	bufs = append(bufs, enc[chunk:pos])
	l.bufs = bufs

	var pending *pendingBatch
	if sync {
		if err := writeBatch(seg, bufs, off, entries); err != nil {
			if newSeg {
				seg.f.Close() // not published; recovery drops or cuts the file
			}
			return l.fail(err)
		}
	} else {
		// Published unwritten: the next syncPending writes it, before
		// anything else is written (or the segment retired).
		pending = &pendingBatch{seg: seg, off: off, bufs: bufs, entries: slices.Clone(entries)}
	}
	if int64(cap(l.enc)) > 4*l.cfg.SegmentSize {
		l.enc = nil // do not pin a buffer sized for one huge batch (a pending batch keeps its own)
	}

	l.mu.Lock()
	l.pending = pending
	seg.offsets = offsets
	seg.end = recOff
	seg.capacity = max(seg.capacity, seg.end)
	if newSeg {
		l.segs = append(l.segs, seg)
	}
	if n := len(l.segs); newSeg && n > 1 {
		l.segs[n-2].f.DoneWriting() // sealed: never appended to again
	}
	if l.first == 0 {
		l.first = first
	}
	l.last = entries[len(entries)-1].Index
	l.mu.Unlock()
	return nil
}

// writeBatch writes the encoded batch bufs of entries at off in seg and
// syncs it. It clears bufs, so that the log does not keep the entries'
// Data alive.
func writeBatch(seg *segment, bufs [][]byte, off int64, entries []*raft.Log) error {
	err := seg.f.WriteV(bufs, off)
	clear(bufs)
	if err != nil {
		return fmt.Errorf("wal: append entries %d-%d to %s: %w", entries[0].Index, entries[len(entries)-1].Index, seg.path, err)
	}
	if err := seg.f.Datasync(); err != nil {
		return fmt.Errorf("wal: sync %s: %w", seg.path, err)
	}
	return nil
}

// startSegment puts a spare into service as the segment whose first record
// will have index base. The batch written next carries the segment header.
//
// Ordering: a fresh spare was fallocated (and zeroed) and fdatasync'd by the
// sparer; a recycled one holds synced data of a compacted segment. Rename to
// the segment's name, which carries base and a new salt, then a directory
// fsync make the segment durable under its name before any record is
// written to it. Records left in a recycled file were sealed with its old
// salt and never validate under the new one. A crash after the rename leaves
// a last segment without a valid header or records, which recovery removes.
func (l *Log) startSegment(base uint64) (*segment, error) {
	sp, err := l.sparer.take()
	if err != nil {
		// Nothing was written, but the log can take nothing more (a full
		// disk, or the room refused): sticky, so that the replica leaves
		// its group instead of refusing every append from then on.
		return nil, l.fail(fmt.Errorf("wal: start segment at %d: %w", base, err))
	}
	salt := rand.Uint32()
	for salt == sp.oldSalt {
		salt = rand.Uint32()
	}
	path := filepath.Join(l.dir, segName(base, salt))
	if err := l.fs.Rename(sp.path, path); err != nil {
		sp.f.Close()
		return nil, l.fail(fmt.Errorf("wal: start segment: %w", err))
	}
	if err := l.fs.SyncDir(l.dir); err != nil {
		sp.f.Close()
		return nil, l.fail(fmt.Errorf("wal: start segment %s: sync dir: %w", path, err))
	}
	return &segment{base: base, salt: salt, path: path, f: sp.f, capacity: sp.size}, nil
}

// DeleteRange implements raft.LogStore: it deletes the entries min..max
// (inclusive). Only a prefix or a suffix of the log can be deleted
// (ErrRangeUnsupported otherwise); a range that covers the whole log empties
// it, and a range outside the log is a no-op. When it returns nil the
// deletion is durable. A failed file operation puts the log in the failed
// state (ErrFailed) until it is reopened.
func (l *Log) DeleteRange(min, max uint64) error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	if err := l.writable(); err != nil {
		return err
	}
	if err := l.syncPending(); err != nil {
		return err
	}
	switch {
	case min > max || l.last == 0 || max < l.first || min > l.last:
		return nil
	case min <= l.first:
		return l.truncateHead(max + 1)
	case max >= l.last:
		return l.truncateTail(min - 1)
	default:
		return fmt.Errorf("%w: asked to delete %d-%d of %d-%d", ErrRangeUnsupported, min, max, l.first, l.last)
	}
}

// truncateHead deletes every entry below newFirst.
//
// Ordering, with a crash possible between any two steps:
//  1. write meta.tmp with newFirst, fdatasync it, rename it over meta,
//     fsync the directory. Before the rename is durable the old meta (and
//     the whole old log) is in force; after, recovery ignores entries below
//     newFirst whatever files remain.
//  2. drop the dead segments from memory; rename up to Config.MaxRecycled of them
//     to spare names for reuse (their blocks are allocated and written, so
//     appends over them need no extent updates and no zero-filling), close
//     and unlink the others; fsync the directory. Any subset of these
//     renames and unlinks may be durable at a crash; recovery removes
//     leftover dead segments because they lie wholly below meta, and
//     spares because they are never part of the log.
//
// The segment holding newFirst is kept whole; its records below newFirst are
// hidden by the in-memory first index and by meta after a reopen.
func (l *Log) truncateHead(newFirst uint64) error {
	if err := l.writeMeta(newFirst); err != nil {
		return l.fail(err)
	}
	// The segments before the one holding newFirst are dead; all of them
	// are when the log is emptied.
	nDead := len(l.segs)
	if newFirst <= l.last {
		nDead = 0
		for nDead+1 < len(l.segs) && l.segs[nDead+1].base <= newFirst {
			nDead++
		}
	}
	dead := l.segs[:nDead]
	l.mu.Lock()
	l.segs = slices.Clone(l.segs[nDead:])
	if len(l.segs) == 0 {
		l.first, l.last = 0, 0
	} else {
		l.first = newFirst
	}
	l.mu.Unlock()
	if len(dead) == 0 {
		return nil
	}
	var errs []error
	for _, s := range dead {
		if l.sparer.recycle(s) {
			continue
		}
		s.f.Close()
		if err := l.fs.Remove(s.path); err != nil {
			errs = append(errs, err)
		}
	}
	if err := l.fs.SyncDir(l.dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		// The truncation itself is durable (meta); leftover files are
		// removed by the next Open. Report, but do not fail the log.
		return fmt.Errorf("wal: remove compacted segments: %w", err)
	}
	return nil
}

// truncateTail deletes every entry above newLast (first ≤ newLast < last).
//
// Ordering, with a crash possible between any two steps:
//  1. drop the entries from memory (readers stop seeing them).
//  2. unlink the segments that lie wholly above newLast, the highest first,
//     fsyncing the directory after each: at any crash the files on disk
//     still form a contiguous prefix of the old log.
//  3. if newLast+1 starts a segment, unlink it the same way; otherwise
//     ftruncate that segment just before the record newLast+1 and fdatasync
//     it. The size change is atomic; the segment is full from now on
//     (capacity = end), so the next append starts a new segment and
//     nothing is ever written after a truncation point.
//
// Every intermediate state is a prefix of the old log that contains
// first..newLast: the state raft would see after a crash during this call
// is one of the states it saw before, or the final one.
func (l *Log) truncateTail(newLast uint64) error {
	// k is the segment holding newLast+1.
	k := len(l.segs) - 1
	for l.segs[k].base > newLast+1 {
		k--
	}
	s := l.segs[k]
	var dead []*segment
	cut := int64(-1)
	l.mu.Lock()
	if s.base == newLast+1 {
		dead = slices.Clone(l.segs[k:])
		l.segs = l.segs[:k]
	} else {
		dead = slices.Clone(l.segs[k+1:])
		l.segs = l.segs[:k+1]
		i := newLast + 1 - s.base
		cut = s.offsets[i]
		s.offsets = s.offsets[:i]
		s.end = cut
		s.capacity = cut
	}
	l.last = newLast
	l.mu.Unlock()

	for i := len(dead) - 1; i >= 0; i-- {
		d := dead[i]
		d.f.Close()
		if err := l.fs.Remove(d.path); err != nil {
			return l.fail(fmt.Errorf("wal: delete suffix: %w", err))
		}
		if err := l.fs.SyncDir(l.dir); err != nil {
			return l.fail(fmt.Errorf("wal: delete suffix: sync dir: %w", err))
		}
	}
	if cut >= 0 {
		if err := s.f.Truncate(cut); err != nil {
			return l.fail(fmt.Errorf("wal: delete suffix: %w", err))
		}
		if err := s.f.Datasync(); err != nil {
			return l.fail(fmt.Errorf("wal: delete suffix: sync %s: %w", s.path, err))
		}
	}
	return nil
}

// writeMeta durably replaces the meta file (write, fdatasync, rename,
// directory fsync).
func (l *Log) writeMeta(first uint64) error {
	tmp := filepath.Join(l.dir, metaTmpName)
	if err := l.fs.WriteFile(tmp, encodeMeta(first)); err != nil {
		return fmt.Errorf("wal: write meta: %w", err)
	}
	if err := l.fs.Rename(tmp, filepath.Join(l.dir, metaName)); err != nil {
		return fmt.Errorf("wal: write meta: %w", err)
	}
	if err := l.fs.SyncDir(l.dir); err != nil {
		return fmt.Errorf("wal: write meta: sync dir: %w", err)
	}
	l.metaFirst = first
	return nil
}

// ReleaseSpares deletes the recycled segments kept for reuse beyond keep
// and returns how many it deleted. A log that was written fast keeps up to
// Config.MaxRecycled of them; once it is idle they are only disk space.
func (l *Log) ReleaseSpares(keep int) (int, error) {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	if l.closed {
		return 0, ErrClosed
	}
	n, err := l.sparer.release(keep)
	if err != nil {
		return n, fmt.Errorf("wal: release spare segments in %s: %w", l.dir, err)
	}
	return n, nil
}

// writable returns the error that forbids a mutation, if any. Called with
// writeMu held.
func (l *Log) writable() error {
	if l.closed { // only changed under writeMu
		return ErrClosed
	}
	if l.failed != nil {
		return fmt.Errorf("%w: %w", ErrFailed, l.failed)
	}
	return nil
}

// fail records err as the sticky failure, unless one is recorded already,
// and returns it.
func (l *Log) fail(err error) error {
	if l.failed == nil {
		l.failed = err
		close(l.failedCh)
	}
	return err
}

// Failed returns a channel that is closed when the log enters the failed
// state (ErrFailed): a write, sync or truncation failed, and the log takes
// no more changes until it is reopened. Err then says why.
func (l *Log) Failed() <-chan struct{} { return l.failedCh }

// Err returns the failure that put the log in the failed state, or nil.
func (l *Log) Err() error {
	select {
	case <-l.failedCh:
		return fmt.Errorf("%w: %w", ErrFailed, l.failed) // set before the close
	default:
		return nil
	}
}

// Close stops the background preparer, closes the files and releases the
// directory. Later calls of any method return ErrClosed; Close itself is
// idempotent.
func (l *Log) Close() error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	if l.closed {
		return nil
	}
	var errs []error
	if l.failed == nil {
		if err := l.syncPending(); err != nil {
			errs = append(errs, err)
		}
	}
	l.sparer.close()
	l.mu.Lock()
	l.closed = true
	for _, s := range l.segs {
		if err := s.f.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	l.segs = nil
	l.mu.Unlock()
	if err := l.lock.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("wal: close %s: %w", l.dir, err)
	}
	return nil
}

var (
	_ raft.LogStore             = (*Log)(nil)
	_ raft.MonotonicLogStore    = (*Log)(nil)
	_ raft.DeferredSyncLogStore = (*Log)(nil)
	_ raft.LogTypeStore         = (*Log)(nil)
)
