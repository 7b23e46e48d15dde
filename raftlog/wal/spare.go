package wal

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// spareSuffix names segment files prepared ahead of use. They hold no log
// data; Open deletes any it finds.
const spareSuffix = ".spare"

// zeroChunk is the unit of zero-filling; zeroSyncEvery is how many bytes of
// zeros the preparer writes between fdatasyncs.
const (
	zeroChunk     = 1 << 20
	zeroSyncEvery = 4 << 20
)

// spare is a prepared, not yet used segment file: either fresh (created,
// fallocated, fdatasync'd, and zero-filled from the start up to zeroed) or
// recycled (a compacted segment renamed to a spare name, its old records
// sealed with oldSalt).
type spare struct {
	path    string
	f       file
	size    int64
	zeroed  int64
	oldSalt uint32
	err     error
}

// sparer keeps one fresh spare segment ready in a background goroutine, so
// that starting a segment costs a rename and a directory fsync, and holds
// recycled segments.
//
// Pre-zeroing is adaptive: a fresh spare is usable as soon as it is
// fallocated; while it waits to be taken, the goroutine fills it with zeros
// from the start at no more than zeroRate bytes per second (so that appends
// later overwrite written blocks and fdatasync has no extents to convert).
// A spare taken early is simply less zeroed: under a light load (where sync
// latency matters) segments are fully zeroed before use, under a heavy
// streaming load the zeroing never takes more than zeroRate of the disk's
// bandwidth. The goroutine never touches a spare after handing it over.
type sparer struct {
	fs          fileSystem
	dir         string
	size        int64
	zeroRate    int64
	maxRecycled int
	room        func(n int64) error // Config.Room

	ch   chan spare // unbuffered: handing over a spare stops its zeroing
	stop chan struct{}
	wg   sync.WaitGroup

	// recycled holds compacted segments ready for reuse; used first.
	// Guarded by the log's writeMu (recycle, take and close run under it).
	recycled []spare
	seq      int
}

func newSparer(fs fileSystem, dir string, cfg Config) *sparer {
	s := &sparer{fs: fs, dir: dir, size: cfg.SegmentSize, zeroRate: cfg.PreZeroRate, maxRecycled: cfg.MaxRecycled, room: cfg.Room,
		ch: make(chan spare), stop: make(chan struct{})}
	s.wg.Add(1)
	go s.run()
	return s
}

func (s *sparer) run() {
	defer s.wg.Done()
	var zeros []byte
	if s.zeroRate > 0 {
		zeros = make([]byte, zeroChunk)
	}
	for seq := 0; ; seq++ {
		sp := s.prepare(filepath.Join(s.dir, fmt.Sprintf("%d%s", seq, spareSuffix)))
		if !s.offer(&sp, zeros) {
			if sp.err == nil {
				sp.f.Close()
				s.fs.Remove(sp.path)
			}
			return
		}
	}
}

// offer hands sp over, zero-filling it at zeroRate until it is taken. It
// returns false if the sparer was stopped first.
func (s *sparer) offer(sp *spare, zeros []byte) bool {
	var tick <-chan time.Time
	var timer *time.Timer
	if zeros != nil && sp.err == nil {
		timer = time.NewTimer(0)
		defer timer.Stop()
		tick = timer.C
	}
	pace := time.Duration(float64(time.Second) * float64(zeroChunk) / float64(max(s.zeroRate, 1)))
	for {
		select {
		case s.ch <- *sp:
			return true
		case <-s.stop:
			return false
		case <-tick:
			if err := s.zeroNext(sp, zeros); err != nil || sp.zeroed >= sp.size {
				// Done, or zeroing failed: the spare is still usable
				// (fallocated space reads as zeros), only slower.
				tick = nil
				continue
			}
			timer.Reset(pace)
		}
	}
}

