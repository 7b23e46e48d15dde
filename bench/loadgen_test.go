package bench

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
)

// startTestNbdkit serves a fresh file of size bytes with nbdkit and
// returns the system and the file.
func startTestNbdkit(t *testing.T, size int64) (*System, string, *supervisor) {
	t.Helper()
	testbin.Require(t, "nbdkit")
	dir := t.TempDir()
	file := filepath.Join(dir, "disk.img")
	if err := createFile(file, size); err != nil {
		t.Fatal(err)
	}
	sup := &supervisor{}
	t.Cleanup(func() {
		if err := sup.stopAll(); err != nil {
			t.Error(err)
		}
	})
	s, err := startNbdkit(context.Background(), file, dir, io.Discard, sup)
	if err != nil {
		t.Fatal(err)
	}
	return s, file, sup
}

// TestVerifyCatchesCorruption fills an nbdkit export with verifiable
// data, damages its backing file behind the server's back, and checks
// that the load generator's verification reports exactly the damage.
func TestVerifyCatchesCorruption(t *testing.T) {
	const size = 8 * mib
	s, file, _ := startTestNbdkit(t, size)
	ctx := context.Background()
	if _, err := prepareExport(ctx, s, size); err != nil {
		t.Fatal(err)
	}
	readAll := func() *LoadResult {
		t.Helper()
		r, err := RunLoad(ctx, s.Endpoint(), LoadSpec{
			Workload: Workload{Name: "check", ReadPercent: 100, BlockSize: 64 * kib, QueueDepth: 4, Conns: 2},
			OnePass:  true, Verify: true, Prefilled: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := readAll(); r.Mismatches != 0 || r.Verified != size/unitSize {
		t.Fatalf("clean export: %d mismatches (%s), %d units verified, want 0 and %d", r.Mismatches, r.FirstMismatch, r.Verified, size/unitSize)
	}

	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// One flipped byte in the body of the unit at 3 MiB.
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, 3*mib+1000); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, 3*mib+1000); err != nil {
		t.Fatal(err)
	}
	r := readAll()
	if r.Mismatches != 1 || !strings.Contains(r.FirstMismatch, "unit at 3145728") || !strings.Contains(r.FirstMismatch, "checksum") {
		t.Fatalf("flipped byte: %d mismatches, first %q; want 1 checksum mismatch at 3145728", r.Mismatches, r.FirstMismatch)
	}

	// Repair it; then copy the unit at 0 over the unit at 5 MiB:
	// well-formed data in the wrong place.
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, 3*mib+1000); err != nil {
		t.Fatal(err)
	}
	u := make([]byte, unitSize)
	if _, err := f.ReadAt(u, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(u, 5*mib); err != nil {
		t.Fatal(err)
	}
	r = readAll()
	if r.Mismatches != 1 || !strings.Contains(r.FirstMismatch, "unit at 5242880 holds the data of offset 0") {
		t.Fatalf("misdirected unit: %d mismatches, first %q; want 1 at 5242880", r.Mismatches, r.FirstMismatch)
	}
}

// TestVerifyConcurrentMix checks that verification has no false alarms
// under a concurrent read/write mix on several connections, and that the
// generator measures what it did.
func TestVerifyConcurrentMix(t *testing.T) {
	const size = 16 * mib
	s, _, _ := startTestNbdkit(t, size)
	ctx := context.Background()
	if _, err := prepareExport(ctx, s, size); err != nil {
		t.Fatal(err)
	}
	for _, w := range []Workload{
		{Name: "mix", ReadPercent: 50, Random: true, BlockSize: 4 * kib, QueueDepth: 8, Conns: 2},
		{Name: "seq-durable", ReadPercent: 0, BlockSize: 256 * kib, QueueDepth: 4, Conns: 1, Durable: true},
	} {
		r, err := RunLoad(ctx, s.Endpoint(), LoadSpec{Workload: w, Duration: 500 * time.Millisecond, Warmup: 100 * time.Millisecond, Verify: true, Prefilled: true, Seed: 3})
		if err != nil {
			t.Fatalf("%s: %v", w.Name, err)
		}
		if r.Mismatches != 0 || r.Errors != 0 {
			t.Errorf("%s: %d mismatches (%s), %d errors (%s)", w.Name, r.Mismatches, r.FirstMismatch, r.Errors, r.FirstError)
		}
		if r.IOPS <= 0 || r.Elapsed != 500*time.Millisecond {
			t.Errorf("%s: %v IOPS over %v", w.Name, r.IOPS, r.Elapsed)
		}
		if w.Reads() && (r.Read.Count == 0 || r.Verified == 0 || r.Read.P50 <= 0 || r.Read.P50 > r.Read.P99 || r.Read.P99 > r.Read.P999) {
			t.Errorf("%s: read latency %+v, %d verified", w.Name, r.Read, r.Verified)
		}
		if w.Durable && (r.Sync.Count != r.Write.Count || r.Sync.Count == 0) {
			t.Errorf("%s: %d writes but %d flushes measured", w.Name, r.Write.Count, r.Sync.Count)
		}
	}
}

// TestLoadFailsWithoutReconnect checks that, without Reconnect, a server
// that goes away ends the run at once with an error.
func TestLoadFailsWithoutReconnect(t *testing.T) {
	s, _, sup := startTestNbdkit(t, 4*mib)
	done := make(chan error, 1)
	go func() {
		_, err := RunLoad(context.Background(), s.Endpoint(), LoadSpec{
			Workload: Workload{Name: "r", ReadPercent: 100, Random: true, BlockSize: 4 * kib, QueueDepth: 4, Conns: 1},
			Duration: 30 * time.Second,
		})
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	if err := sup.stopAll(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the run survived its server without Reconnect")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the run did not end within 10s of its server stopping")
	}
}
