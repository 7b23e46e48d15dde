package blockfile

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tandem-project/tandem/volume"
)

func open(t *testing.T, size int64) *File {
	t.Helper()
	b, err := Open(filepath.Join(t.TempDir(), "vol.img"), Options{Size: size, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func extents(t *testing.T, b *File, off, n int64) []volume.Extent {
	t.Helper()
	e, err := b.Extents(context.Background(), off, n, 1000)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestReadWrite(t *testing.T) {
	ctx := context.Background()
	b := open(t, 1<<20)
	for _, flags := range []volume.Flags{0, volume.FUA} {
		p := bytes.Repeat([]byte("tandem"), 1000)
		if err := b.WriteAt(ctx, p, 12345, flags); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(p))
		if err := b.ReadAt(ctx, got, 12345); err != nil || !bytes.Equal(got, p) {
			t.Fatalf("flags %v: read back: %v", flags, err)
		}
	}
	if err := b.WriteAt(ctx, []byte{1}, 1<<20, 0); !errors.Is(err, volume.ErrOutOfRange) {
		t.Fatalf("write past end: %v", err)
	}
	if err := b.ReadAt(ctx, make([]byte, 2), 1<<20-1); !errors.Is(err, volume.ErrOutOfRange) {
		t.Fatalf("read past end: %v", err)
	}
}

func TestNewVolumeIsOneHole(t *testing.T) {
	b := open(t, 64<<20)
	e := extents(t, b, 0, 64<<20)
	if len(e) != 1 || e[0].Length != 64<<20 || e[0].Flags != volume.Hole|volume.Zero {
		t.Fatalf("extents of a new volume: %v", e)
	}
	got := make([]byte, 4096)
	if err := b.ReadAt(context.Background(), got, 1<<20); err != nil || !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatalf("a new volume does not read as zeroes: %v", err)
	}
}

func TestZeroTrimAndExtents(t *testing.T) {
	ctx := context.Background()
	const mb = 1 << 20
	b := open(t, 8*mb)
	if err := b.WriteAt(ctx, bytes.Repeat([]byte{7}, 4*mb), 0, 0); err != nil {
		t.Fatal(err)
	}
	// Punch [1M, 2M), zero in place [2M, 3M), trim [3M, 3M+64K).
	if err := b.Zero(ctx, mb, mb, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Zero(ctx, 2*mb, mb, volume.NoHole|volume.FUA); err != nil {
		t.Fatal(err)
	}
	if err := b.Trim(ctx, 3*mb, 64<<10, 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 2*mb)
	if err := b.ReadAt(ctx, got, mb); err != nil || !bytes.Equal(got, make([]byte, 2*mb)) {
		t.Fatalf("zeroed ranges do not read as zeroes: %v", err)
	}
	e := extents(t, b, 0, 8*mb)
	want := []volume.Extent{
		{Length: mb}, // data
		{Length: mb, Flags: volume.Hole | volume.Zero}, // punched
		{Length: mb}, // zeroed in place: still allocated
		{Length: 64 << 10, Flags: volume.Hole | volume.Zero},
		{Length: mb - 64<<10},
		{Length: 4 * mb, Flags: volume.Hole | volume.Zero},
	}
	if len(e) != len(want) {
		t.Fatalf("extents %v, want %v", e, want)
	}
	for i := range want {
		if e[i] != want[i] {
			t.Fatalf("extent %d: %v, want %v (all %v)", i, e[i], want[i], e)
		}
	}
	// A bounded query stops at max and never runs past the range.
	e, _ = b.Extents(ctx, mb/2, mb, 1)
	if len(e) != 1 || e[0].Length != mb/2 || e[0].Flags != 0 {
		t.Fatalf("max=1 from the middle of data: %v", e)
	}
	e, _ = b.Extents(ctx, 5*mb, mb, 10)
	if len(e) != 1 || e[0].Length != mb {
		t.Fatalf("range inside the trailing hole: %v", e)
	}
	// FastZero succeeds: punching a hole is a metadata operation.
	if err := b.Zero(ctx, 0, mb, volume.FastZero); err != nil {
		t.Fatalf("fast zero: %v", err)
	}
}

func TestReadOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vol.img")
	w, err := Open(path, Options{Size: 1 << 20, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	w.WriteAt(context.Background(), []byte("hello"), 0, volume.FUA)
	w.Close()
	b, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	if !b.Caps().ReadOnly || b.Size() != 1<<20 {
		t.Fatalf("caps %+v size %d", b.Caps(), b.Size())
	}
	for name, err := range map[string]error{
		"write": b.WriteAt(ctx, []byte("x"), 0, 0),
		"zero":  b.Zero(ctx, 0, 1, 0),
		"trim":  b.Trim(ctx, 0, 1, 0),
	} {
		if !errors.Is(err, volume.ErrReadOnly) {
			t.Errorf("%s on read-only: %v", name, err)
		}
	}
	got := make([]byte, 5)
	if err := b.ReadAt(ctx, got, 0); err != nil || string(got) != "hello" {
		t.Fatalf("read %q %v", got, err)
	}
}

func TestOpenSizes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vol.img")
	if _, err := Open(path, Options{Size: 1 << 20}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("open without Create: %v", err)
	}
	b, err := Open(path, Options{Size: 1 << 20, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	b.WriteAt(context.Background(), []byte("keep"), 0, 0)
	b.Close()
	if _, err := Open(path, Options{Size: 1 << 19}); err == nil || !strings.Contains(err.Error(), "never shrink") {
		t.Fatalf("shrink: %v", err)
	}
	b, err = Open(path, Options{Size: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Size() != 2<<20 {
		t.Fatalf("size after grow %d", b.Size())
	}
	if err := b.Grow(4 << 20); err != nil || b.Size() != 4<<20 {
		t.Fatalf("Grow: %v size %d", err, b.Size())
	}
	if err := b.Grow(1 << 20); err == nil {
		t.Fatal("Grow to a smaller size succeeded")
	}
	got := make([]byte, 4)
	if err := b.ReadAt(context.Background(), got, 0); err != nil || string(got) != "keep" {
		t.Fatalf("data after growing: %q %v", got, err)
	}
	if _, err := Open(dir, Options{}); err == nil {
		t.Fatal("opened a directory as a volume")
	}
}

func TestReadAtNowait(t *testing.T) {
	ctx := context.Background()
	b := open(t, 4<<20)
	p := bytes.Repeat([]byte{9}, 1<<20)
	if err := b.WriteAt(ctx, p, 0, 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1<<20)
	done, err := b.ReadAtNowait(got, 0)
	if err != nil || !done || !bytes.Equal(got, p) {
		t.Fatalf("cached read: done %v err %v", done, err)
	}
	// Evict the (now clean) pages: the non-blocking read must refuse.
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(b.f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	if done, _ := b.ReadAtNowait(got, 0); done {
		t.Skip("the kernel kept the pages cached after FADV_DONTNEED; cannot test the blocking case here")
	}
	if err := b.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("read after eviction: %v", err)
	}
}

func TestCloseTwice(t *testing.T) {
	b, err := Open(filepath.Join(t.TempDir(), "v"), Options{Size: 4096, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); !errors.Is(err, volume.ErrClosed) {
		t.Fatalf("second close: %v", err)
	}
}

// TestWriteback writes a range over cached data, starts and settles its
// writeback and reads it back.
func TestWriteback(t *testing.T) {
	ctx := context.Background()
	b := open(t, 1<<20)
	want := bytes.Repeat([]byte{1}, 1<<20)
	if err := b.WriteAt(ctx, want, 0, 0); err != nil {
		t.Fatal(err)
	}
	p := bytes.Repeat([]byte("tandem"), 10000)
	if err := b.WriteAt(ctx, p, 4096, 0); err != nil {
		t.Fatal(err)
	}
	copy(want[4096:], p)
	if err := b.StartWriteback(4096, int64(len(p))); err != nil {
		t.Fatal(err)
	}
	if err := b.SettleWriteback(0, 1<<20); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1<<20)
	if err := b.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read back differs")
	}
}

// TestLargeWrites checks writes that WriteAt splits into pieces of
// writeChunk: every byte lands where it belongs, at any alignment.
func TestLargeWrites(t *testing.T) {
	ctx := context.Background()
	b := open(t, 4<<20)
	for _, tc := range []struct{ off, n int64 }{
		{0, writeChunk}, {0, writeChunk + 1}, {4096, 1 << 20}, {12345, 3*writeChunk - 7}, {4<<20 - 2*writeChunk - 1, 2*writeChunk + 1},
	} {
		p := make([]byte, tc.n)
		for i := range p {
			p[i] = byte(int64(i)*7 + tc.off)
		}
		if err := b.WriteAt(ctx, p, tc.off, 0); err != nil {
			t.Fatalf("write %d at %d: %v", tc.n, tc.off, err)
		}
		got := make([]byte, tc.n)
		if err := b.ReadAt(ctx, got, tc.off); err != nil || !bytes.Equal(got, p) {
			t.Fatalf("write %d at %d: read back differs (%v)", tc.n, tc.off, err)
		}
	}
}

// dirtyPages returns how many of b's pages are dirty or under writeback
// (cachestat(2)); the test is skipped where the kernel lacks it.
func dirtyPages(t *testing.T, b *File) uint64 {
	t.Helper()
	var st unix.Cachestat_t
	if err := unix.Cachestat(uint(b.f.Fd()), &unix.CachestatRange{Off: 0, Len: uint64(b.Size())}, &st, 0); err != nil {
		t.Skipf("cachestat: %v", err)
	}
	return st.Dirty + st.Writeback
}

// TestFlushPaced checks that FlushPaced leaves no dirty page behind, and
// that a cancelled one stops before writing anything back.
func TestFlushPaced(t *testing.T) {
	b := open(t, 8<<20)
	p := bytes.Repeat([]byte("paced"), 8<<20/5)
	write := func() {
		t.Helper()
		if err := b.WriteAt(context.Background(), p, 0, 0); err != nil {
			t.Fatal(err)
		}
		if n := dirtyPages(t, b); n == 0 {
			t.Fatal("no dirty pages after writing 8 MiB")
		}
	}
	write()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.FlushPaced(ctx, 1<<20); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled flush: %v", err)
	}
	if n := dirtyPages(t, b); n == 0 {
		t.Fatal("a cancelled flush wrote the file back")
	}
	if err := b.FlushPaced(context.Background(), 1<<20); err != nil {
		t.Fatal(err)
	}
	if n := dirtyPages(t, b); n != 0 {
		t.Fatalf("%d pages dirty or under writeback after FlushPaced", n)
	}
	got := make([]byte, len(p))
	if err := b.ReadAt(context.Background(), got, 0); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("read back differs (%v)", err)
	}
}

// TestDiscard checks that Discard closes without writing the file back,
// where Close writes it back.
func TestDiscard(t *testing.T) {
	for _, discard := range []bool{true, false} {
		path := filepath.Join(t.TempDir(), "vol.img")
		b, err := Open(path, Options{Size: 4 << 20, Create: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.WriteAt(context.Background(), bytes.Repeat([]byte{7}, 4<<20), 0, 0); err != nil {
			t.Fatal(err)
		}
		closeFile := b.Close
		if discard {
			closeFile = b.Discard
		}
		if err := closeFile(); err != nil {
			t.Fatal(err)
		}
		if err := closeFile(); !errors.Is(err, volume.ErrClosed) {
			t.Fatalf("second close (discard %v): %v", discard, err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		var st unix.Cachestat_t
		err = unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{Len: 4 << 20}, &st, 0)
		f.Close()
		if err != nil {
			t.Skipf("cachestat: %v", err)
		}
		if dirty := st.Dirty + st.Writeback; discard != (dirty > 0) {
			t.Errorf("discard %v: %d pages dirty or under writeback after closing", discard, dirty)
		}
	}
}
