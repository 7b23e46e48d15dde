package wal

import (
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// layout describes where the records of a closed log lie on disk.
type layout struct {
	segs []segLayout
}

type segLayout struct {
	path    string
	base    uint64
	offsets []int64
	end     int64
}

// buildLog writes entries 1..n (term 1) in batches of the given sizes
// (cycled), closes the log and returns its layout.
func buildLog(t *testing.T, dir string, cfg Config, n uint64, batches ...uint64) layout {
	t.Helper()
	l := mustOpen(t, dir, cfg)
	for i, b := uint64(1), 0; i <= n; b++ {
		size := batches[b%len(batches)]
		to := min(i+size-1, n)
		if err := l.StoreLogs(makeEntries(i, to, 1)); err != nil {
			t.Fatal(err)
		}
		i = to + 1
	}
	var lay layout
	for _, s := range l.segs {
		lay.segs = append(lay.segs, segLayout{s.path, s.base, append([]int64(nil), s.offsets...), s.end})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return lay
}

// copyDir copies the flat directory src into a new temporary directory.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func term1(uint64) uint64 { return 1 }

// expectRecovered opens dir and checks it holds exactly 1..last, then checks
// that it can be appended to and reopened without resurrecting anything.
func expectRecovered(t *testing.T, dir string, last uint64) {
	t.Helper()
	l, err := Open(dir, testConfig())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	checkRange(t, l, 1, last, term1)
	// Append new entries with another term; they must come back exactly,
	// with no leftovers of the cut tail after them.
	if err := l.StoreLogs(makeEntries(last+1, last+3, 2)); err != nil {
		t.Fatal(err)
	}
	l.Close()
	l = mustOpen(t, dir, testConfig())
	defer l.Close()
	checkRange(t, l, 1, last+3, func(i uint64) uint64 {
		if i > last {
			return 2
		}
		return 1
	})
}

func expectCorrupt(t *testing.T, dir string) {
	t.Helper()
	l, err := Open(dir, testConfig())
	if err == nil {
		l.Close()
		t.Fatal("Open succeeded on a corrupt log")
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open: %v, want ErrCorrupt", err)
	}
}

func lastRecord(lay layout) (path string, start, end int64) {
	s := lay.segs[len(lay.segs)-1]
	return s.path, s.offsets[len(s.offsets)-1], s.end
}

func TestTornTailEveryOffset(t *testing.T) {
	src := t.TempDir()
	// 31 entries in single-entry batches: the last record (index 31,
	// 31%11 = 9 → 31 bytes of data) is small, so every offset is tried.
	lay := buildLog(t, src, testConfig(), 31, 1)
	path, start, end := lastRecord(lay)
	for cut := start; cut < end; cut++ {
		dir := copyDir(t, src)
		p := filepath.Join(dir, filepath.Base(path))
		if err := os.Truncate(p, cut); err != nil {
			t.Fatal(err)
		}
		t.Logf("cut at %d", cut)
		expectRecovered(t, dir, 30)
	}
}

func TestTornTailLargeRecord(t *testing.T) {
	src := t.TempDir()
	// Index 7 carries 70 KiB, written zero-copy into an oversized segment.
	lay := buildLog(t, src, testConfig(), 7, 1)
	path, start, end := lastRecord(lay)
	for cut := start; cut < end; cut += 997 {
		dir := copyDir(t, src)
		if err := os.Truncate(filepath.Join(dir, filepath.Base(path)), cut); err != nil {
			t.Fatal(err)
		}
		expectRecovered(t, dir, 6)
	}
}

func flipBit(t *testing.T, path string, off int64, bit uint) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 1 << bit
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

func TestBitFlipLastRecord(t *testing.T) {
	src := t.TempDir()
	lay := buildLog(t, src, testConfig(), 31, 1)
	path, start, end := lastRecord(lay)
	rng := rand.New(rand.NewSource(1))
	for off := start; off < end; off++ {
		dir := copyDir(t, src)
		flipBit(t, filepath.Join(dir, filepath.Base(path)), off, uint(rng.Intn(8)))
		expectRecovered(t, dir, 30)
	}
}

func TestBitFlipLastRecordOfMultiEntryBatch(t *testing.T) {
	src := t.TempDir()
	// Batches of 4: the last batch is 29..32; damaging 32 keeps 29..31.
	lay := buildLog(t, src, testConfig(), 32, 4)
	path, start, end := lastRecord(lay)
	for off := start; off < end; off += 3 {
		dir := copyDir(t, src)
		flipBit(t, filepath.Join(dir, filepath.Base(path)), off, 3)
		expectRecovered(t, dir, 31)
	}
}

func TestGarbageAfterTail(t *testing.T) {
	src := t.TempDir()
	lay := buildLog(t, src, testConfig(), 31, 3)
	path, _, end := lastRecord(lay)
	rng := rand.New(rand.NewSource(2))
	cases := map[string][]byte{
		"zeros":       make([]byte, 4096),
		"random":      func() []byte { b := make([]byte, 5000); rng.Read(b); return b }(),
		"one byte":    {0x5a},
		"magic bytes": {0, 0, 0, 0, 0, 0, 0, 0, recMagic, 1, 2, 3},
	}
	for name, garbage := range cases {
		t.Run(name, func(t *testing.T) {
			dir := copyDir(t, src)
			f, err := os.OpenFile(filepath.Join(dir, filepath.Base(path)), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(garbage, end); err != nil {
				t.Fatal(err)
			}
			f.Close()
			expectRecovered(t, dir, 31)
		})
	}
	t.Run("appended beyond file end", func(t *testing.T) {
		dir := copyDir(t, src)
		p := filepath.Join(dir, filepath.Base(path))
		if err := os.Truncate(p, end); err != nil {
			t.Fatal(err)
		}
		f, _ := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		f.Write(make([]byte, 100))
		f.Write([]byte("garbage"))
		f.Close()
		expectRecovered(t, dir, 31)
	})
}

// TestTornBatchHole simulates power loss in the middle of the last batch: a
// record inside it never reached the disk (zeros) while later records of the
// same batch did. Recovery cuts at the hole.
func TestTornBatchHole(t *testing.T) {
	src := t.TempDir()
	lay := buildLog(t, src, testConfig(), 28, 4, 6) // last batch: 23..28
	s := lay.segs[len(lay.segs)-1]
	i := uint64(25) - s.base
	start, end := s.offsets[i], s.offsets[i+1]
	dir := copyDir(t, src)
	f, err := os.OpenFile(filepath.Join(dir, filepath.Base(s.path)), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(make([]byte, end-start), start)
	f.Close()
	expectRecovered(t, dir, 24)
}

func TestCorruptionInEarlierRecord(t *testing.T) {
	src := t.TempDir()
	lay := buildLog(t, src, testConfig(), 60, 1) // one entry per batch: every record but the last is followed by a later batch
	if len(lay.segs) < 2 {
		t.Fatalf("want several segments, got %d", len(lay.segs))
	}
	tail := lay.segs[len(lay.segs)-1]
	if len(tail.offsets) < 3 {
		t.Fatalf("tail segment holds %d records, want ≥ 3", len(tail.offsets))
	}
	sealed := lay.segs[0]
	cases := []struct {
		name string
		path string
		off  int64
	}{
		{"tail segment, first record header", tail.path, tail.offsets[0] + 17},
		{"tail segment, first record data", tail.path, tail.offsets[0] + recHeaderSize},
		{"tail segment, next to last record", tail.path, tail.offsets[len(tail.offsets)-2] + 20},
		{"sealed segment header", sealed.path, 16},
		{"sealed segment, first record", sealed.path, sealed.offsets[0] + 2},
		{"sealed segment, last record", sealed.path, sealed.offsets[len(sealed.offsets)-1] + 40},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyDir(t, src)
			flipBit(t, filepath.Join(dir, filepath.Base(c.path)), c.off, 1)
			expectCorrupt(t, dir)
		})
	}
	t.Run("missing middle segment", func(t *testing.T) {
		if len(lay.segs) < 3 {
			t.Skip("needs three segments")
		}
		dir := copyDir(t, src)
		os.Remove(filepath.Join(dir, filepath.Base(lay.segs[1].path)))
		expectCorrupt(t, dir)
	})
	t.Run("bad meta", func(t *testing.T) {
		dir := copyDir(t, src)
		os.WriteFile(filepath.Join(dir, metaName), []byte("nonsense"), 0o600)
		expectCorrupt(t, dir)
	})
}

// TestSealedPayloadCorruption damages a payload in a sealed segment: Open
// checks only the headers there (it reads one block per record, not the
// whole log), and GetLog reports the damage when the entry is read.
func TestSealedPayloadCorruption(t *testing.T) {
	src := t.TempDir()
	lay := buildLog(t, src, testConfig(), 60, 1)
	if len(lay.segs) < 2 {
		t.Fatalf("want several segments, got %d", len(lay.segs))
	}
	sealed := lay.segs[0]
	idx := sealed.base
	for len(makeEntry(idx, 1).Data) == 0 {
		idx++
	}
	if idx > sealed.base+uint64(len(sealed.offsets))-1 {
		t.Fatal("no entry with data in the sealed segment")
	}
	dir := copyDir(t, src)
	flipBit(t, filepath.Join(dir, filepath.Base(sealed.path)), sealed.offsets[idx-sealed.base]+recHeaderSize, 3)
	l := mustOpen(t, dir, testConfig())
	defer l.Close()
	var e raft.Log
	if err := l.GetLog(idx, &e); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("GetLog(%d) of the damaged entry = %v, want ErrCorrupt", idx, err)
	}
	if err := l.GetLog(idx+1, &e); err != nil {
		t.Fatalf("GetLog(%d) next to the damaged entry: %v", idx+1, err)
	}
}

// TestGetLogDetectsCorruption damages a record after Open indexed it.
func TestGetLogDetectsCorruption(t *testing.T) {
	dir := t.TempDir()
	lay := buildLog(t, dir, testConfig(), 20, 2)
	l := mustOpen(t, dir, testConfig())
	defer l.Close()
	s := lay.segs[0]
	flipBit(t, s.path, s.offsets[1]+recHeaderSize, 0)
	var e raft.Log
	if err := l.GetLog(s.base+1, &e); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("GetLog = %v, want ErrCorrupt", err)
	}
}

