package wal

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftwal "github.com/hashicorp/raft-wal"
)

// Benchmarks comparing this log with hashicorp/raft-wal, a synced badger
// store and raft.InmemStore. docs/raft-log-store.md records the results and
// the commands.

// benchStore opens one kind of store in dir.
type benchStore struct {
	name string
	open func(dir string) (raft.LogStore, func() error, error)
}

func benchStores() []benchStore {
	return []benchStore{
		{"inmem", func(string) (raft.LogStore, func() error, error) {
			return raft.NewInmemStore(), func() error { return nil }, nil
		}},
		{"wal", func(dir string) (raft.LogStore, func() error, error) {
			l, err := Open(dir, DefaultConfig())
			if err != nil {
				return nil, nil, err
			}
			return l, l.Close, nil
		}},
		{"wal-nozero", func(dir string) (raft.LogStore, func() error, error) {
			c := DefaultConfig()
			c.PreZeroRate = 0
			l, err := Open(dir, c)
			if err != nil {
				return nil, nil, err
			}
			return l, l.Close, nil
		}},
		{"wal-fullzero", func(dir string) (raft.LogStore, func() error, error) {
			// Unlimited zeroing rate: every fresh segment is zeroed
			// as fast as the disk allows.
			c := DefaultConfig()
			c.PreZeroRate = 1 << 40
			l, err := Open(dir, c)
			if err != nil {
				return nil, nil, err
			}
			return l, l.Close, nil
		}},
		{"raft-wal", func(dir string) (raft.LogStore, func() error, error) {
			w, err := raftwal.Open(dir)
			if err != nil {
				return nil, nil, err
			}
			return w, w.Close, nil
		}},
		{"badger", func(dir string) (raft.LogStore, func() error, error) {
			s, err := openBadgerStore(dir)
			if err != nil {
				return nil, nil, err
			}
			return s, s.Close, nil
		}},
	}
}

// selectStores filters by the comma-separated WAL_BENCH_STORES (all if unset).
func selectStores() []benchStore {
	all := benchStores()
	want := os.Getenv("WAL_BENCH_STORES")
	if want == "" {
		return all
	}
	var out []benchStore
	for _, s := range all {
		if slices.Contains(strings.Split(want, ","), s.name) {
			out = append(out, s)
		}
	}
	return out
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

func envSizes(name string, def []int) []int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(f)
		if err == nil {
			out = append(out, n)
		}
	}
	return out
}

// batchOf returns n entries of size bytes whose Data buffers are reused
// (as a pooled caller would).
func batchOf(n, size int) []*raft.Log {
	es := make([]*raft.Log, n)
	for i := range es {
		es[i] = &raft.Log{Type: raft.LogCommand, Term: 1, Data: fillBytes(size, uint64(i), 1), AppendedAt: time.Now()}
	}
	return es
}

// BenchmarkStoreLogs measures raw StoreLogs calls: one op is one call.
//
//	go test -run '^$' -bench StoreLogs -benchtime 2s ./raftlog/wal/
func BenchmarkStoreLogs(b *testing.B) {
	for _, size := range []int{4 << 10, 256 << 10} {
		for _, n := range []int{1, 8, 64} {
			if size*n > 64<<20 {
				continue
			}
			for _, s := range selectStores() {
				b.Run(fmt.Sprintf("%s/entry=%dKiB/batch=%d", s.name, size>>10, n), func(b *testing.B) {
					store, closeFn, err := s.open(b.TempDir())
					if err != nil {
						b.Fatal(err)
					}
					defer closeFn()
					es := batchOf(n, size)
					next := uint64(1)
					b.SetBytes(int64(size * n))
					b.ResetTimer()
					for i := 0; i < b.N; i++ {
						for _, e := range es {
							e.Index = next
							next++
						}
						if err := store.StoreLogs(es); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "entries/s")
				})
			}
		}
	}
}

