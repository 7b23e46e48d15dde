package blockfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tandem-project/tandem/volume"
)

// readMapped calls ReadMapped and fails the test on an error.
func readMapped(t *testing.T, b *File, off, n int64) ([]byte, func()) {
	t.Helper()
	view, release, err := b.ReadMapped(off, n)
	if err != nil {
		t.Fatalf("ReadMapped(%d, %d): %v", off, n, err)
	}
	if (view == nil) != (release == nil) {
		t.Fatalf("ReadMapped(%d, %d): view %v but release %v", off, n, view != nil, release != nil)
	}
	return view, release
}

func TestReadMapped(t *testing.T) {
	ctx := context.Background()
	b := open(t, 3*mapWindow)
	if !b.canCachestat.Load() {
		t.Skip("no cachestat(2) here")
	}
	p := bytes.Repeat([]byte("tandem!!"), 128<<10) // 1 MiB
	off := int64(mapWindow + 4096)
	if err := b.WriteAt(ctx, p, off, 0); err != nil {
		t.Fatal(err)
	}
	view, release := readMapped(t, b, off, int64(len(p)))
	if view == nil {
		t.Fatal("no view of a range just written (cached)")
	}
	if !bytes.Equal(view, p) {
		t.Fatal("the view does not show the file's bytes")
	}
	if cap(view) != len(p) {
		t.Fatalf("view capacity %d, want %d: appending could reach past the range", cap(view), len(p))
	}

	// The view is the page cache itself: a later write shows in it.
	q := bytes.Repeat([]byte{7}, 4096)
	if err := b.WriteAt(ctx, q, off, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(view[:4096], q) {
		t.Fatal("a write after ReadMapped does not show in the view")
	}

	// Closing the file leaves the view valid until it is released.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(view[4096:], p[4096:]) {
		t.Fatal("the view changed after Close")
	}
	release()
	if view, _, err := b.ReadMapped(off, 4096); view != nil || err != nil {
		t.Fatalf("ReadMapped after Close = view %v, %v; want none", view != nil, err)
	}
}

func TestReadMappedRefuses(t *testing.T) {
	ctx := context.Background()
	b := open(t, 2*mapWindow)
	if !b.canCachestat.Load() {
		t.Skip("no cachestat(2) here")
	}
	if err := b.WriteAt(ctx, bytes.Repeat([]byte{1}, 2<<20), mapWindow-(1<<20), 0); err != nil {
		t.Fatal(err)
	}
	// Across a window boundary: refused, ReadAt does it.
	if view, _ := readMapped(t, b, mapWindow-4096, 8192); view != nil {
		t.Fatal("a view across two windows")
	}
	// Out of range: the range check's error.
	if _, _, err := b.ReadMapped(2*mapWindow-4096, 8192); !errors.Is(err, volume.ErrOutOfRange) {
		t.Fatalf("ReadMapped past the end: %v, want ErrOutOfRange", err)
	}
	// Not cached (a hole never read): refused.
	if view, _ := readMapped(t, b, mapWindow+(8<<20), 1<<20); view != nil {
		t.Fatal("a view of a range not in the page cache")
	}
	// Evicted: refused, unless the kernel keeps the pages.
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(b.f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	if view, release := readMapped(t, b, mapWindow, 1<<20); view != nil {
		release()
		t.Log("the kernel kept the pages cached after FADV_DONTNEED; the evicted case is not tested")
	}
}

// TestReadMappedWindows reads from more windows than are kept mapped: the
// least recently used are unmapped once no view uses them, and a window
// mapped before the file grew is mapped again to reach the new bytes.
func TestReadMappedWindows(t *testing.T) {
	ctx := context.Background()
	const windows = mapWindows + 3
	b := open(t, windows*mapWindow-mapWindow/2) // the last window is short
	if !b.canCachestat.Load() {
		t.Skip("no cachestat(2) here")
	}
	page := func(i int) []byte { return bytes.Repeat([]byte{byte(i + 1)}, 4096) }
	at := func(i int) int64 { return int64(i)*mapWindow + 8192 }
	for i := range windows {
		if err := b.WriteAt(ctx, page(i), at(i), 0); err != nil {
			t.Fatal(err)
		}
	}
	held, release0 := readMapped(t, b, at(0), 4096) // kept across eviction
	if held == nil {
		t.Fatal("no view of window 0")
	}
	first := b.maps.byIdx[0]
	for i := 1; i < windows; i++ {
		view, release := readMapped(t, b, at(i), 4096)
		if view == nil || !bytes.Equal(view, page(i)) {
			t.Fatalf("window %d: view %v", i, view != nil)
		}
		release()
	}
	if n := len(b.maps.byIdx); n != mapWindows {
		t.Fatalf("%d windows mapped, want at most %d", n, mapWindows)
	}
	if _, ok := b.maps.byIdx[0]; ok {
		t.Fatal("window 0, the least recently used, is still mapped")
	}
	if r := first.refs.Load(); r != 1 {
		t.Fatalf("evicted window 0 holds %d references, want 1 (the view's)", r)
	}
	if !bytes.Equal(held, page(0)) {
		t.Fatal("a view of an evicted window changed")
	}
	release0()
	if r := first.refs.Load(); r != 0 {
		t.Fatalf("window 0 holds %d references after its last view, want 0 (unmapped)", r)
	}

	// Grow the file: the short last window is mapped again in full.
	last := windows - 1
	if err := b.Grow(windows * mapWindow); err != nil {
		t.Fatal(err)
	}
	tail := int64(windows)*mapWindow - 4096
	if err := b.WriteAt(ctx, page(99), tail, 0); err != nil {
		t.Fatal(err)
	}
	old := b.maps.byIdx[int64(last)]
	view, release := readMapped(t, b, tail, 4096)
	if view == nil || !bytes.Equal(view, page(99)) {
		t.Fatal("no view of the grown part of the last window")
	}
	release()
	if b.maps.byIdx[int64(last)] == old || old.refs.Load() != 0 {
		t.Fatal("the short window was not replaced and unmapped")
	}
}

// TestReadMappedConcurrent takes and releases views of more windows than
// are kept mapped from several goroutines, while the file is closed under
// them: every view reads its bytes until released (run with -race).
func TestReadMappedConcurrent(t *testing.T) {
	ctx := context.Background()
	const windows = mapWindows + 4
	b := open(t, windows*mapWindow)
	if !b.canCachestat.Load() {
		t.Skip("no cachestat(2) here")
	}
	for i := range windows {
		if err := b.WriteAt(ctx, bytes.Repeat([]byte{byte(i + 1)}, 4096), int64(i)*mapWindow, 0); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := range 4 {
		wg.Go(func() {
			for j := range 300 {
				i := (g*7 + j*5) % windows
				view, release, err := b.ReadMapped(int64(i)*mapWindow, 4096)
				if err != nil {
					errs <- err
					return
				}
				if view == nil {
					continue // closed
				}
				if !bytes.Equal(view, bytes.Repeat([]byte{byte(i + 1)}, 4096)) {
					errs <- fmt.Errorf("window %d: wrong bytes", i)
				}
				release()
			}
		})
		if g == 2 {
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
