package wal

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// A 3-node hashicorp/raft cluster in one process over raft.InmemTransport,
// each node with its own log store of the kind under test (behind
// raft.LogCache, as a real deployment would use it), driven by 64
// concurrent Apply callers. Apply returns after the leader's FSM applied the
// entry, i.e. after the leader's and one follower's log syncs.

type countFSM struct{ n atomic.Uint64 }

func (f *countFSM) Apply(*raft.Log) any                 { f.n.Add(1); return nil }
func (f *countFSM) Snapshot() (raft.FSMSnapshot, error) { return nopSnapshot{}, nil }
func (f *countFSM) Restore(rc io.ReadCloser) error      { return rc.Close() }

type nopSnapshot struct{}

func (nopSnapshot) Persist(s raft.SnapshotSink) error { return s.Close() }
func (nopSnapshot) Release()                          {}

// raftRun runs one cluster for d after a warm-up and returns entries/s.
func raftRun(t *testing.T, s benchStore, size, callers int, d time.Duration) float64 {
	const nodes = 3
	var (
		rafts  []*raft.Raft
		closes []func() error
		dirs   []string
	)
	defer func() {
		for _, r := range rafts {
			r.Shutdown().Error()
		}
		for _, c := range closes {
			c()
		}
		for _, d := range dirs {
			os.RemoveAll(d)
		}
	}()
	addrs := make([]raft.ServerAddress, nodes)
	trans := make([]*raft.InmemTransport, nodes)
	for i := range trans {
		addrs[i], trans[i] = raft.NewInmemTransport(raft.ServerAddress(fmt.Sprintf("n%d", i)))
	}
	for i := range trans {
		for j := range trans {
			if i != j {
				trans[i].Connect(addrs[j], trans[j])
			}
		}
	}
	var servers []raft.Server
	for i := range trans {
		servers = append(servers, raft.Server{ID: raft.ServerID(addrs[i]), Address: addrs[i]})
	}
	for i := range trans {
		conf := raft.DefaultConfig()
		conf.LocalID = raft.ServerID(addrs[i])
		// Default timeouts (1 s heartbeat and election, 500 ms lease).
		// Snapshots every second once 1024 entries accumulated, keeping
		// 1024 trailing entries: compaction runs during the measurement,
		// as it does in production, and bounds the disk used by large
		// entries.
		conf.SnapshotInterval = time.Second
		conf.SnapshotThreshold = 1024
		conf.TrailingLogs = 1024
		conf.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Error, Output: io.Discard})
		dir := t.TempDir()
		dirs = append(dirs, dir)
		store, closeFn, err := s.open(dir)
		if err != nil {
			t.Fatal(err)
		}
		closes = append(closes, closeFn)
		logs, err := raft.NewLogCache(512, store)
		if err != nil {
			t.Fatal(err)
		}
		stable := raft.NewInmemStore()
		snaps := raft.NewInmemSnapshotStore()
		if err := raft.BootstrapCluster(conf, logs, stable, snaps, trans[i], raft.Configuration{Servers: servers}); err != nil {
			t.Fatal(err)
		}
		r, err := raft.NewRaft(conf, &countFSM{}, logs, stable, snaps, trans[i])
		if err != nil {
			t.Fatal(err)
		}
		rafts = append(rafts, r)
	}
	var leader atomic.Pointer[raft.Raft]
	findLeader := func() *raft.Raft {
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			for _, r := range rafts {
				if r.State() == raft.Leader {
					leader.Store(r)
					return r
				}
			}
		}
		return nil
	}
	if findLeader() == nil {
		t.Fatal("no leader")
	}

	var count, failures atomic.Int64
	var counting atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := fillBytes(size, uint64(c), 2)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := leader.Load().Apply(data, 10*time.Second).Error(); err != nil {
					// Leadership changes under heavy I/O: count and
					// follow the new leader.
					failures.Add(1)
					time.Sleep(50 * time.Millisecond)
					findLeader()
					continue
				}
				if counting.Load() {
					count.Add(1)
				}
			}
		}()
	}
	// Warm-up: long enough for the first segment (started by the
	// bootstrap entry, before any background preparation could run) to
	// fill up at 4 KiB rates.
	time.Sleep(max(d/4, 2*time.Second))
	counting.Store(true)
	start := time.Now()
	time.Sleep(d)
	counting.Store(false)
	elapsed := time.Since(start)
	close(stop)
	wg.Wait()
	if n := failures.Load(); n > 0 {
		t.Logf("%s %d KiB: %d failed Applies (leadership changes)", s.name, size>>10, n)
	}
	return float64(count.Load()) / elapsed.Seconds()
}

// TestBenchRaftCluster prints entries/s and MB/s of the 3-node cluster per
// store and entry size: stores interleaved, WAL_BENCH_ROUNDS rounds of
// WAL_BENCH_DUR each, medians, and the ratio to the in-memory store of the
// same round. Run with
//
//	WAL_BENCH=1 go test -run TestBenchRaftCluster -v -timeout 60m ./raftlog/wal/
func TestBenchRaftCluster(t *testing.T) {
	if os.Getenv("WAL_BENCH") == "" {
		t.Skip("set WAL_BENCH=1")
	}
	rounds := envInt("WAL_BENCH_ROUNDS", 3)
	d := envDuration("WAL_BENCH_DUR", 3*time.Second)
	callers := envInt("WAL_BENCH_CALLERS", 64)
	stores := selectStores()
	for _, size := range envSizes("WAL_BENCH_SIZES", []int{4 << 10, 256 << 10, 1 << 20}) {
		eps := map[string][]float64{}
		ratio := map[string][]float64{}
		for r := 0; r < rounds; r++ {
			round := map[string]float64{}
			for k := range stores {
				s := stores[(k+r)%len(stores)]
				round[s.name] = raftRun(t, s, size, callers, d)
				eps[s.name] = append(eps[s.name], round[s.name])
				t.Logf("round %d %s %d KiB: %.0f entries/s", r, s.name, size>>10, round[s.name])
			}
			if in := round["inmem"]; in > 0 {
				for name, v := range round {
					ratio[name] = append(ratio[name], v/in)
				}
			}
		}
		t.Logf("3-node raft, %d callers, %d KiB entries, %d rounds × %v (medians)", callers, size>>10, rounds, d)
		t.Logf("| store | entries/s | MB/s | × inmem |")
		t.Logf("|---|---:|---:|---:|")
		for _, s := range stores {
			e := median(eps[s.name])
			t.Logf("| %s | %.0f | %.1f | %.4f |", s.name, e, e*float64(size)/1e6, median(ratio[s.name]))
		}
	}
}