// storeLogsRun measures StoreLogs latency for one store for d and returns
// the per-call latencies.
func storeLogsRun(t *testing.T, s benchStore, n, size int, d time.Duration) []time.Duration {
	dir := t.TempDir()
	store, closeFn, err := s.open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		closeFn()
		os.RemoveAll(dir)
	}()
	// Steady state, not a fresh log: fill one whole segment with a 64 MiB
	// batch, so the measured calls start a new segment, and give every
	// store the same 1.5 s to settle (background segment preparation).
	next := uint64(1)
	warm := batchOf(64, 1<<20)
	for _, e := range warm {
		e.Index = next
		next++
	}
	if err := store.StoreLogs(warm); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	es := batchOf(n, size)
	var lat []time.Duration
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		for _, e := range es {
			e.Index = next
			next++
		}
		start := time.Now()
		if err := store.StoreLogs(es); err != nil {
			t.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	return lat
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// TestBenchStoreLogsTable prints the raw StoreLogs table: for each entry
// size and batch length, the stores run interleaved for WAL_BENCH_ROUNDS
// rounds of WAL_BENCH_DUR each; the table shows medians over rounds of the
// per-round p50/p99 latency and throughput. Run with
//
//	WAL_BENCH=1 go test -run TestBenchStoreLogsTable -v -timeout 60m ./raftlog/wal/
func TestBenchStoreLogsTable(t *testing.T) {
	if os.Getenv("WAL_BENCH") == "" {
		t.Skip("set WAL_BENCH=1")
	}
	rounds := envInt("WAL_BENCH_ROUNDS", 5)
	d := envDuration("WAL_BENCH_DUR", 2*time.Second)
	stores := selectStores()
	for _, size := range envSizes("WAL_BENCH_SIZES", []int{4 << 10}) {
		for _, n := range []int{1, 8, 64} {
			p50 := map[string][]float64{}
			p99 := map[string][]float64{}
			eps := map[string][]float64{}
			for r := 0; r < rounds; r++ {
				// Rotate the order each round.
				for k := range stores {
					s := stores[(k+r)%len(stores)]
					lat := storeLogsRun(t, s, n, size, d)
					var total time.Duration
					for _, l := range lat {
						total += l
					}
					p50[s.name] = append(p50[s.name], float64(percentile(lat, 0.5).Nanoseconds())/1e3)
					p99[s.name] = append(p99[s.name], float64(percentile(lat, 0.99).Nanoseconds())/1e3)
					eps[s.name] = append(eps[s.name], float64(len(lat)*n)/total.Seconds())
				}
			}
			t.Logf("StoreLogs, %d KiB entries, batch %d, %d rounds × %v (medians)", size>>10, n, rounds, d)
			t.Logf("| store | p50 µs | p99 µs | entries/s | MB/s |")
			t.Logf("|---|---:|---:|---:|---:|")
			for _, s := range stores {
				e := median(eps[s.name])
				t.Logf("| %s | %.1f | %.1f | %.0f | %.1f |", s.name, median(p50[s.name]), median(p99[s.name]), e, e*float64(size)/1e6)
			}
		}
	}
}

// TestBenchSyncRaw measures the primitive pre-zeroing is about: the p50
// latency of a 4 KiB write + fdatasync at the end of a file that is (a)
// growing, (b) fallocated (unwritten extents), (c) fallocated and filled
// with zeros beforehand, interleaved over WAL_BENCH_ROUNDS rounds of 1000
// writes each. Run with
//
//	WAL_BENCH=1 go test -run TestBenchSyncRaw -v ./raftlog/wal/
func TestBenchSyncRaw(t *testing.T) {
	if os.Getenv("WAL_BENCH") == "" {
		t.Skip("set WAL_BENCH=1")
	}
	modes := []string{"append", "fallocate", "prezero"}
	res := map[string][]float64{}
	for r := 0; r < envInt("WAL_BENCH_ROUNDS", 5); r++ {
		for _, m := range modes {
			path := t.TempDir() + "/f"
			f, err := osFS{}.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			const size = 64 << 20
			if m != "append" {
				if err := f.Allocate(size); err != nil {
					t.Fatal(err)
				}
			}
			if m == "prezero" {
				z := make([]byte, 1<<20)
				for off := int64(0); off < size; off += int64(len(z)) {
					if err := f.WriteV([][]byte{z}, off); err != nil {
						t.Fatal(err)
					}
				}
			}
			f.Datasync()
			time.Sleep(200 * time.Millisecond)
			buf := [][]byte{make([]byte, 4096)}
			var lat []time.Duration
			for i := 0; i < 1000; i++ {
				start := time.Now()
				if err := f.WriteV(buf, int64(i)*4096); err != nil {
					t.Fatal(err)
				}
				if err := f.Datasync(); err != nil {
					t.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			f.Close()
			os.Remove(path)
			res[m] = append(res[m], float64(percentile(lat, 0.5).Nanoseconds())/1e3)
		}
	}
	t.Logf("| file | p50 µs (median of rounds) | all rounds |")
	t.Logf("|---|---:|---|")
	for _, m := range modes {
		t.Logf("| %s | %.0f | %.0f |", m, median(res[m]), res[m])
	}
}
