// Package wal is the log store of Tandem's raft groups: a segmented
// write-ahead log implementing raft.LogStore and raft.MonotonicLogStore of
// github.com/hashicorp/raft, with one pwritev and one fdatasync per
// StoreLogs call, CRC32C on every record, torn-tail recovery, and
// truncation at both ends that survives a crash between any two syscalls.
// It is Linux-only (pwritev, fallocate, fdatasync, flock).
//
// # Using it
//
//	l, err := wal.Open(dir, wal.DefaultConfig())
//	// pass l to raft.NewRaft as the LogStore (optionally behind raft.NewLogCache)
//	defer l.Close()
//
// Open fails with an error wrapping ErrCorrupt when the files hold damage
// that a crash cannot explain; the replica must then be rebuilt from its
// peers. A failed write or sync makes every later mutation fail with
// ErrFailed (raft steps down) until the log is reopened.
//
// # Files
//
// A log directory holds:
//
//	LOCK                                flock'd while a Log has the directory open
//	meta                                the durable lower bound of the log (optional)
//	00000000000000000001-9f3c21d0.seg   segments: index of the first record, salt
//	00000000000000004097-0b77e912.seg
//	3.spare, r1.spare                   segments prepared ahead of use, fresh or
//	                                    recycled (no log data)
//
// meta (32 bytes): magic "TNDMWALM", version u32 = 1, reserved u32, first
// u64, reserved u32, CRC32C u32 of the preceding 28 bytes. Entries with an
// index below first are deleted, whatever the segments still hold. It is
// replaced with write, fdatasync, rename, directory fsync.
//
// A segment is a 32-byte header followed by records, each starting at a
// multiple of 8 bytes; the rest of the file, up to its preallocated size, is
// zeros. Integers are little endian.
//
//	segment header: magic "TNDMWALS" | version u32 = 1 | salt u32 |
//	                base index u64 | reserved u32 | CRC32C u32 of bytes 0..28
//
//	record header (48 bytes):
//	  0 hdrCRC u32     CRC32C of header bytes 4..48, seeded with the salt
//	  4 dataCRC u32    CRC32C of Data || Extensions
//	  8 magic u8       0xA7 (so zeroed space never parses as a record)
//	  9 type u8        raft.LogType
//	 10 flags u16      bit 0: last record of its StoreLogs batch
//	 12 batchOff u32   index minus the index of its batch's first record
//	 16 index u64
//	 24 term u64
//	 32 appendedAt i64 Unix nanoseconds, 0 for the zero time
//	 40 dataLen u32
//	 44 extLen u32
//	then Data, Extensions, and zero padding to a multiple of 8.
//
// The header is covered by hdrCRC, which covers dataCRC, which covers the
// payload: a record is valid only if both match. Every segment gets a random
// salt, part of its file name (durable before any record is written) and of
// its header; seeding hdrCRC with it makes records left in a reused file by
// its previous life invalid in the new one. Records of one segment carry
// consecutive indexes starting at the segment's base. A batch never spans two
// segments: batches go to the last segment while its reserved space is not
// used up (a batch that does not fit extends the file), then a new segment
// starts.
//
// # Writing
//
// StoreLogs encodes the record headers, and entries smaller than
// Config.InlineThreshold, into one pooled buffer, and passes larger entries'
// Data to pwritev as their own iovecs, so large payloads are never copied and
// no memory is allocated per call in the steady state. It then calls
// fdatasync once. StoreLogsNoSync (raft.DeferredSyncLogStore, used by a
// raft leader to replicate its entries while it writes and syncs them)
// encodes the batch and publishes it without writing it: GetLog serves its
// entries from the caller's memory, and SyncLogs, or the next StoreLogs,
// StoreLogsNoSync or DeleteRange, writes it the same way and syncs it. The
// leader's device write (about 0.1 ms for 4 KiB with O_DIRECT, milliseconds
// for MiBs) thus runs while its followers already have the entries.
//
// With Config.DirectIO (the default) the writes bypass the page cache: they
// are staged into an aligned buffer and written with O_DIRECT in whole
// 4 KiB blocks, the first block's beginning rewritten with the bytes it
// already holds and the last block's rest with zeros (direct.go). Every
// entry is then copied once, into that staging buffer, and none into the
// encode buffer. A file system that refuses O_DIRECT gets the page-cache
// path.
//
// New segments come from spares. Segments dropped by compaction are recycled
// (up to Config.MaxRecycled): renamed to spare names and reused, so appends
// overwrite blocks that are allocated and written and fdatasync flushes data
// only, with no extent metadata to commit. When no recycled segment is
// available a background goroutine provides a fresh one: created,
// fallocated and fdatasync'd, then, while it waits to be used, filled with
// zeros from its start at up to Config.PreZeroRate bytes per second. A
// segment needed before it is fully zeroed is used as it is, so a light load
// gets fully zeroed segments and a streaming load pays at most PreZeroRate
// of extra writes.
// Starting a segment renames the spare to its segment name (with a new salt)
// and fsyncs the directory before the first record is written to it.
//
// The in-memory index (record offsets per segment) is rebuilt by Open and
// serves GetLog with one pread into a buffer the caller then owns; the
// record's checksums are verified on every read. LogType (raft's
// start-up scan for configuration entries) reads a record's header alone.
//
// # Recovery and the crash-safety argument
//
// Invariant: appends are serialized and each batch's fdatasync returns
// before the next batch is written (StoreLogs syncs its own batch;
// StoreLogsNoSync leaves the write and the sync to SyncLogs or to the next
// StoreLogs, StoreLogsNoSync or DeleteRange, which write and sync it before
// doing anything else), and nothing is ever written over or after existing records except
// at the current end of the last segment. Hence at
// a crash only the batch being written may be incomplete, and it is the last
// thing in the last segment. Under kill -9 a partial pwritev is a prefix of
// the batch; under power loss any subset of its pages may have reached the
// disk. The block a batch starts in is rewritten whole (by page-cache
// writeback, or by the O_DIRECT write) with the synced bytes before the
// batch unchanged: like every log that appends to a partial block, this
// relies on the device not tearing a sector it rewrites with the same data.
//
// Open removes spares and an unfinished meta.tmp, reads meta, removes
// segments that lie wholly below meta's first index (left by an interrupted
// compaction), and scans the others. Sealed segments (all but the last) must
// consist of valid records followed only by zeros: their last batch was synced
// before the next segment was written, and the segment filled its whole
// reservation first, so no stale bytes of a recycled file remain in it.
// There the scan checks each record's header (its checksum covers the
// payload's checksum) and skips the payload, reading one block per record
// instead of the whole log; GetLog verifies the payload when the entry is
// read, so damage there is reported then rather than by Open. In
// the last segment the scan stops at the first invalid record (or at a
// header that does not match the file name: a recycled file whose first
// batch did not land); what follows is:
//
//   - only zeros: the normal end;
//   - garbage (including records of a recycled file's previous life, which
//     fail the salted CRC), or valid records that can only belong to the
//     same batch as the failed record (same batch start, higher index): a
//     torn batch. The segment is ftruncated at the failed record and
//     fdatasync'd before anything new is written, so no leftover can ever
//     follow a new record, and the next batch starts a new segment. (So
//     reopening a log whose last segment is a recycled file cuts its
//     unused reservation: one early segment switch per restart.);
//   - a valid record of a later batch: the failed record had been synced,
//     so this is corruption, reported as ErrCorrupt and never cut.
//
// Damage inside the last synced batch is indistinguishable from a torn
// batch and is cut: this is the limit of any log that does not sync a
// separate commit record. A last segment without a single valid record (the
// rename of a spare became durable but its first batch did not) is removed.
// Finally the segments must be contiguous; a gap is ErrCorrupt.
//
// DeleteRange of a suffix (raft removing conflicting entries) unlinks whole
// segments above the cut from the highest down, fsyncing the directory after
// each, then either unlinks the segment starting at the cut or ftruncates the
// segment holding it just before the first deleted record and fdatasyncs it.
// Every state a crash can leave is a prefix of the old log that still holds
// every kept entry. The truncated segment is never appended to again, so
// records written later cannot be followed by stale ones.
//
// DeleteRange of a prefix (compaction after a snapshot, or emptying the log
// after a snapshot restore) first makes the new first index durable in meta
// (write meta.tmp, fdatasync, rename, fsync the directory), then renames the
// segments wholly below it to spare names (recycling) or unlinks them, and
// fsyncs the directory. Before the rename of meta is durable the old log is
// intact; after it, recovery hides and removes everything below the new
// first index, whichever renames and unlinks completed.
//
// A salt is drawn at random for each segment and differs from the previous
// salt of a recycled file; a record of an older life of the file validating
// under a new salt needs a 32-bit collision with a salt two or more lives
// back, and would still have to carry the expected index.
//
// Appending to an empty log below meta's first index first lowers it in meta.
//
// The kill -9 test (TestKill9), the torn-tail and corruption tests, the fault
// injection test (TestFailClosed) and FuzzScanSegment exercise these paths.
package wal
