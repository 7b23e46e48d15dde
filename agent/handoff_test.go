package agent

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tandem-project/tandem/volume"
)

// fakeBackend records the writes it gets; writes block while gate is
// held.
type fakeBackend struct {
	volume.Backend // nil: only the methods below are called
	name           string
	gate           sync.RWMutex
	mu             sync.Mutex
	writes         int
}

func (f *fakeBackend) WriteAt(ctx context.Context, p []byte, off int64, flags volume.Flags) error {
	f.gate.RLock()
	defer f.gate.RUnlock()
	f.mu.Lock()
	f.writes++
	f.mu.Unlock()
	return nil
}

func (f *fakeBackend) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes
}

// TestHandoffSwitch checks that a switch sends new requests to the new
// target at once and that its drain waits for the old target's requests in
// flight, and only for them.
func TestHandoffSwitch(t *testing.T) {
	ctx := context.Background()
	a, b := &fakeBackend{name: "a"}, &fakeBackend{name: "b"}
	h := newHandoff(a)
	if err := h.WriteAt(ctx, nil, 0, 0); err != nil || a.count() != 1 {
		t.Fatalf("write to a: %v, a has %d", err, a.count())
	}
	// A write in flight on a.
	a.gate.Lock()
	done := make(chan struct{})
	go func() {
		_ = h.WriteAt(ctx, nil, 0, 0)
		close(done)
	}()
	for h.cur.Load().refs.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	drain := h.switchTo(b)
	if err := h.WriteAt(ctx, nil, 0, 0); err != nil || b.count() != 1 {
		t.Fatalf("write after the switch: %v, b has %d", err, b.count())
	}
	drained := make(chan bool)
	go func() { drained <- drain() }()
	select {
	case <-drained:
		t.Fatal("the drain returned with a request in flight on the old target")
	case <-time.After(50 * time.Millisecond):
	}
	a.gate.Unlock()
	<-done
	if ok := <-drained; !ok {
		t.Fatal("the drain timed out")
	}
	if a.count() != 2 || b.count() != 1 {
		t.Fatalf("writes: a %d (want 2), b %d (want 1)", a.count(), b.count())
	}
	// Switching to the current target changes nothing.
	if !h.switchTo(b)() || h.backend() != b {
		t.Fatal("switching to the current target")
	}
}
