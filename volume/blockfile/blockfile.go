// Package blockfile implements volume.Backend on a sparse local file: reads
// and writes are pread/pwrite through the page cache, Flush is fdatasync, FUA
// is a RWF_DSYNC write, Trim and Zero punch holes (or zero a range in place
// with NoHole) and Extents walks SEEK_DATA/SEEK_HOLE. For bulk copies,
// StartWriteback and SettleWriteback drive the writeback of a range.
// ReadMapped hands out cached ranges as views of mapped windows of the file,
// for the NBD server to write to a socket without copying them first.
//
// It is the storage under every replica of a Tandem volume.
package blockfile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/tandem-project/tandem/volume"
)

// File is a volume.Backend backed by a sparse file.
type File struct {
	f        *os.File
	path     string
	readOnly bool
	size     atomic.Int64

	// canPunch, canZeroRange and canDsync start true and are cleared the
	// first time the filesystem says it does not support the operation.
	canPunch     atomic.Bool
	canZeroRange atomic.Bool
	canDsync     atomic.Bool
	canNowait    atomic.Bool
	canCachestat atomic.Bool

	// maps holds the windows of the file mapped for ReadMapped; raw gives
	// it the descriptor safely against a concurrent Close.
	maps windows
	raw  syscall.RawConn

	closeOnce sync.Once
}

// Options control how Open treats the file.
type Options struct {
	// Size is the volume size in bytes. A new file is created with this
	// size; an existing smaller file is grown to it; an existing larger file
	// is an error (volumes never shrink). Zero means "use the existing
	// file's size".
	Size int64
	// Create allows Open to create the file when it does not exist.
	Create bool
	// ReadOnly opens the file read-only; write-like operations then fail
	// with volume.ErrReadOnly.
	ReadOnly bool
}

// Open opens (and with Options.Create, creates) the file at path.
func Open(path string, opts Options) (*File, error) {
	if opts.Size < 0 {
		return nil, fmt.Errorf("blockfile: open %s: negative size %d", path, opts.Size)
	}
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag|unix.O_CLOEXEC, 0o600)
	created := false
	if errors.Is(err, os.ErrNotExist) && opts.Create && !opts.ReadOnly {
		f, err = os.OpenFile(path, flag|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
		created = err == nil
	}
	if err != nil {
		return nil, fmt.Errorf("blockfile: %w", err)
	}
	b, err := setup(f, path, opts)
	if err == nil && created {
		// A file made durable by Flush must not lose its name in a crash.
		err = SyncDir(filepath.Dir(path))
	}
	if err != nil {
		f.Close()
		if created {
			os.Remove(path) // do not leave a half-made volume behind
		}
		return nil, err
	}
	return b, nil
}

// SyncDir fsyncs directory dir, making the creation of a file in it
// durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("blockfile: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("blockfile: sync %s: %w", dir, err)
	}
	return nil
}

// setup checks and sizes an opened file.
func setup(f *os.File, path string, opts Options) (*File, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("blockfile: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("blockfile: %s is not a regular file", path)
	}
	size := fi.Size()
	switch {
	case opts.Size == 0:
	case opts.Size < size:
		return nil, fmt.Errorf("blockfile: %s holds %d bytes, more than the requested size %d (volumes never shrink)", path, size, opts.Size)
	case opts.Size > size:
		if opts.ReadOnly {
			return nil, fmt.Errorf("blockfile: %s holds %d bytes, cannot grow to %d read-only", path, size, opts.Size)
		}
		if err := f.Truncate(opts.Size); err != nil {
			return nil, fmt.Errorf("blockfile: grow %s to %d: %w", path, opts.Size, err)
		}
		if err := f.Sync(); err != nil {
			return nil, fmt.Errorf("blockfile: sync %s: %w", path, err)
		}
		size = opts.Size
	}
	// No kernel readahead: the requests say what to read (the guest reads
	// ahead itself), and readahead (8 MiB on the development machine)
	// fills the page cache with large folios, which make every later small
	// write into them expensive (see writeChunk). After a cold sequential
	// read of a volume, 4 KiB random writes ran 16.4k-18.0k/s with
	// readahead and 25.6k-28.9k/s without, and the cold reads themselves
	// were faster without it (1 MiB at QD8: 564-595 vs 1829-2065 MiB/s).
	// Advisory: an error changes nothing.
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM)
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("blockfile: %s: %w", path, err)
	}
	b := &File{f: f, path: path, readOnly: opts.ReadOnly, raw: raw}
	b.size.Store(size)
	b.canPunch.Store(true)
	b.canZeroRange.Store(true)
	b.canDsync.Store(true)
	b.canNowait.Store(true)
	b.canCachestat.Store(true)
	return b, nil
}

