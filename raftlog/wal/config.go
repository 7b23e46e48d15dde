package wal

import (
	"errors"
	"fmt"
)

// Config tunes a Log. The zero value is not valid; start from DefaultConfig.
type Config struct {
	// SegmentSize is the preallocated size of each segment file, in bytes.
	// Batches go to the last segment while it has reserved space left; a
	// batch never spans two segments, so a segment ends up larger than
	// SegmentSize by less than one batch. Must be at least 64 KiB and a
	// multiple of 4 KiB.
	SegmentSize int64

	// PreZeroRate is the rate, in bytes per second, at which a background
	// goroutine fills the next (fresh) segment with zeros while it waits to
	// be used, from its start, so that appends overwrite blocks that are
	// already written and fdatasync has no extent metadata to commit. A
	// segment needed before it is fully zeroed is used as it is (the rest
	// is fallocated and reads as zeros), so the zeroing never costs more
	// than this much disk bandwidth. 0 disables pre-zeroing. See
	// docs/raft-log-store.md for the measurements behind the default.
	PreZeroRate int64

	// MaxRecycled is how many segments dropped by compaction are kept (as
	// spare files) for reuse as new segments; further ones are deleted.
	// Reused segments need neither zero-filling nor extent updates. To
	// reuse every segment a compaction frees, make it cover what the log
	// grows by between compactions. Each costs up to SegmentSize of disk
	// until it is reused or Log.ReleaseSpares deletes it; 0 disables
	// recycling.
	MaxRecycled int

	// Room, if set, is asked before a fresh segment of n bytes is
	// allocated; its error fails the allocation, and so the log when it
	// needs that segment (as a full disk would): a disk-space reserve.
	// Recycled segments need no room.
	Room func(n int64) error

	// InlineThreshold is the entry size (Data plus Extensions, bytes) below
	// which StoreLogs copies an entry into its pooled encode buffer; larger
	// entries are handed to pwritev as their own iovecs without a copy.
	// With DirectIO it does not apply: every entry is copied once, into
	// the direct write's staging buffer.
	// Must be between 0 and 16 MiB.
	InlineThreshold int

	// DirectIO writes segments with O_DIRECT (through an aligned staging
	// buffer), bypassing the page cache, where the file system allows it;
	// elsewhere, and with DirectIO false, they are written through the
	// page cache. See direct.go and docs/raft-log-store.md, "Direct I/O".
	DirectIO bool
}

// DefaultConfig returns the recommended configuration: 64 MiB segments
// pre-zeroed at up to 64 MiB/s, up to 32 (2 GiB) recycled, written with
// O_DIRECT (without O_DIRECT, entries of 32 KiB and more are written
// without a copy).
func DefaultConfig() Config {
	return Config{
		SegmentSize:     64 << 20,
		PreZeroRate:     64 << 20,
		MaxRecycled:     32,
		InlineThreshold: 32 << 10,
		DirectIO:        true,
	}
}

// Validate reports every invalid field.
func (c Config) Validate() error {
	var errs []error
	if c.SegmentSize < 64<<10 {
		errs = append(errs, fmt.Errorf("wal: Config.SegmentSize %d is below the minimum of 64 KiB", c.SegmentSize))
	}
	if c.SegmentSize%4096 != 0 {
		errs = append(errs, fmt.Errorf("wal: Config.SegmentSize %d is not a multiple of 4 KiB", c.SegmentSize))
	}
	if c.PreZeroRate < 0 {
		errs = append(errs, fmt.Errorf("wal: Config.PreZeroRate %d is negative", c.PreZeroRate))
	}
	if c.MaxRecycled < 0 {
		errs = append(errs, fmt.Errorf("wal: Config.MaxRecycled %d is negative", c.MaxRecycled))
	}
	if c.InlineThreshold < 0 || c.InlineThreshold > 16<<20 {
		errs = append(errs, fmt.Errorf("wal: Config.InlineThreshold %d is outside [0, 16 MiB]", c.InlineThreshold))
	}
	return errors.Join(errs...)
}
