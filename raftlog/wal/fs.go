package wal

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fileSystem is the seam under the log: every file operation the log makes
// goes through it, so tests can inject failures. osFS is the real one.
type fileSystem interface {
	// Create creates a new file, failing if it exists.
	Create(path string) (file, error)
	// Open opens an existing file for reading and writing.
	Open(path string) (file, error)
	Rename(oldPath, newPath string) error
	Remove(path string) error
	// SyncDir fsyncs a directory so that creations, renames and removals
	// of its entries are durable.
	SyncDir(dir string) error
	// List returns the names of the entries of dir.
	List(dir string) ([]string, error)
	ReadFile(path string) ([]byte, error)
	// WriteFile creates or replaces path with b and fdatasyncs it (the
	// directory is not synced).
	WriteFile(path string, b []byte) error
	// Lock takes an exclusive advisory lock on dir; Close releases it.
	Lock(dir string) (io.Closer, error)
}

// file is an open file. Methods may be called concurrently except where the
// log serializes them (all mutations happen under Log.writeMu).
type file interface {
	// WriteV writes the concatenation of bufs at off (pwritev), retrying
	// short writes; it returns nil only if every byte was written.
	WriteV(bufs [][]byte, off int64) error
	// ReadAt reads len(p) bytes at off; a short read returns io.ErrUnexpectedEOF.
	ReadAt(p []byte, off int64) error
	Datasync() error
	Truncate(size int64) error
	// Allocate reserves [0, size) (fallocate mode 0); a file system
	// without fallocate reports an error wrapping unix.EOPNOTSUPP or
	// errors.ErrUnsupported, which callers may ignore.
	Allocate(size int64) error
	Size() (int64, error)
	// Map maps the whole file read-only; call unmap when done. A file of
	// size 0 maps to an empty slice.
	Map() (b []byte, unmap func() error, err error)
	// DoneWriting tells the file that the log has stopped writing to it
	// for now (it moved on to the next segment), so it can release what
	// writing needs; writing again is allowed.
	DoneWriting()
	Close() error
}

// osFS is the Linux implementation. With stage set, files are written
// with O_DIRECT where the file system allows it (direct.go); without, through
// the page cache.
type osFS struct{ stage *stagePool }

type osFile struct {
	fd   int
	name string
	iov  []unix.Iovec // scratch for WriteV; guarded by the log's writeMu
	// stage is set when writes are to use O_DIRECT; dio is the O_DIRECT
	// descriptor while the file is being written. Guarded like iov.
	stage *stagePool
	dio   *directWriter
}

// newOSFile wraps fd.
func (fs osFS) newOSFile(fd int, path string) *osFile {
	return &osFile{fd: fd, name: path, stage: fs.stage}
}

// maxIOV is the kernel's IOV_MAX.
const maxIOV = 1024

func (fs osFS) Create(path string) (file, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, &os.PathError{Op: "create", Path: path, Err: err}
	}
	return fs.newOSFile(fd, path), nil
}

func (fs osFS) Open(path string) (file, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return fs.newOSFile(fd, path), nil
}

func (osFS) Rename(oldPath, newPath string) error { return os.Rename(oldPath, newPath) }
func (osFS) Remove(path string) error             { return os.Remove(path) }

func (osFS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

func (osFS) List(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	return names, nil
}

func (osFS) ReadFile(path string) ([]byte, error) { return os.ReadFile(path) }

func (osFS) WriteFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err = f.Write(b); err == nil {
		err = unix.Fdatasync(int(f.Fd()))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

type dirLock struct{ f *os.File }

func (l dirLock) Close() error { return l.f.Close() } // closing drops the flock

func (osFS) Lock(dir string) (io.Closer, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, dir)
		}
		return nil, err
	}
	return dirLock{f}, nil
}