func TestLeftoverFilesRemoved(t *testing.T) {
	dir := t.TempDir()
	buildLog(t, dir, testConfig(), 10, 2)
	for _, n := range []string{"7.spare", metaTmpName} {
		os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o600)
	}
	// An empty segment (renamed spare whose first batch never landed).
	os.WriteFile(filepath.Join(dir, segName(11, 42)), make([]byte, 8192), 0o600)
	expectRecovered(t, dir, 10)
	for _, n := range []string{"7.spare", metaTmpName} {
		if _, err := os.Stat(filepath.Join(dir, n)); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", n, err)
		}
	}
}

func TestLocked(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, testConfig())
	defer l.Close()
	if _, err := Open(dir, testConfig()); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
}

func TestClosed(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testConfig())
	l.Close()
	var e raft.Log
	for name, err := range map[string]error{
		"StoreLogs":   l.StoreLogs(makeEntries(1, 1, 1)),
		"GetLog":      l.GetLog(1, &e),
		"DeleteRange": l.DeleteRange(1, 1),
		"FirstIndex":  func() error { _, err := l.FirstIndex(); return err }(),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := Config{SegmentSize: 1000, InlineThreshold: -1}
	err := bad.Validate()
	for _, field := range []string{"SegmentSize", "InlineThreshold"} {
		if err == nil || !contains(err.Error(), field) {
			t.Errorf("Validate(%+v) = %v, want a complaint about %s", bad, err, field)
		}
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func countFiles(t *testing.T, dir, pattern string) int {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, pattern))
	if err != nil {
		t.Fatal(err)
	}
	return len(m)
}

