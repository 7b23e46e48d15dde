package agent

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/tandem-project/tandem/raftlog"
	"github.com/tandem-project/tandem/volume"
)

// A volume's export changes between this host's replica and a proxy when a
// replica moves here or away. Its NBD clients keep their connections: the
// export's backend is a handoff, which sends each request to the current
// target; a new target takes the requests that start after the switch,
// and the old one is closed only once those it had in flight returned.

// handoffDrainTimeout bounds the wait for the old target's requests in
// flight (they may wait for a leader up to the stall timeout).
const handoffDrainTimeout = time.Minute

// target is one backend a handoff sends requests to.
type target struct {
	b volume.Backend
	// writer returns b's view whose writes come under a writer epoch.
	writer func(epoch uint64) volume.Backend
	// refs counts the requests in flight on b.
	refs atomic.Int64
}

// targetOf returns the target of a replica or a proxy.
func targetOf(b volume.Backend) *target {
	t := &target{b: b}
	switch x := b.(type) {
	case *raftlog.Volume:
		t.writer = func(e uint64) volume.Backend { return x.Writer(e) }
	case *raftlog.Proxy:
		t.writer = func(e uint64) volume.Backend { return x.Writer(e) }
	}
	return t
}

// handoff is the backend of a volume's export: it forwards each request
// to its current target. It implements volume.Backend and
// volume.NowaitReader.
type handoff struct {
	cur atomic.Pointer[target]
}

func newHandoff(b volume.Backend) *handoff {
	h := &handoff{}
	h.cur.Store(targetOf(b))
	return h
}

// backend returns the current target's backend.
func (h *handoff) backend() volume.Backend { return h.cur.Load().b }

// switchTo makes b the target and returns a function that waits (up to
// handoffDrainTimeout) until the old target's requests in flight have
// returned, reporting whether they did. Switching to the current target
// changes nothing.
func (h *handoff) switchTo(b volume.Backend) (drain func() bool) {
	old := h.cur.Load()
	if old.b == b {
		return func() bool { return true }
	}
	h.cur.Store(targetOf(b))
	return func() bool {
		deadline := time.Now().Add(handoffDrainTimeout)
		for old.refs.Load() > 0 {
			if time.Now().After(deadline) {
				return false
			}
			time.Sleep(time.Millisecond)
		}
		return true
	}
}

// acquire returns the current target with a request counted on it; the
// caller calls release. A target counted after the switch away from it
// is let go and the new one taken, so that a drain that saw no request
// in flight sees none later.
func (h *handoff) acquire() *target {
	for {
		t := h.cur.Load()
		t.refs.Add(1)
		if h.cur.Load() == t {
			return t
		}
		t.refs.Add(-1)
	}
}

func (t *target) release() { t.refs.Add(-1) }

// Writer returns the view of h whose writes come under writer epoch
// epoch (nil if the target takes no epoch).
func (h *handoff) Writer(epoch uint64) volume.Backend {
	if h.cur.Load().writer == nil {
		return nil
	}
	return &epochView{h: h, epoch: epoch}
}

// Size implements volume.Backend.
func (h *handoff) Size() int64 { return h.backend().Size() }

// Caps implements volume.Backend (a replica and a proxy of a volume have
// the same).
func (h *handoff) Caps() volume.Caps { return h.backend().Caps() }

// ReadAt implements volume.Backend.
func (h *handoff) ReadAt(ctx context.Context, p []byte, off int64) error {
	t := h.acquire()
	defer t.release()
	return t.b.ReadAt(ctx, p, off)
}

// ReadAtNowait implements volume.NowaitReader.
func (h *handoff) ReadAtNowait(p []byte, off int64) (bool, error) {
	t := h.acquire()
	defer t.release()
	if nr, ok := t.b.(volume.NowaitReader); ok {
		return nr.ReadAtNowait(p, off)
	}
	return false, nil
}

// WriteAt implements volume.Backend.
func (h *handoff) WriteAt(ctx context.Context, p []byte, off int64, flags volume.Flags) error {
	t := h.acquire()
	defer t.release()
	return t.b.WriteAt(ctx, p, off, flags)
}