// Path returns the file's path.
func (b *File) Path() string { return b.path }

// Size implements volume.Backend.
func (b *File) Size() int64 { return b.size.Load() }

// Caps implements volume.Backend.
func (b *File) Caps() volume.Caps {
	return volume.Caps{ReadOnly: b.readOnly, Trim: true, Extents: true, MultiConn: true}
}

// Grow extends the file to size bytes. New bytes read as zeroes.
func (b *File) Grow(size int64) error {
	if b.readOnly {
		return volume.ErrReadOnly
	}
	if size < b.Size() {
		return fmt.Errorf("blockfile: cannot shrink %s from %d to %d", b.path, b.Size(), size)
	}
	if err := b.f.Truncate(size); err != nil {
		return fmt.Errorf("blockfile: grow %s: %w", b.path, err)
	}
	if err := b.f.Sync(); err != nil {
		return fmt.Errorf("blockfile: sync %s: %w", b.path, err)
	}
	b.size.Store(size)
	return nil
}

// ReadAt implements volume.Backend.
func (b *File) ReadAt(_ context.Context, p []byte, off int64) error {
	if err := volume.CheckRange(off, int64(len(p)), b.Size()); err != nil {
		return err
	}
	n, err := b.f.ReadAt(p, off)
	if err == io.EOF {
		// The file is never shorter than Size, but be exact if someone
		// truncated it under us: missing bytes read as zeroes.
		clear(p[n:])
		err = nil
	}
	if err != nil {
		return b.wrap("read", off, err)
	}
	return nil
}

// ReadAtNowait implements volume.NowaitReader with preadv2(RWF_NOWAIT): it
// succeeds when the whole range is in the page cache.
func (b *File) ReadAtNowait(p []byte, off int64) (bool, error) {
	if !b.canNowait.Load() {
		return false, nil
	}
	if err := volume.CheckRange(off, int64(len(p)), b.Size()); err != nil {
		return true, err
	}
	for len(p) > 0 {
		n, err := unix.Preadv2(int(b.f.Fd()), [][]byte{p}, off, unix.RWF_NOWAIT)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false, nil
		case err == unix.EOPNOTSUPP || err == unix.ENOSYS || err == unix.EINVAL:
			b.canNowait.Store(false)
			return false, nil
		case err != nil:
			return true, b.wrap("read", off, err)
		case n == 0:
			// Past the end of a file shorter than Size: let ReadAt
			// handle it.
			return false, nil
		}
		p = p[n:]
		off += int64(n)
	}
	return true, nil
}

// writeChunk bounds one pwrite. Linux (ext4 since 6.16) caches a file in
// folios as large as the writes that fill them, and a small overwrite of a
// cached folio walks all of its buffer heads: after 1 MiB writes, each
// 4 KiB random write cost about 26 µs of CPU instead of 3-5 µs, and the
// FSM's pwrites took 35-50 % of the agent's CPU (perf: ext4_block_write_begin).
// Writing in pieces of at most 64 KiB keeps folios, and so the walk, small
// (a known kernel regression; see docs/replication.md, "Volume files").
const writeChunk = 64 << 10

// WriteAt implements volume.Backend.
func (b *File) WriteAt(_ context.Context, p []byte, off int64, flags volume.Flags) error {
	if b.readOnly {
		return volume.ErrReadOnly
	}
	if err := volume.CheckRange(off, int64(len(p)), b.Size()); err != nil {
		return err
	}
	if flags.Has(volume.FUA) && b.canDsync.Load() {
		err := pwriteDsync(b.f, p, off)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
			return b.wrap("write", off, err)
		}
		b.canDsync.Store(false)
	}
	for len(p) > 0 { // in pieces: see writeChunk
		n := min(len(p), writeChunk)
		if _, err := b.f.WriteAt(p[:n], off); err != nil {
			return b.wrap("write", off, err)
		}
		p, off = p[n:], off+int64(n)
	}
	return b.fuaSync(flags)
}