// storeBy4 stores entries from..to of term in batches of four.
func storeBy4(t *testing.T, l *Log, from, to, term uint64) {
	t.Helper()
	for i := from; i <= to; i += 4 {
		if err := l.StoreLogs(makeEntries(i, i+3, term)); err != nil {
			t.Fatal(err)
		}
	}
}

// termAfter300 is the term of entry i in the logs of TestRecycledSegments
// and TestReleaseSpares: 1 up to 300, then 2.
func termAfter300(i uint64) uint64 {
	if i > 300 {
		return 2
	}
	return 1
}

// TestRecycledSegments checks that compacted segments are reused for new
// segments, that their stale records never show up, and that a recycled
// file renamed into service whose first batch never landed is dropped.
func TestRecycledSegments(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, testConfig())
	if err := l.StoreLogs(makeEntries(1, 100, 1)); err != nil {
		t.Fatal(err)
	}
	storeBy4(t, l, 101, 300, 1)
	if len(l.segs) < 4 {
		t.Fatalf("want ≥ 4 segments, have %d", len(l.segs))
	}
	cut := l.segs[3].base // drops three segments: two recycled, one deleted
	if err := l.DeleteRange(1, cut-1); err != nil {
		t.Fatal(err)
	}
	if n := countFiles(t, dir, "r*.spare"); n != testConfig().MaxRecycled {
		t.Fatalf("%d recycled spares, want %d", n, testConfig().MaxRecycled)
	}
	storeBy4(t, l, 301, 600, 2)
	if n := countFiles(t, dir, "r*.spare"); n != 0 {
		t.Fatalf("%d recycled spares left after writing several segments", n)
	}
	checkRange(t, l, cut, 600, termAfter300)
	l.Close()

	// Reopen: the last segment is a recycled file; its stale tail is cut.
	l = mustOpen(t, dir, testConfig())
	checkRange(t, l, cut, 600, termAfter300)
	old := l.segs[0]
	oldPath, oldSalt := old.path, old.salt
	l.Close()

	// A recycled file renamed into service as the next segment, whose
	// first batch never reached the disk: it holds another segment's
	// header and records.
	b, err := os.ReadFile(oldPath)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, segName(601, oldSalt+1)), b, 0o600)
	expectRecoveredFrom(t, dir, cut, 600, termAfter300)
}

