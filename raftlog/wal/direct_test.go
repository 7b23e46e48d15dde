package wal

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"unsafe"
)

// directStep is one operation on a file in TestDirectWrites.
type directStep struct {
	off, n   int64 // write n bytes at off
	reopen   bool  // close and reopen the file first (the tail is forgotten)
	done     bool  // call DoneWriting first (the same)
	truncate int64 // if > 0, truncate the file to this size first
}

// TestDirectWrites checks that O_DIRECT appends leave the file holding what
// was written, with the staged prefix of a block taken from the last write,
// from the file after a reopen or truncation, or as zeros past its end, and
// zeros after each write up to its block's end.
func TestDirectWrites(t *testing.T) {
	const k = 1 << 10
	cases := []struct {
		name  string
		steps []directStep
	}{
		{"aligned appends", []directStep{{off: 0, n: 4 * k}, {off: 4 * k, n: 8 * k}, {off: 12 * k, n: 64 * k}}},
		{"unaligned appends", []directStep{{off: 0, n: 48}, {off: 48, n: 100}, {off: 148, n: 4000}, {off: 4148, n: 5000}, {off: 9148, n: 7}}},
		{"append across staging chunks", []directStep{{off: 0, n: 100}, {off: 100, n: directChunk + 5000}, {off: directChunk + 5100, n: 2 * directChunk}}},
		{"reopened mid-block", []directStep{{off: 0, n: 5000}, {reopen: true, off: 5000, n: 300}, {off: 5300, n: 10}}},
		{"written again after DoneWriting", []directStep{{off: 0, n: 5000}, {done: true, off: 5000, n: 300}, {off: 5300, n: 10}}},
		{"truncated mid-block", []directStep{{off: 0, n: 9000}, {truncate: 6000, off: 6000, n: 1000}}},
		{"past the end of the file", []directStep{{off: 0, n: 100}, {truncate: 100, off: 8192 + 3000, n: 2000}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fs := osFS{stage: new(stagePool)}
			path := filepath.Join(t.TempDir(), "seg")
			// The file starts as a recycled segment would: full of old bytes.
			model := bytes.Repeat([]byte{0xEE}, 64*k)
			if err := os.WriteFile(path, model, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := fs.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { f.Close() }()
			if d := openDirect(f.(*osFile)); d == nil {
				t.Skip("the test directory's file system refuses O_DIRECT")
			} else {
				d.close()
			}
			for i, s := range tc.steps {
				if s.reopen {
					f.Close()
					if f, err = fs.Open(path); err != nil {
						t.Fatal(err)
					}
				}
				if s.done {
					f.DoneWriting()
				}
				if s.truncate > 0 {
					if err := f.Truncate(s.truncate); err != nil {
						t.Fatal(err)
					}
					model = model[:s.truncate]
				}
				data := make([]byte, s.n)
				for j := range data {
					data[j] = byte(i*31 + j*7 + 1)
				}
				// Split the data over several buffers, as store does.
				third := s.n / 3
				if err := f.WriteV([][]byte{data[:third], nil, data[third : 2*third], data[2*third:]}, s.off); err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				end := s.off + s.n
				blockEnd := (end + directAlign - 1) &^ (directAlign - 1)
				if int64(len(model)) < blockEnd {
					model = append(model, make([]byte, blockEnd-int64(len(model)))...)
				}
				copy(model[s.off:], data)
				clear(model[end:blockEnd])
				if f.(*osFile).dio == nil {
					t.Fatalf("step %d: fell back to the page cache", i)
				}
				got, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, model) {
					t.Fatalf("step %d: file (%d bytes) differs from what was written (%d bytes) at offset %d", i, len(got), len(model), firstDiff(got, model))
				}
			}
		})
	}
}