// zeroNext writes the next chunk of zeros into sp, with an fdatasync every
// zeroSyncEvery bytes and at the end.
func (s *sparer) zeroNext(sp *spare, zeros []byte) error {
	n := min(int64(len(zeros)), sp.size-sp.zeroed)
	if err := sp.f.WriteV([][]byte{zeros[:n]}, sp.zeroed); err != nil {
		return err
	}
	sp.zeroed += n
	if sp.zeroed%zeroSyncEvery == 0 || sp.zeroed >= sp.size {
		return sp.f.Datasync()
	}
	return nil
}

// prepare creates one fresh spare: fallocated and fdatasync'd, so that its
// allocation is durable before it holds data. On failure the partial file is
// removed and the error returned in the result, which fails the log that
// takes it (startSegment).
func (s *sparer) prepare(path string) spare {
	if s.room != nil {
		if err := s.room(s.size); err != nil {
			return spare{err: fmt.Errorf("wal: prepare spare segment %s: %w", path, err)}
		}
	}
	f, err := s.fs.Create(path)
	if err != nil {
		return spare{err: fmt.Errorf("wal: create spare segment: %w", err)}
	}
	fail := func(err error) spare {
		f.Close()
		s.fs.Remove(path)
		return spare{err: fmt.Errorf("wal: prepare spare segment %s: %w", path, err)}
	}
	if err := f.Allocate(s.size); err != nil {
		// Filesystems without fallocate get a sparse file of the right
		// size; appends then allocate as they go. Any other error (a full
		// disk) fails the spare.
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, errors.ErrUnsupported) {
			return fail(err)
		}
		if err := f.Truncate(s.size); err != nil {
			return fail(err)
		}
	}
	if err := f.Datasync(); err != nil {
		return fail(err)
	}
	return spare{path: path, f: f, size: s.size}
}

// take returns a recycled segment if there is one, else the next fresh
// spare, waiting for it if needed. A spare that could not be prepared
// (prepared ahead, perhaps long ago: the disk may have room again) is
// followed by one more, prepared after it was taken, whose outcome
// stands.
func (s *sparer) take() (spare, error) {
	if n := len(s.recycled); n > 0 {
		sp := s.recycled[n-1]
		s.recycled = s.recycled[:n-1]
		return sp, nil
	}
	for retry := true; ; retry = false {
		select {
		case sp := <-s.ch:
			if sp.err == nil || !retry {
				return sp, sp.err
			}
		case <-s.stop:
			return spare{}, ErrClosed
		}
	}
}

// recycle renames a dead (compacted, no longer indexed) segment to a spare
// name and keeps it for reuse. It returns false, leaving seg alone, when
// enough segments are kept already or the rename fails; the caller then
// deletes seg. The caller fsyncs the directory.
func (s *sparer) recycle(seg *segment) bool {
	if len(s.recycled) >= s.maxRecycled {
		return false
	}
	size, err := seg.f.Size()
	if err != nil {
		return false
	}
	s.seq++
	path := filepath.Join(s.dir, fmt.Sprintf("r%d%s", s.seq, spareSuffix))
	if err := s.fs.Rename(seg.path, path); err != nil {
		return false
	}
	s.recycled = append(s.recycled, spare{path: path, f: seg.f, size: size, oldSalt: seg.salt})
	return true
}

// release closes and removes recycled segments beyond keep, the oldest
// first (the newest are taken first). Spares are never part of the log, so
// no directory sync is needed: one left by a crash is removed by Open.
func (s *sparer) release(keep int) (int, error) {
	n := len(s.recycled) - max(keep, 0)
	if n <= 0 {
		return 0, nil
	}
	var errs []error
	for _, sp := range s.recycled[:n] {
		sp.f.Close()
		if err := s.fs.Remove(sp.path); err != nil {
			errs = append(errs, err)
		}
	}
	s.recycled = slices.Delete(s.recycled, 0, n)
	return n, errors.Join(errs...)
}

// close stops the goroutine and removes the spares.
func (s *sparer) close() {
	close(s.stop)
	s.wg.Wait()
	for _, sp := range s.recycled {
		sp.f.Close()
		s.fs.Remove(sp.path)
	}
	s.recycled = nil
}

// isSpareName reports whether name is a spare segment file.
func isSpareName(name string) bool { return strings.HasSuffix(name, spareSuffix) }