// TestReleaseSpares checks that ReleaseSpares deletes the recycled segments
// beyond what it is asked to keep, leaves the log intact, and that the log
// then goes on with fresh segments.
func TestReleaseSpares(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	cfg.MaxRecycled = 3
	l := mustOpen(t, dir, cfg)
	storeBy4(t, l, 1, 300, 1)
	if len(l.segs) < 5 {
		t.Fatalf("want ≥ 5 segments, have %d", len(l.segs))
	}
	cut := l.segs[3].base // drops three segments, all recycled
	if err := l.DeleteRange(1, cut-1); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ keep, released, left int }{
		{5, 0, 3}, {1, 2, 1}, {1, 0, 1}, {-1, 1, 0},
	} {
		n, err := l.ReleaseSpares(tc.keep)
		if err != nil || n != tc.released {
			t.Fatalf("ReleaseSpares(%d) = %d, %v; want %d released", tc.keep, n, err, tc.released)
		}
		if got := countFiles(t, dir, "r*.spare"); got != tc.left {
			t.Fatalf("after ReleaseSpares(%d): %d recycled spares on disk, want %d", tc.keep, got, tc.left)
		}
	}
	storeBy4(t, l, 301, 600, 2)
	checkRange(t, l, cut, 600, termAfter300)
	l.Close()
	if _, err := l.ReleaseSpares(0); !errors.Is(err, ErrClosed) {
		t.Fatalf("ReleaseSpares on a closed log: %v, want ErrClosed", err)
	}
	expectRecoveredFrom(t, dir, cut, 600, termAfter300)
}

// expectRecoveredFrom is expectRecovered for a log starting at first with
// the given terms.
func expectRecoveredFrom(t *testing.T, dir string, first, last uint64, term func(uint64) uint64) {
	t.Helper()
	l := mustOpen(t, dir, testConfig())
	checkRange(t, l, first, last, term)
	if err := l.StoreLogs(makeEntries(last+1, last+3, 9)); err != nil {
		t.Fatal(err)
	}
	l.Close()
	l = mustOpen(t, dir, testConfig())
	defer l.Close()
	checkRange(t, l, first, last+3, func(i uint64) uint64 {
		if i > last {
			return 9
		}
		return term(i)
	})
}

