package raftlog

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-project/tandem/volume"
)

func TestLease(t *testing.T) {
	l := newLease(100 * time.Millisecond)
	if l.valid() {
		t.Fatal("a new lease is valid")
	}
	start := time.Now()
	l.renew(start)
	if !l.valid() || l.remaining() > 100*time.Millisecond {
		t.Fatalf("renewed lease: valid %v remaining %v", l.valid(), l.remaining())
	}
	// An older renewal never shortens the lease.
	l.renew(start.Add(-time.Second))
	if !l.valid() {
		t.Fatal("an older renewal shortened the lease")
	}
	l.drop()
	if l.valid() {
		t.Fatal("dropped lease still valid")
	}
	// A renewal from a message sent long ago gives nothing.
	l.renew(time.Now().Add(-200 * time.Millisecond))
	if l.valid() {
		t.Fatal("a lease from a stale start is valid")
	}
	l.renew(time.Now())
	time.Sleep(120 * time.Millisecond)
	if l.valid() {
		t.Fatal("lease outlived its duration")
	}
}

func TestBatcherCoalesces(t *testing.T) {
	var entries, ops atomic.Int64
	release := make(chan struct{})
	b := &batcher{maxInflight: 2, maxBytes: 64 << 10, apply: func(data []byte) ([]uint64, error) {
		<-release
		entries.Add(1)
		return nil, decodeEntry(data, func(op) error { ops.Add(1); return nil })
	}}
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.submit(&op{kind: opWrite, off: int64(i) * 4096, n: 4096, data: make([]byte, 4096)}); err != nil {
				t.Error(err)
			}
		}()
	}
	time.Sleep(50 * time.Millisecond) // let everything queue behind the first two entries
	close(release)
	wg.Wait()
	if ops.Load() != 100 {
		t.Fatalf("%d ops applied, want 100", ops.Load())
	}
	// 2 entries in flight first, then batches of at most 15 ops (64 KiB).
	if n := entries.Load(); n > 12 || n < 8 {
		t.Fatalf("%d entries for 100 ops of 4 KiB with 64 KiB entries", n)
	}
}

func TestBatcherReportsErrorsToEveryOp(t *testing.T) {
	boom := errors.New("boom")
	b := &batcher{maxInflight: 1, maxBytes: 1 << 20, apply: func([]byte) ([]uint64, error) { return nil, boom }}
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.submit(&op{kind: opZero, n: 1}); !errors.Is(err, boom) {
				t.Errorf("submit: %v", err)
			}
		}()
	}
	wg.Wait()
	// An op larger than maxBytes still goes, alone.
	b.apply = func([]byte) ([]uint64, error) { return nil, nil }
	if err := b.submit(&op{kind: opWrite, n: 2 << 20, data: make([]byte, 2<<20)}); err != nil {
		t.Fatal(err)
	}
}

// TestBatcherReportsFencedOps checks that only the ops the FSM refused
// get ErrFenced, and the others of the same entry succeed.
func TestBatcherReportsFencedOps(t *testing.T) {
	b := &batcher{maxInflight: 1, maxBytes: 1 << 20, apply: func(data []byte) ([]uint64, error) {
		var fenced []uint64
		err := decodeEntry(data, func(o op) error {
			if o.epoch == 1 {
				fenced = append(fenced, o.id)
			}
			return nil
		})
		return fenced, err
	}}
	for _, tt := range []struct {
		epoch uint64
		want  error
	}{{1, ErrFenced}, {2, nil}} {
		err := b.submit(&op{kind: opZero, n: 1, id: 10 + tt.epoch, epoch: tt.epoch})
		if !errors.Is(err, tt.want) {
			t.Errorf("epoch %d: %v, want %v", tt.epoch, err, tt.want)
		}
	}
	if !errors.Is(ErrFenced, volume.ErrFenced) {
		t.Error("ErrFenced does not match volume.ErrFenced")
	}
}
