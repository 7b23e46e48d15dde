package raftlog

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-project/tandem/raftlog/mux"
	"github.com/tandem-project/tandem/volume/blockfile"
)

// streamTestSource serves src as a volume stream on loopback.
func streamTestSource(t testing.TB, src *blockfile.File) string {
	t.Helper()
	l, err := mux.Listen("127.0.0.1:0", nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	l.Handle(mux.KindStream, func(_ string, c net.Conn) {
		wg.Add(1)
		defer wg.Done()
		_ = serveFile(c, src, func(uint64) error { return nil })
	})
	go l.Serve()
	t.Cleanup(func() {
		l.Close()
		wg.Wait() // before the files close
	})
	return l.Addr().String()
}

func openTestFile(t *testing.T, path string, size int64) *blockfile.File {
	t.Helper()
	f, err := blockfile.Open(path, blockfile.Options{Size: size, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func readAll(t *testing.T, f *blockfile.File) []byte {
	t.Helper()
	b := make([]byte, f.Size())
	if err := f.ReadAt(context.Background(), b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStreamCopy copies a volume with data, holes, an allocated chunk of
// zeroes and an unaligned tail into a destination holding stale data, in
// one go and resumed from offsets, and checks the bytes, the count of
// bytes sent, the progress reports and that the zero chunk left a hole.
func TestStreamCopy(t *testing.T) {
	defer func(v int64) { pullSyncEvery = v }(pullSyncEvery)
	pullSyncEvery = 2 * streamChunk
	ctx := context.Background()
	const size = 9*streamChunk + 3*4096 + 512 // not a multiple of the page size
	dir := t.TempDir()
	src := openTestFile(t, filepath.Join(dir, "src"), size)
	data := func(n int) []byte {
		b := make([]byte, n)
		if _, err := io.ReadFull(rand.Reader, b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, w := range []struct{ off, n int64 }{
		{0, streamChunk + 8192},        // data over a chunk boundary
		{3 * streamChunk, 4096},        // a lone page
		{5*streamChunk + 512, 3 * 512}, // unaligned
		{8 * streamChunk, size - 8*streamChunk},
	} {
		if err := src.WriteAt(ctx, data(int(w.n)), w.off, 0); err != nil {
			t.Fatal(err)
		}
	}
	// An allocated chunk that reads as zeroes.
	if err := src.WriteAt(ctx, make([]byte, streamChunk), 6*streamChunk, 0); err != nil {
		t.Fatal(err)
	}
	want := readAll(t, src)
	addr := streamTestSource(t, src)

	for i, from := range []int64{0, 4 * streamChunk, 5*streamChunk + 4096} {
		dst := openTestFile(t, filepath.Join(dir, fmt.Sprintf("dst%d", i)), size)
		// Stale data everywhere: the copy must overwrite or punch it all
		// (beyond from; before it, the copy is taken as done).
		stale := data(size)
		if err := dst.WriteAt(ctx, stale, 0, 0); err != nil {
			t.Fatal(err)
		}
		var reports []int64
		st, err := pullVolume(ctx, mux.Dialer{}, addr, "vol", 0, from, dst, nil, func(off int64) { reports = append(reports, off) })
		if err != nil {
			t.Fatal(err)
		}
		got := readAll(t, dst)
		if !bytes.Equal(got[:from], stale[:from]) || !bytes.Equal(got[from:], want[from:]) {
			t.Fatalf("from %d: destination differs from the source", from)
		}
		if len(reports) == 0 || reports[len(reports)-1] != size || !slices.IsSorted(reports) || reports[0] < from {
			t.Errorf("from %d: progress reports %v", from, reports)
		}
		// A report comes once the written prefix grew by pullSyncEvery
		// (it may grow by several records at once).
		for k := 1; k < len(reports)-1; k++ {
			if reports[k]-reports[k-1] < pullSyncEvery {
				t.Errorf("progress reports %v closer than %d bytes", reports, pullSyncEvery)
			}
		}
		if from == 0 && len(reports) < 2 {
			t.Errorf("progress reported only at %v, want one every %d bytes", reports, pullSyncEvery)
		}
		// Data sent: everything but the holes and the zero chunk.
		var sent int64
		for off := from; off < size; off += streamChunk {
			chunk := want[off:min(off+streamChunk, size)]
			if !bytes.Equal(chunk, make([]byte, len(chunk))) {
				ext, err := src.Extents(ctx, off, int64(len(chunk)), 64)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range ext {
					if e.Flags == 0 {
						sent += e.Length
					}
				}
			}
		}
		if st.Bytes != sent {
			t.Errorf("from %d: %d bytes sent, want %d", from, st.Bytes, sent)
		}
		ext, err := dst.Extents(ctx, 6*streamChunk, streamChunk, 1)
		if err != nil {
			t.Fatal(err)
		}
		if ext[0].Length != streamChunk || ext[0].Flags == 0 {
			t.Errorf("from %d: the zero chunk is not a hole at the destination: %+v", from, ext)
		}
	}
}

// TestStreamCopyStops checks that a pull cancelled or refused returns an
// error and leaves no goroutine writing.
func TestStreamCopyStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	const size = 16 * streamChunk
	dir := t.TempDir()
	src := openTestFile(t, filepath.Join(dir, "src"), size)
	if err := src.WriteAt(ctx, bytes.Repeat([]byte{7}, size), 0, 0); err != nil {
		t.Fatal(err)
	}
	addr := streamTestSource(t, src)
	dst := openTestFile(t, filepath.Join(dir, "dst"), size)
	m := &copyMeter{rate: 4 * streamChunk} // 4 s for the volume
	m.begin(0, size)
	calls := 0
	go func() {
		for {
			m.mu.Lock()
			b := m.st.Bytes
			m.mu.Unlock()
			if b >= 2*streamChunk {
				break
			}
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	if _, err := pullVolume(ctx, mux.Dialer{}, addr, "vol", 0, 0, dst, m, func(int64) { calls++ }); err == nil {
		t.Fatal("a cancelled pull succeeded")
	}
	if calls != 0 {
		t.Errorf("a cancelled pull reported progress %d times", calls)
	}
	// Resumes to the end.
	if _, err := pullVolume(context.Background(), mux.Dialer{}, addr, "vol", 0, 0, dst, nil, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAll(t, dst), readAll(t, src)) {
		t.Fatal("destination differs after the second pull")
	}
}

// TestStreamRequestBounded checks that a stream request line that never
// ends is refused once it exceeds the bound, not read until the deadline.
func TestStreamRequestBounded(t *testing.T) {
	src := openTestFile(t, filepath.Join(t.TempDir(), "src"), 1<<20)
	srv, cli := net.Pipe()
	defer cli.Close()
	done := make(chan error, 1)
	go func() { done <- serveFile(srv, src, func(uint64) error { return nil }) }()
	go func() { _, _ = cli.Write(bytes.Repeat([]byte{'x'}, 2*maxStreamLine)) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "stream request") {
			t.Fatalf("serveFile: %v, want a refused request", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serveFile still reads a request line of 8 KiB")
	}
}
