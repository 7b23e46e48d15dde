package wal

import "errors"

var (
	// ErrCorrupt marks damage that is not a torn tail: a bad record followed
	// by records of a later batch, a damaged sealed segment, a missing
	// segment, a bad meta file, or a record that fails its checksum when
	// read. Open and GetLog wrap it; the log must not be trusted (rebuild
	// the replica from its peers).
	ErrCorrupt = errors.New("wal: corrupt log")

	// ErrClosed is returned by every method called after Close.
	ErrClosed = errors.New("wal: log closed")

	// ErrFailed is returned by StoreLogs and DeleteRange after an earlier
	// write, sync, truncation or unlink failed. What reached the disk is
	// then unknown (a failed fsync may have dropped dirty pages), so the
	// log refuses further changes until it is closed and opened again,
	// which re-scans the files. Reads keep working.
	ErrFailed = errors.New("wal: log failed earlier; reopen it")

	// ErrOutOfOrder is returned by StoreLogs when the entries do not extend
	// the log contiguously: the first index must be LastIndex()+1 (any
	// index ≥ 1 on an empty log) and indexes must increase by one. Nothing
	// is written.
	ErrOutOfOrder = errors.New("wal: entries not contiguous with the log")

	// ErrRangeUnsupported is returned by DeleteRange for a range that is
	// neither a prefix nor a suffix of the log. Raft never asks for one.
	ErrRangeUnsupported = errors.New("wal: only a prefix or a suffix of the log can be deleted")

	// ErrTooLarge is returned by StoreLogs for an entry whose Data plus
	// Extensions exceed the record size limit (just under 4 GiB).
	ErrTooLarge = errors.New("wal: entry too large")

	// ErrLocked is returned by Open when another Log (in this or another
	// process) holds the directory.
	ErrLocked = errors.New("wal: directory in use by another log")
)