// TestRoom checks Config.Room: once it refuses, the log cannot start a
// fresh segment, the append that needed one fails and the log fails
// (Failed), and what it stored before reads back after a reopen; recycled
// segments need no room.
func TestRoom(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	var full atomic.Bool
	errFull := errors.New("disk reserve reached")
	cfg.Room = func(n int64) error {
		if n != cfg.SegmentSize {
			t.Errorf("room asked for %d bytes, want %d", n, cfg.SegmentSize)
		}
		if full.Load() {
			return errFull
		}
		return nil
	}
	l := mustOpen(t, dir, cfg)
	storeBy4(t, l, 1, 40, 1)
	full.Store(true)
	var last uint64 = 40
	var err error
	for i := uint64(41); i < 2000 && err == nil; i += 4 {
		if err = l.StoreLogs(makeEntries(i, i+3, 1)); err == nil {
			last = i + 3
		}
	}
	if !errors.Is(err, errFull) {
		t.Fatalf("appends past the room: %v, want the room's error", err)
	}
	select {
	case <-l.Failed():
	default:
		t.Fatal("the log did not fail")
	}
	l.Close()
	expectRecoveredFrom(t, dir, 1, last, func(uint64) uint64 { return 1 })

	// Recycled segments are reused without asking.
	cfg.MaxRecycled = 8
	l = mustOpen(t, dir, cfg)
	defer l.Close()
	cut := l.segs[len(l.segs)-1].base
	if err := l.DeleteRange(1, cut-1); err != nil {
		t.Fatal(err)
	}
	recycled := countFiles(t, dir, "r*.spare")
	if recycled == 0 {
		t.Fatal("no recycled segment to reuse")
	}
	// Each batch starts at most one segment: stop with one left.
	for i := last + 4; countFiles(t, dir, "r*.spare") > 1; i += 4 {
		if err := l.StoreLogs(makeEntries(i, i+3, 2)); err != nil {
			t.Fatalf("append into recycled segments with no room: %v", err)
		}
	}
}

// TestRoomStaleSpare checks that a fresh spare prepared while the room
// refused does not fail the log once there is room again: the taker waits
// for the next one, prepared after.
func TestRoomStaleSpare(t *testing.T) {
	cfg := testConfig()
	cfg.MaxRecycled = 0 // fresh segments only, none deleted
	var full atomic.Bool
	var calls, refused atomic.Int32
	cfg.Room = func(int64) error {
		calls.Add(1)
		if full.Load() {
			refused.Add(1)
			return errors.New("disk reserve reached")
		}
		return nil
	}
	l := mustOpen(t, t.TempDir(), cfg)
	defer l.Close()
	next := uint64(1)
	// appendUntil appends batches until the log has n segments.
	appendUntil := func(n int) {
		t.Helper()
		for len(l.segs) < n {
			if err := l.StoreLogs(makeEntries(next, next+3, 1)); err != nil {
				t.Fatalf("append at %d: %v", next, err)
			}
			next += 4
		}
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s", what)
			}
			time.Sleep(time.Millisecond)
		}
	}
	appendUntil(2)
	// The spare waiting to be taken was allowed: one room call per spare.
	waitFor("the waiting spare's room check", func() bool { return int(calls.Load()) == len(l.segs)+1 })
	full.Store(true)
	appendUntil(len(l.segs) + 1) // takes it; the next one is refused
	waitFor("a refused spare", func() bool { return refused.Load() > 0 })
	full.Store(false)
	appendUntil(len(l.segs) + 2) // the refused spare is passed over
	select {
	case <-l.Failed():
		t.Fatalf("the log failed: %v", l.Err())
	default:
	}
}

// TestLogType checks LogType against GetLog's entries, on disk, pending
// and missing, and on a damaged record header.
func TestLogType(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, testConfig())
	defer l.Close()
	if err := l.StoreLogs(makeEntries(1, 40, 1)); err != nil {
		t.Fatal(err)
	}
	if err := l.StoreLogsNoSync(makeEntries(41, 45, 1)); err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 45; i++ {
		got, err := l.LogType(i)
		if want := makeEntry(i, 1).Type; err != nil || got != want {
			t.Fatalf("LogType(%d) = %v, %v; want %v", i, got, err, want)
		}
	}
	if _, err := l.LogType(46); err != raft.ErrLogNotFound {
		t.Fatalf("LogType past the end = %v, want ErrLogNotFound", err)
	}
	if err := l.SyncLogs(); err != nil {
		t.Fatal(err)
	}
	s := l.segs[0]
	flipBit(t, s.path, s.offsets[2]+20, 0)
	if _, err := l.LogType(s.base + 2); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("LogType of a damaged header = %v, want ErrCorrupt", err)
	}
}
