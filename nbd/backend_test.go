package nbd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/tandem-project/tandem/volume"
)

// memBackend is an in-memory volume.Backend for the server's unit tests. It
// records the flags it was called with, can fail or block chosen calls, and
// panics on any range the server should have refused at the edge.
type memBackend struct {
	mu       sync.Mutex
	data     []byte
	caps     volume.Caps
	calls    []string                   // "op off len flags"
	failRead error                      // returned by ReadAt when set
	failAll  error                      // returned by every call when set
	notFast  bool                       // Zero with FastZero returns ErrNotFast
	gate     func(op string, off int64) // called before each op, may block
	flushes  int
}

func newMem(size int) *memBackend {
	return &memBackend{data: make([]byte, size), caps: volume.Caps{Trim: true, Extents: true, MultiConn: true}}
}

func (m *memBackend) check(op string, off, n int64, flags volume.Flags) error {
	if err := volume.CheckRange(off, n, int64(len(m.data))); err != nil {
		panic(fmt.Sprintf("server passed an invalid range to %s: %v", op, err))
	}
	if m.gate != nil {
		m.gate(op, off)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, fmt.Sprintf("%s %d %d %d", op, off, n, flags))
	return m.failAll
}

func (m *memBackend) Size() int64       { return int64(len(m.data)) }
func (m *memBackend) Caps() volume.Caps { return m.caps }

func (m *memBackend) ReadAt(_ context.Context, p []byte, off int64) error {
	if err := m.check("read", off, int64(len(p)), 0); err != nil {
		return err
	}
	if m.failRead != nil {
		return m.failRead
	}
	m.mu.Lock()
	copy(p, m.data[off:])
	m.mu.Unlock()
	return nil
}

func (m *memBackend) WriteAt(_ context.Context, p []byte, off int64, flags volume.Flags) error {
	if err := m.check("write", off, int64(len(p)), flags); err != nil {
		return err
	}
	if m.caps.ReadOnly {
		return volume.ErrReadOnly
	}
	m.mu.Lock()
	copy(m.data[off:], p)
	m.mu.Unlock()
	return nil
}

func (m *memBackend) Zero(_ context.Context, off, n int64, flags volume.Flags) error {
	if err := m.check("zero", off, n, flags); err != nil {
		return err
	}
	if flags.Has(volume.FastZero) && m.notFast {
		return volume.ErrNotFast
	}
	m.mu.Lock()
	clear(m.data[off : off+n])
	m.mu.Unlock()
	return nil
}

func (m *memBackend) Trim(_ context.Context, off, n int64, flags volume.Flags) error {
	return m.check("trim", off, n, flags)
}

func (m *memBackend) Flush(context.Context) error {
	if err := m.check("flush", 0, 0, 0); err != nil {
		return err
	}
	m.mu.Lock()
	m.flushes++
	m.mu.Unlock()
	return nil
}

func (m *memBackend) Cache(_ context.Context, off, n int64) error { return m.check("cache", off, n, 0) }

// Extents reports 4 KiB blocks that are all zero as holes.
func (m *memBackend) Extents(_ context.Context, off, n int64, max int) ([]volume.Extent, error) {
	if err := m.check("extents", off, n, 0); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []volume.Extent
	for pos := off; pos < off+n; {
		end := min((pos/4096+1)*4096, off+n)
		flags := volume.Hole | volume.Zero
		for _, b := range m.data[pos:end] {
			if b != 0 {
				flags = 0
				break
			}
		}
		if k := len(out) - 1; k >= 0 && out[k].Flags == flags {
			out[k].Length += end - pos
		} else if len(out) == max {
			break
		} else {
			out = append(out, volume.Extent{Length: end - pos, Flags: flags})
		}
		pos = end
	}
	return out, nil
}

func (m *memBackend) Close() error { return nil }

func (m *memBackend) setFail(err error) {
	m.mu.Lock()
	m.failAll = err
	m.mu.Unlock()
}

func (m *memBackend) bytes(off, n int) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.data[off:off+n]...)
}

func (m *memBackend) callLog() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.calls...)
}

var errDisk = errors.New("simulated disk failure")

// nowaitMem adds volume.NowaitReader to memBackend; every other read claims
// it would block, so both the inline and the goroutine paths run.
type nowaitMem struct {
	*memBackend
	n atomic.Int64
}

func (m *nowaitMem) ReadAtNowait(p []byte, off int64) (bool, error) {
	if m.n.Add(1)%2 == 0 {
		return false, nil
	}
	return true, m.ReadAt(context.Background(), p, off)
}

// mappedMem adds volume.MappedReader to memBackend: every third view is
// refused (so that both paths run), the others are copies of the range,
// counted until released.
type mappedMem struct {
	*memBackend
	calls, given, released atomic.Int64
	small                  atomic.Int64 // views asked for at most smallPayload bytes
}

func (m *mappedMem) ReadMapped(off, n int64) ([]byte, func(), error) {
	if n <= smallPayload {
		m.small.Add(1)
	}
	if m.calls.Add(1)%3 == 0 {
		return nil, nil, nil
	}
	p := make([]byte, n)
	if err := m.ReadAt(context.Background(), p, off); err != nil {
		return nil, nil, err
	}
	m.given.Add(1)
	var once atomic.Bool
	return p, func() {
		if !once.CompareAndSwap(false, true) {
			panic("view released twice")
		}
		m.released.Add(1)
	}, nil
}
