package wal

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Segment appends bypass the page cache where the file system allows it
// (Config.DirectIO): a segment file being written gets a second descriptor
// opened with O_DIRECT (through /proc/self/fd, so it is the same file
// whatever it is renamed to), closed again once the log has moved on to
// the next segment (DoneWriting). WriteV stages what it is given into an
// aligned buffer and writes whole aligned blocks through it. A log is written once and read
// back rarely (a lagging follower, a restart), so caching it buys little
// and costs much: the kernel's copy of every byte into fresh page-cache
// pages, which under streaming writes took most of the host's CPU
// (docs/raft-log-store.md, "Direct I/O"), and the memory those pages take
// from the volume files' cache. The staging copy is a memmove into one
// warm buffer.
//
// A write that starts inside a block rewrites the block's beginning with
// the bytes it already holds (the end of the previous batch, remembered
// from the last write or read back), exactly as page-cache writeback of
// that page would; the rest of its last block is written as zeros, which
// past the end of the log is what recovery expects to find or treats as
// the end (see the package documentation). fdatasync on the file then
// flushes the device's cache and any extent changes, as for buffered
// writes.

const (
	// directAlign is the alignment of O_DIRECT offsets, lengths and
	// buffer addresses: 4 KiB, a multiple of every common logical block
	// and file-system block size.
	directAlign = 4096
	// directChunk is the size of the largest staging buffer, so the most
	// one O_DIRECT pwrite carries.
	directChunk = 4 << 20
)

// stagePool hands out aligned staging buffers, each sized for the writes
// it serves: a power of two between minStage and directChunk. Each Log has
// its own, so a busy log reuses one buffer (a log of small batches a small
// one) and an idle log's is freed by the garbage collector.
type stagePool struct{ p sync.Pool }

// minStage is the smallest staging buffer.
const minStage = 16 << 10

// get returns a staging buffer for a write of n bytes, counting the part
// of the first block it rewrites: the pooled one if it holds n (or
// directChunk), else a new one.
func (s *stagePool) get(n int) *[]byte {
	want := minStage
	for want < n && want < directChunk {
		want *= 2
	}
	if b, ok := s.p.Get().(*[]byte); ok && len(*b) >= want {
		return b
	}
	raw := make([]byte, want+directAlign)
	skip := int(-uintptr(unsafe.Pointer(&raw[0])) & (directAlign - 1))
	b := raw[skip : skip+want : skip+want]
	return &b
}

func (s *stagePool) put(b *[]byte) { s.p.Put(b) }

// directWriter is the O_DIRECT side of an osFile.
type directWriter struct {
	fd int
	// tail holds the bytes [tailOff, tailOff+tailLen) of the file as last
	// written, tailOff aligned: the beginning of the block the next append
	// starts in. Valid only while tailOK.
	tail    [directAlign]byte
	tailOff int64
	tailLen int
	tailOK  bool
}

// openDirect opens f's file again for O_DIRECT writes; it returns nil when
// the file system refuses O_DIRECT (or /proc is not mounted), and the file
// is then written through the page cache.
func openDirect(f *osFile) *directWriter {
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", f.fd), unix.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	return &directWriter{fd: fd}
}

// errDirectUnsupported reports that an O_DIRECT write was refused for its
// alignment (EINVAL): the caller then writes through the page cache.
var errDirectUnsupported = errors.New("wal: O_DIRECT write refused")

// writeV writes the concatenation of bufs at off in whole aligned blocks.
// It fails with errDirectUnsupported if the file system refuses an
// O_DIRECT write for its alignment; rewriting the range through the page
// cache is then correct whatever part of it was written.
func (d *directWriter) writeV(f *osFile, stage *stagePool, bufs [][]byte, off int64) error {
	start := off &^ (directAlign - 1)
	n := int(off - start) // bytes staged
	size := n
	for _, b := range bufs {
		size += len(b)
	}
	sp := stage.get(size)
	defer stage.put(sp)
	st := *sp
	tailOK := d.tailOK
	d.tailOK = false // until this write has fully succeeded
	if n > 0 {
		if tailOK && d.tailOff == start && d.tailLen >= n {
			copy(st, d.tail[:n])
		} else if err := f.readPrefix(st[:n], start); err != nil {
			return err
		}
	}
	pos := start // file offset of st[0]
	for _, b := range bufs {
		for len(b) > 0 {
			c := copy(st[n:], b)
			n += c
			b = b[c:]
			if n == len(st) {
				if err := d.pwrite(f, st, pos); err != nil {
					return err
				}
				pos += int64(n)
				n = 0
			}
		}
	}
	end := pos + int64(n)
	if n > 0 {
		m := (n + directAlign - 1) &^ (directAlign - 1)
		clear(st[n:m])
		if err := d.pwrite(f, st[:m], pos); err != nil {
			return err
		}
	}
	d.tailOff = end &^ (directAlign - 1)
	d.tailLen = int(end - d.tailOff)
	copy(d.tail[:d.tailLen], st[d.tailOff-pos:])
	d.tailOK = true
	return nil
}

// pwrite writes b, aligned, at the aligned offset off.
func (d *directWriter) pwrite(f *osFile, b []byte, off int64) error {
	for len(b) > 0 {
		w, err := unix.Pwrite(d.fd, b, off)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EINVAL:
			return errDirectUnsupported
		case err != nil:
			return &os.PathError{Op: "pwrite", Path: f.name, Err: err}
		case w <= 0 || w%directAlign != 0:
			// A short O_DIRECT write that is not block-aligned cannot be
			// continued with O_DIRECT.
			return &os.PathError{Op: "pwrite", Path: f.name, Err: io.ErrShortWrite}
		}
		b = b[w:]
		off += int64(w)
	}
	return nil
}

func (d *directWriter) close() error { return unix.Close(d.fd) }

// readPrefix reads p at off through the page cache; bytes past the end of
// the file read as zeros.
func (f *osFile) readPrefix(p []byte, off int64) error {
	n, err := f.readFull(p, off)
	clear(p[n:])
	return err
}
