package raftlog

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-project/tandem/raftlog/mux"
	"github.com/tandem-project/tandem/volume/blockfile"
)

// streamBenchSource makes a blockfile of size bytes whose first data bytes
// hold random data (the rest a hole), and serves it as a volume stream on
// a mux listener on loopback. It returns the listener's address.
func streamBenchSource(tb testing.TB, size, data int64) (addr string, src *blockfile.File) {
	tb.Helper()
	dir := tb.TempDir()
	src, err := blockfile.Open(filepath.Join(dir, "src"), blockfile.Options{Size: size, Create: true})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { src.Close() })
	buf := make([]byte, 1<<20)
	for off := int64(0); off < data; off += int64(len(buf)) {
		if _, err := io.ReadFull(rand.Reader, buf); err != nil {
			tb.Fatal(err)
		}
		if err := src.WriteAt(context.Background(), buf[:min(int64(len(buf)), data-off)], off, 0); err != nil {
			tb.Fatal(err)
		}
	}
	if err := src.Flush(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return streamTestSource(tb, src), src
}

// BenchmarkStreamCopy measures a replica copy by stream over loopback: a
// 128 MiB volume holding 96 MiB of random data (the rest a hole, as in
// e2e/mirror's TestMoveUnderWrites) pulled into a new file, synced at the
// end. The source is in the page cache; bytes/s count the data copied, and
// cpu-ms/GiB the CPU time both ends took (user and system) per GiB.
//
//	go test -run X -bench StreamCopy -benchtime 10x ./raftlog/
func BenchmarkStreamCopy(b *testing.B) {
	const size, data = 128 << 20, 96 << 20
	addr, _ := streamBenchSource(b, size, data)
	dir := b.TempDir()
	b.SetBytes(data)
	cpu0 := cpuTime(b)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		// A new file each time, the earlier ones kept: the copy gets no
		// page cache freed by the previous one, as on a host whose
		// memory is in use.
		path := filepath.Join(dir, fmt.Sprintf("dst%d", i))
		dst, err := blockfile.Open(path, blockfile.Options{Size: size, Create: true})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		st, err := pullVolume(context.Background(), mux.Dialer{}, addr, "vol", 0, 0, dst, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		if st.Bytes != data {
			b.Fatalf("copied %d bytes, want %d", st.Bytes, data)
		}
		b.StopTimer()
		dst.Close()
		b.StartTimer()
	}
	// Both ends run in this process: CPU time per GiB copied is what the
	// copy takes from the replicas' foreground work.
	b.ReportMetric((cpuTime(b)-cpu0).Seconds()*1000/float64(b.N)/(float64(data)/(1<<30)), "cpu-ms/GiB")
}

// cpuTime returns the user and system CPU time of the process so far.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