// Zero implements volume.Backend.
func (h *handoff) Zero(ctx context.Context, off, n int64, flags volume.Flags) error {
	t := h.acquire()
	defer t.release()
	return t.b.Zero(ctx, off, n, flags)
}

// Trim implements volume.Backend.
func (h *handoff) Trim(ctx context.Context, off, n int64, flags volume.Flags) error {
	t := h.acquire()
	defer t.release()
	return t.b.Trim(ctx, off, n, flags)
}

// Flush implements volume.Backend.
func (h *handoff) Flush(ctx context.Context) error {
	t := h.acquire()
	defer t.release()
	return t.b.Flush(ctx)
}

// Cache implements volume.Backend.
func (h *handoff) Cache(ctx context.Context, off, n int64) error {
	t := h.acquire()
	defer t.release()
	return t.b.Cache(ctx, off, n)
}

// Extents implements volume.Backend.
func (h *handoff) Extents(ctx context.Context, off, n int64, max int) ([]volume.Extent, error) {
	t := h.acquire()
	defer t.release()
	return t.b.Extents(ctx, off, n, max)
}

// Close implements volume.Backend: the targets are closed by their owners.
func (h *handoff) Close() error { return nil }

// epochView is a handoff's view whose writes come under a writer epoch:
// each request goes to the current target's view for that epoch.
type epochView struct {
	h     *handoff
	epoch uint64
	// view caches the current target's epoch view.
	view atomic.Pointer[targetView]
}

type targetView struct {
	t *target
	b volume.Backend
}

// acquire returns the current target, counted, and its view for the
// epoch.
func (e *epochView) acquire() (*target, volume.Backend) {
	t := e.h.acquire()
	if v := e.view.Load(); v != nil && v.t == t {
		return t, v.b
	}
	var b volume.Backend = t.b
	if t.writer != nil {
		b = t.writer(e.epoch)
	}
	e.view.Store(&targetView{t: t, b: b})
	return t, b
}

// Size implements volume.Backend.
func (e *epochView) Size() int64 { return e.h.Size() }

// Caps implements volume.Backend.
func (e *epochView) Caps() volume.Caps { return e.h.Caps() }

// ReadAt implements volume.Backend.
func (e *epochView) ReadAt(ctx context.Context, p []byte, off int64) error {
	t, b := e.acquire()
	defer t.release()
	return b.ReadAt(ctx, p, off)
}

// ReadAtNowait implements volume.NowaitReader.
func (e *epochView) ReadAtNowait(p []byte, off int64) (bool, error) {
	t, b := e.acquire()
	defer t.release()
	if nr, ok := b.(volume.NowaitReader); ok {
		return nr.ReadAtNowait(p, off)
	}
	return false, nil
}

// WriteAt implements volume.Backend.
func (e *epochView) WriteAt(ctx context.Context, p []byte, off int64, flags volume.Flags) error {
	t, b := e.acquire()
	defer t.release()
	return b.WriteAt(ctx, p, off, flags)
}

// Zero implements volume.Backend.
func (e *epochView) Zero(ctx context.Context, off, n int64, flags volume.Flags) error {
	t, b := e.acquire()
	defer t.release()
	return b.Zero(ctx, off, n, flags)
}

// Trim implements volume.Backend.
func (e *epochView) Trim(ctx context.Context, off, n int64, flags volume.Flags) error {
	t, b := e.acquire()
	defer t.release()
	return b.Trim(ctx, off, n, flags)
}

// Flush implements volume.Backend.
func (e *epochView) Flush(ctx context.Context) error {
	t, b := e.acquire()
	defer t.release()
	return b.Flush(ctx)
}

// Cache implements volume.Backend.
func (e *epochView) Cache(ctx context.Context, off, n int64) error {
	t, b := e.acquire()
	defer t.release()
	return b.Cache(ctx, off, n)
}

// Extents implements volume.Backend.
func (e *epochView) Extents(ctx context.Context, off, n int64, max int) ([]volume.Extent, error) {
	t, b := e.acquire()
	defer t.release()
	return b.Extents(ctx, off, n, max)
}

// Close implements volume.Backend.
func (e *epochView) Close() error { return nil }