func (f *osFile) WriteV(bufs [][]byte, off int64) error {
	if f.stage != nil && f.dio == nil {
		if f.dio = openDirect(f); f.dio == nil {
			f.stage = nil // refused: the page cache from now on
		}
	}
	if f.dio != nil {
		err := f.dio.writeV(f, f.stage, bufs, off)
		if !errors.Is(err, errDirectUnsupported) {
			return err
		}
		// The file system took the O_DIRECT open but not the write: use
		// the page cache for this file from now on.
		f.DoneWriting()
		f.stage = nil
	}
	iov := f.iov[:0]
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		v := unix.Iovec{Base: &b[0]}
		v.SetLen(len(b))
		iov = append(iov, v)
	}
	f.iov = iov
	// Drop the references to the callers' buffers once written so the
	// scratch slice does not keep them alive.
	defer clear(iov)
	for len(iov) > 0 {
		n := min(len(iov), maxIOV)
		// pwritev(fd, iov, iovcnt, pos_l, pos_h): on 64-bit kernels the
		// whole offset goes in pos_l.
		w, _, errno := unix.Syscall6(unix.SYS_PWRITEV, uintptr(f.fd),
			uintptr(unsafe.Pointer(&iov[0])), uintptr(n), uintptr(off), 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return &os.PathError{Op: "pwritev", Path: f.name, Err: errno}
		}
		if w == 0 {
			return &os.PathError{Op: "pwritev", Path: f.name, Err: io.ErrShortWrite}
		}
		off += int64(w)
		// Advance past what was written; a short write may end inside an iovec.
		for w > 0 {
			if l := uintptr(iov[0].Len); w >= l {
				w -= l
				iov = iov[1:]
				continue
			}
			iov[0].Base = (*byte)(unsafe.Add(unsafe.Pointer(iov[0].Base), w))
			iov[0].SetLen(int(uintptr(iov[0].Len) - w))
			w = 0
		}
	}
	return nil
}

func (f *osFile) ReadAt(p []byte, off int64) error {
	n, err := f.readFull(p, off)
	if err == nil && n < len(p) {
		err = &os.PathError{Op: "pread", Path: f.name, Err: io.ErrUnexpectedEOF}
	}
	return err
}

// readFull reads p at off, retrying short reads, until p is full or the
// file ends; it returns how many bytes it read.
func (f *osFile) readFull(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n, err := unix.Pread(f.fd, p[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, &os.PathError{Op: "pread", Path: f.name, Err: err}
		}
		if n == 0 {
			break
		}
		done += n
	}
	return done, nil
}

func (f *osFile) Datasync() error {
	if err := unix.Fdatasync(f.fd); err != nil {
		return &os.PathError{Op: "fdatasync", Path: f.name, Err: err}
	}
	return nil
}

func (f *osFile) Truncate(size int64) error {
	f.DoneWriting() // the remembered tail no longer holds
	if err := unix.Ftruncate(f.fd, size); err != nil {
		return &os.PathError{Op: "ftruncate", Path: f.name, Err: err}
	}
	return nil
}

func (f *osFile) Allocate(size int64) error {
	if err := unix.Fallocate(f.fd, 0, 0, size); err != nil {
		return &os.PathError{Op: "fallocate", Path: f.name, Err: err}
	}
	return nil
}

func (f *osFile) Size() (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return 0, &os.PathError{Op: "fstat", Path: f.name, Err: err}
	}
	return st.Size, nil
}

func (f *osFile) Map() ([]byte, func() error, error) {
	size, err := f.Size()
	if err != nil {
		return nil, nil, err
	}
	if size == 0 {
		return nil, func() error { return nil }, nil
	}
	if int64(int(size)) != size {
		return nil, nil, fmt.Errorf("mmap %s: file too large", f.name)
	}
	b, err := unix.Mmap(f.fd, 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, &os.PathError{Op: "mmap", Path: f.name, Err: err}
	}
	_ = unix.Madvise(b, unix.MADV_SEQUENTIAL)
	return b, func() error { return unix.Munmap(b) }, nil
}

// DoneWriting closes the O_DIRECT descriptor, if any; a later write opens
// it again.
func (f *osFile) DoneWriting() {
	if f.dio != nil {
		f.dio.close()
		f.dio = nil
	}
}

func (f *osFile) Close() error {
	f.DoneWriting()
	if err := unix.Close(f.fd); err != nil {
		return &os.PathError{Op: "close", Path: f.name, Err: err}
	}
	return nil
}