// pwriteDsync writes all of p at off with RWF_DSYNC, so that the data (and
// only this data) is durable when it returns.
func pwriteDsync(f *os.File, p []byte, off int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	for len(p) > 0 {
		var n int
		var werr error
		if err := rc.Control(func(fd uintptr) {
			for {
				n, werr = unix.Pwritev2(int(fd), [][]byte{p}, off, unix.RWF_DSYNC)
				if werr != unix.EINTR {
					return
				}
			}
		}); err != nil {
			return err
		}
		if werr != nil {
			return werr
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		p = p[n:]
		off += int64(n)
	}
	return nil
}

func (b *File) fuaSync(flags volume.Flags) error {
	if !flags.Has(volume.FUA) {
		return nil
	}
	return b.Flush(context.Background())
}

// Zero implements volume.Backend.
func (b *File) Zero(ctx context.Context, off, n int64, flags volume.Flags) error {
	if b.readOnly {
		return volume.ErrReadOnly
	}
	if err := volume.CheckRange(off, n, b.Size()); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if !flags.Has(volume.NoHole) && b.canPunch.Load() {
		err := b.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n, &b.canPunch)
		if err == nil {
			return b.fuaSync(flags)
		}
		if !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
	}
	if b.canZeroRange.Load() {
		err := b.fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n, &b.canZeroRange)
		if err == nil {
			return b.fuaSync(flags)
		}
		if !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
	}
	if flags.Has(volume.FastZero) {
		return volume.ErrNotFast
	}
	if err := b.writeZeroes(ctx, off, n); err != nil {
		return err
	}
	return b.fuaSync(flags)
}

// writeZeroes writes explicit zero bytes over [off, off+n).
func (b *File) writeZeroes(ctx context.Context, off, n int64) error {
	const chunk = 1 << 20
	zero := make([]byte, min(n, chunk))
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		w := min(n, chunk)
		if _, err := b.f.WriteAt(zero[:w], off); err != nil {
			return b.wrap("write zeroes", off, err)
		}
		off += w
		n -= w
	}
	return nil
}

// fallocate runs fallocate(2) with mode; when the filesystem does not support
// the mode it clears *supported and returns an error wrapping EOPNOTSUPP.
func (b *File) fallocate(mode uint32, off, n int64, supported *atomic.Bool) error {
	for {
		err := unix.Fallocate(int(b.f.Fd()), mode, off, n)
		switch {
		case err == nil:
			return nil
		case err == unix.EINTR:
			continue
		case err == unix.EOPNOTSUPP || err == unix.ENOSYS:
			supported.Store(false)
			return fmt.Errorf("blockfile: fallocate %s: %w", b.path, unix.EOPNOTSUPP)
		default:
			return b.wrap("fallocate", off, err)
		}
	}
}

// Trim implements volume.Backend: it punches a hole when the filesystem can.
func (b *File) Trim(_ context.Context, off, n int64, flags volume.Flags) error {
	if b.readOnly {
		return volume.ErrReadOnly
	}
	if err := volume.CheckRange(off, n, b.Size()); err != nil {
		return err
	}
	if n == 0 || !b.canPunch.Load() {
		return nil
	}
	err := b.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n, &b.canPunch)
	if errors.Is(err, unix.EOPNOTSUPP) {
		return nil // a trim that does nothing is a valid trim
	}
	if err != nil {
		return err
	}
	return b.fuaSync(flags)
}

// Flush implements volume.Backend with fdatasync(2), which also persists the
// block map changed by hole punching.
func (b *File) Flush(context.Context) error {
	if b.readOnly {
		return nil
	}
	for {
		err := unix.Fdatasync(int(b.f.Fd()))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return b.wrap("fdatasync", 0, err)
		}
		return nil
	}
}

// FlushPaced is Flush for a file that may hold much dirty data while
// other writers sync on the same device: it writes the file back one
// window at a time, waiting for each (sync_file_range
// WAIT_BEFORE|WRITE|WAIT_AFTER), then calls Flush, which has little left.
// A single fdatasync would queue all the dirty data on the device at once
// and hold every other sync behind it (a checkpoint of a volume with
// 256 MiB dirty held its replicas' log syncs for 150-250 ms); paced, they
// wait for one window at most. Windows are window bytes, or larger for a
// large file (at most 4096 of them). It stops with ctx's error when ctx
// ends, having made nothing durable.
func (b *File) FlushPaced(ctx context.Context, window int64) error {
	if b.readOnly {
		return nil
	}
	size := b.Size()
	window = max(window, size/4096, 1<<20)
	for off := int64(0); off < size; off += window {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("blockfile: flush %s: %w", b.path, err)
		}
		if err := b.syncRange(off, min(window, size-off), unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER); err != nil {
			return err
		}
	}
	return b.Flush(ctx)
}