// TestDirectFallback checks that a file whose O_DIRECT write is refused for
// its alignment is written through the page cache instead, correctly.
func TestDirectFallback(t *testing.T) {
	fs := osFS{stage: new(stagePool)}
	path := filepath.Join(t.TempDir(), "seg")
	f, err := fs.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	of := f.(*osFile)
	if d := openDirect(of); d == nil {
		t.Skip("the test directory's file system refuses O_DIRECT")
	} else {
		d.close()
	}
	// A misaligned staging buffer: O_DIRECT refuses it with EINVAL.
	raw := make([]byte, directChunk+directAlign+1)
	skip := int(-uintptr(unsafe.Pointer(&raw[0]))&(directAlign-1)) + 1
	bad := raw[skip : skip+directChunk]
	of.stage = &stagePool{p: sync.Pool{New: func() any { return &bad }}}
	data := bytes.Repeat([]byte("tandem"), 1000)
	if err := f.WriteV([][]byte{data}, 100); err != nil {
		t.Fatal(err)
	}
	if of.dio != nil || of.stage != nil {
		t.Fatal("still writing with O_DIRECT after a refused write")
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := append(make([]byte, 100), data...)
	if !bytes.Equal(got, want) {
		t.Fatalf("file differs from what was written at offset %d", firstDiff(got, want))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestStagePoolSizes checks that staging buffers are aligned and sized for
// the write, from minStage to directChunk. (Whether a pooled buffer is
// reused is up to sync.Pool, which drops some on purpose under -race.)
func TestStagePoolSizes(t *testing.T) {
	var s stagePool
	for _, tc := range []struct {
		n, want int
	}{
		{1, minStage},
		{minStage, minStage},
		{minStage + 1, 2 * minStage},
		{700 << 10, 1 << 20},
		{directChunk, directChunk},
		{3 * directChunk, directChunk},
	} {
		b := s.get(tc.n)
		if len(*b) != tc.want || cap(*b) != tc.want {
			t.Errorf("get(%d): %d bytes (capacity %d), want %d", tc.n, len(*b), cap(*b), tc.want)
		}
		if a := uintptr(unsafe.Pointer(&(*b)[0])) % directAlign; a != 0 {
			t.Errorf("get(%d): buffer %d bytes past a %d-byte boundary", tc.n, a, directAlign)
		}
	}
}

// TestDirectOnlyWhileWriting checks that only the segment the log appends
// to holds an O_DIRECT descriptor: sealed segments release theirs, and a
// reopened log opens one only when it writes.
func TestDirectOnlyWhileWriting(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	cfg.DirectIO = true
	l := mustOpen(t, dir, cfg)
	for i := uint64(1); len(l.segs) < 3; i += 8 {
		if err := l.StoreLogs(makeEntries(i, i+7, 1)); err != nil {
			t.Fatal(err)
		}
	}
	if d := openDirect(l.segs[0].f.(*osFile)); d == nil {
		t.Skip("the test directory's file system refuses O_DIRECT")
	} else {
		d.close()
	}
	holding := func(l *Log) (out []int) {
		for i, s := range l.segs {
			if s.f.(*osFile).dio != nil {
				out = append(out, i)
			}
		}
		return out
	}
	if got := holding(l); len(got) != 1 || got[0] != len(l.segs)-1 {
		t.Errorf("segments holding an O_DIRECT descriptor: %v, want only the last (%d)", got, len(l.segs)-1)
	}
	last, _ := l.LastIndex()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = mustOpen(t, dir, cfg)
	defer l.Close()
	if got := holding(l); len(got) != 0 {
		t.Errorf("after reopening, segments holding an O_DIRECT descriptor: %v, want none", got)
	}
	if err := l.StoreLogs(makeEntries(last+1, last+1, 1)); err != nil {
		t.Fatal(err)
	}
	checkRange(t, l, 1, last+1, func(uint64) uint64 { return 1 })
	if got := holding(l); len(got) != 1 || got[0] != len(l.segs)-1 {
		t.Errorf("after an append, segments holding an O_DIRECT descriptor: %v, want only the last (%d)", got, len(l.segs)-1)
	}
}
