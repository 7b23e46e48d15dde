package blockfile

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/tandem-project/tandem/volume"
)

// Large cached reads are handed to the NBD server as views of read-only
// shared mappings of the file (ReadMapped), so that the kernel copies the
// data once, from the page cache into the socket, instead of twice through
// a buffer. Nothing in the process reads a view: the kernel copies from it,
// and a fault there (a range no longer in the file) fails that system call
// with EFAULT instead of raising SIGBUS.
//
// The file is mapped in windows of mapWindow bytes, at most mapWindows of
// them at a time, least recently used unmapped first: the page tables of a
// mapping stay allocated until it is unmapped, so mapping a whole volume
// would cost 2 MiB of them per GiB ever read. The cached pages a window
// maps count in the agent's RSS (as shared file pages, RssFile), up to
// 1 GiB per volume read this way: page cache the reads use anyway.
const (
	mapWindow  = 64 << 20
	mapWindows = 16
)

// mapping is one mapped window of the file. It is reference counted: the
// window cache holds one reference while it keeps the window, each view
// one until it is released, and the last release unmaps it. So a view
// queued behind a slow client stays valid after the window is evicted or
// the file closed.
type mapping struct {
	data []byte
	refs atomic.Int64
	used uint64 // last use, in windows.clock ticks (under windows.mu)
}

// release drops a reference and unmaps the window with the last one.
func (m *mapping) release() {
	if m.refs.Add(-1) == 0 {
		_ = unix.Munmap(m.data)
	}
}

// windows is the File's cache of mapped windows.
type windows struct {
	mu     sync.Mutex
	byIdx  map[int64]*mapping
	clock  uint64
	closed bool
	failed bool // mmap failed once: the file is read with pread only
}

// acquire returns the mapped window holding [off, off+n) of a file of size
// bytes, with a reference taken, or nil when there is none to give: the
// range crosses a window boundary, the file is closed or cannot be mapped.
func (w *windows) acquire(fd int, off, n, size int64) *mapping {
	idx := off / mapWindow
	start := idx * mapWindow
	if (off+n-1)/mapWindow != idx {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.failed {
		return nil
	}
	m := w.byIdx[idx]
	if m != nil && start+int64(len(m.data)) < off+n {
		// Mapped before the file grew past it: map it again.
		delete(w.byIdx, idx)
		m.release()
		m = nil
	}
	if m == nil {
		length := min(int64(mapWindow), size-start)
		data, err := unix.Mmap(fd, start, int(length), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			w.failed = true
			return nil
		}
		// The requests say what will be read: no readahead on faults.
		_ = unix.Madvise(data, unix.MADV_RANDOM)
		m = &mapping{data: data}
		m.refs.Store(1)
		if w.byIdx == nil {
			w.byIdx = make(map[int64]*mapping)
		}
		w.byIdx[idx] = m
	}
	w.clock++
	m.used = w.clock
	m.refs.Add(1)
	w.evictLocked() // never m, the most recently used
	return m
}

// evictLocked drops the least recently used windows beyond mapWindows.
func (w *windows) evictLocked() {
	for len(w.byIdx) > mapWindows {
		var oldest int64
		var om *mapping
		for idx, m := range w.byIdx {
			if om == nil || m.used < om.used {
				oldest, om = idx, m
			}
		}
		delete(w.byIdx, oldest)
		om.release()
	}
}

// close drops the cache's references; views still in use keep their
// windows mapped until they are released.
func (w *windows) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	for idx, m := range w.byIdx {
		delete(w.byIdx, idx)
		m.release()
	}
}

// ReadMapped implements volume.MappedReader: when cachestat(2) finds the
// whole range in the page cache, it returns the range as a view of a
// mapped window of the file. It is safe against a concurrent Close.
func (b *File) ReadMapped(off, n int64) ([]byte, func(), error) {
	if !b.canCachestat.Load() {
		return nil, nil, nil
	}
	size := b.Size()
	if err := volume.CheckRange(off, n, size); err != nil {
		return nil, nil, err
	}
	const page = 4096
	first, end := off&^(page-1), (off+n+page-1)&^(page-1)
	var m *mapping
	var err error
	if cerr := b.raw.Control(func(fd uintptr) {
		var st unix.Cachestat_t
		err = unix.Cachestat(uint(fd), &unix.CachestatRange{Off: uint64(first), Len: uint64(end - first)}, &st, 0)
		if err == nil && st.Cache == uint64((end-first)/page) {
			m = b.maps.acquire(int(fd), off, n, size)
		}
	}); cerr != nil {
		return nil, nil, nil // closed: ReadAt reports it
	}
	switch {
	case err == unix.ENOSYS || err == unix.EOPNOTSUPP || err == unix.EPERM:
		b.canCachestat.Store(false)
		return nil, nil, nil
	case m == nil:
		return nil, nil, nil // not all cached, not mappable, or an error ReadAt reports
	}
	rel := off - (off/mapWindow)*mapWindow
	return m.data[rel : rel+n : rel+n], m.release, nil
}