// Cache implements volume.Backend with posix_fadvise(WILLNEED).
func (b *File) Cache(_ context.Context, off, n int64) error {
	if err := volume.CheckRange(off, n, b.Size()); err != nil {
		return err
	}
	if err := unix.Fadvise(int(b.f.Fd()), off, n, unix.FADV_WILLNEED); err != nil {
		return b.wrap("fadvise", off, err)
	}
	return nil
}

// Extents implements volume.Backend with lseek(SEEK_DATA/SEEK_HOLE). The
// file offset it moves is never used for I/O (all I/O is positional), so
// concurrent calls are safe.
func (b *File) Extents(_ context.Context, off, n int64, max int) ([]volume.Extent, error) {
	size := b.Size()
	if err := volume.CheckRange(off, n, size); err != nil {
		return nil, err
	}
	if max < 1 {
		max = 1
	}
	end := off + n
	fd := int(b.f.Fd())
	var out []volume.Extent
	pos := off
	for pos < end && len(out) < max {
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if err == unix.ENXIO {
			data = size // no data after pos: a hole to the end of file
		} else if err != nil {
			if err == unix.EINVAL || err == unix.EOPNOTSUPP {
				return []volume.Extent{{Length: n}}, nil // no hole support: all data
			}
			return nil, b.wrap("seek data", pos, err)
		}
		if data > pos {
			l := min(data, end) - pos
			out = append(out, volume.Extent{Length: l, Flags: volume.Hole | volume.Zero})
			pos += l
			continue
		}
		hole, err := unix.Seek(fd, pos, unix.SEEK_HOLE)
		if err != nil {
			return nil, b.wrap("seek hole", pos, err)
		}
		if hole <= pos { // cannot happen for data at pos; avoid looping
			hole = end
		}
		l := min(hole, end) - pos
		out = append(out, volume.Extent{Length: l})
		pos += l
	}
	return out, nil
}

// Close implements volume.Backend: the file is flushed, then closed.
func (b *File) Close() error { return b.close(!b.readOnly) }

// Discard closes the file without flushing it, for a file about to be
// deleted: what was written and not yet flushed may be lost. Closing a
// closed file returns volume.ErrClosed.
func (b *File) Discard() error { return b.close(false) }

// close closes the file once, flushing it first if flush is set; a second
// call returns volume.ErrClosed.
func (b *File) close(flush bool) error {
	err := volume.ErrClosed
	b.closeOnce.Do(func() {
		err = nil
		if flush {
			err = b.Flush(context.Background())
		}
		if cerr := b.f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("blockfile: close %s: %w", b.path, cerr)
		}
		b.maps.close()
	})
	return err
}

// wrap annotates an I/O error with the operation and offset, and marks
// out-of-space conditions with volume.ErrNoSpace.
func (b *File) wrap(op string, off int64, err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.EFBIG) {
		return fmt.Errorf("blockfile: %s %s at %d: %w (%w)", op, b.path, off, volume.ErrNoSpace, err)
	}
	return fmt.Errorf("blockfile: %s %s at %d: %w", op, b.path, off, err)
}

// StartWriteback asks the kernel to start writing [off, off+n) back to the
// device (sync_file_range SYNC_FILE_RANGE_WRITE) and returns without
// waiting. It makes nothing durable (Flush does): it spreads a bulk copy's
// writeback over the copy instead of leaving it all to the final Flush.
func (b *File) StartWriteback(off, n int64) error {
	return b.syncRange(off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// SettleWriteback waits until [off, off+n) has been written back to the
// device (sync_file_range WAIT_BEFORE|WRITE|WAIT_AFTER), then drops it from
// the page cache (posix_fadvise DONTNEED): a bulk copy that settles the
// range it wrote a few MiB ago keeps its dirty data, and what the device
// queues ahead of other writers' syncs, bounded, and leaves the page cache
// to others. It makes nothing durable (Flush does).
func (b *File) SettleWriteback(off, n int64) error {
	if err := b.syncRange(off, n, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER); err != nil {
		return err
	}
	if err := unix.Fadvise(int(b.f.Fd()), off, n, unix.FADV_DONTNEED); err != nil {
		return b.wrap("fadvise", off, err)
	}
	return nil
}

func (b *File) syncRange(off, n int64, flags int) error {
	if b.readOnly || n <= 0 {
		return nil
	}
	for {
		err := unix.SyncFileRange(int(b.f.Fd()), off, n, flags)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return b.wrap("sync_file_range", off, err)
		}
		return nil
	}
}
