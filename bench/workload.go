package bench

import (
	"fmt"
	"strings"
)

// Workload is one I/O pattern of the suite. Every system of a comparison
// runs it with the same client and the same parameters.
type Workload struct {
	// Name identifies the workload on the command line and in reports.
	Name string `json:"name"`
	// Description says in words what it measures.
	Description string `json:"description"`
	// ReadPercent is the share of reads: 100 reads only, 0 writes only,
	// 70 a 70/30 read/write mix.
	ReadPercent int `json:"read_percent"`
	// Random picks uniformly random block-aligned offsets; otherwise the
	// offsets are sequential (wrapping at the end of the region).
	Random bool `json:"random"`
	// BlockSize is the size of each request in bytes.
	BlockSize int `json:"block_size"`
	// QueueDepth is the number of requests in flight per connection.
	QueueDepth int `json:"queue_depth"`
	// Conns is the number of NBD connections (multi-conn when > 1).
	Conns int `json:"conns"`
	// Durable sends a flush after each write (fio --fsync=1) and waits for
	// it, so that every acknowledged write is on stable storage: the fair
	// comparison with Tandem, which acknowledges writes once durable.
	Durable bool `json:"durable"`
	// Latency marks workloads whose latency percentiles are a headline
	// figure (the QD1 jobs).
	Latency bool `json:"latency"`
}

// Reads reports whether the workload issues reads.
func (w Workload) Reads() bool { return w.ReadPercent > 0 }

// Writes reports whether the workload issues writes.
func (w Workload) Writes() bool { return w.ReadPercent < 100 }

// Throughput reports whether the headline figure is bandwidth (large
// blocks) rather than IOPS.
func (w Workload) Throughput() bool { return w.BlockSize >= 64<<10 }

// Validate reports the first problem with w.
func (w Workload) Validate() error {
	switch {
	case w.Name == "":
		return fmt.Errorf("workload without a name")
	case w.ReadPercent < 0 || w.ReadPercent > 100:
		return fmt.Errorf("workload %s: read percent %d outside 0..100", w.Name, w.ReadPercent)
	case w.BlockSize < 512 || w.BlockSize%512 != 0 || w.BlockSize > 32<<20:
		return fmt.Errorf("workload %s: block size %d: want a multiple of 512 up to 32 MiB", w.Name, w.BlockSize)
	case w.QueueDepth < 1 || w.QueueDepth > 1024:
		return fmt.Errorf("workload %s: queue depth %d outside 1..1024", w.Name, w.QueueDepth)
	case w.Conns < 1 || w.Conns > 64:
		return fmt.Errorf("workload %s: %d connections outside 1..64", w.Name, w.Conns)
	case w.Durable && !w.Writes():
		return fmt.Errorf("workload %s: durable but issues no writes", w.Name)
	}
	return nil
}

// NoWorkloads, as the only workload name, selects no workload.
const NoWorkloads = "none"

const (
	kib = 1 << 10
	mib = 1 << 20
)

// StandardWorkloads returns the standard suite, in the order it runs.
func StandardWorkloads() []Workload {
	return []Workload{
		{Name: "randread-4k-qd1", Description: "4 KiB random reads, one at a time: read latency", ReadPercent: 100, Random: true, BlockSize: 4 * kib, QueueDepth: 1, Conns: 1, Latency: true},
		{Name: "randread-4k-qd32", Description: "4 KiB random reads, 32 in flight: read IOPS", ReadPercent: 100, Random: true, BlockSize: 4 * kib, QueueDepth: 32, Conns: 1},
		{Name: "randwrite-4k-qd1", Description: "4 KiB random writes, one at a time: write latency (no flush)", ReadPercent: 0, Random: true, BlockSize: 4 * kib, QueueDepth: 1, Conns: 1, Latency: true},
		{Name: "randwrite-4k-qd32", Description: "4 KiB random writes, 32 in flight: write IOPS (no flush)", ReadPercent: 0, Random: true, BlockSize: 4 * kib, QueueDepth: 32, Conns: 1},
		{Name: "read-1m-qd8", Description: "1 MiB sequential reads, 8 in flight: read bandwidth", ReadPercent: 100, BlockSize: 1 * mib, QueueDepth: 8, Conns: 1},
		{Name: "write-1m-qd8", Description: "1 MiB sequential writes, 8 in flight: write bandwidth (no flush)", ReadPercent: 0, BlockSize: 1 * mib, QueueDepth: 8, Conns: 1},
		{Name: "randrw70-4k-qd32", Description: "4 KiB random 70% reads / 30% writes, 32 in flight", ReadPercent: 70, Random: true, BlockSize: 4 * kib, QueueDepth: 32, Conns: 1},
		{Name: "randread-4k-qd32-4conn", Description: "4 KiB random reads on 4 connections (multi-conn), 32 in flight each", ReadPercent: 100, Random: true, BlockSize: 4 * kib, QueueDepth: 32, Conns: 4},
		{Name: "randwrite-4k-qd1-durable", Description: "4 KiB random writes, each followed by a flush, one at a time: durable write latency", ReadPercent: 0, Random: true, BlockSize: 4 * kib, QueueDepth: 1, Conns: 1, Durable: true, Latency: true},
		{Name: "randwrite-4k-qd32-durable", Description: "4 KiB random writes, each followed by a flush, 32 in flight: durable write IOPS", ReadPercent: 0, Random: true, BlockSize: 4 * kib, QueueDepth: 32, Conns: 1, Durable: true},
		{Name: "write-1m-qd8-durable", Description: "1 MiB sequential writes, each followed by a flush, 8 in flight: durable write bandwidth", ReadPercent: 0, BlockSize: 1 * mib, QueueDepth: 8, Conns: 1, Durable: true},
	}
}

// SelectWorkloads returns the workloads of the standard suite with the
// given names, in suite order; no names selects the whole suite, and the
// single name "none" none of it (a run of the scenarios alone).
func SelectWorkloads(names []string) ([]Workload, error) {
	all := StandardWorkloads()
	if len(names) == 0 {
		return all, nil
	}
	if len(names) == 1 && names[0] == NoWorkloads {
		return []Workload{}, nil
	}
	want := map[string]bool{}
	for _, n := range names {
		want[strings.TrimSpace(n)] = true
	}
	var out []Workload
	for _, w := range all {
		if want[w.Name] {
			out = append(out, w)
			delete(want, w.Name)
		}
	}
	if len(want) > 0 {
		var unknown []string
		for n := range want {
			unknown = append(unknown, n)
		}
		return nil, fmt.Errorf("unknown workload(s) %s; known: %s", strings.Join(unknown, ", "), strings.Join(WorkloadNames(), ", "))
	}
	return out, nil
}

// WorkloadNames lists the names of the standard suite.
func WorkloadNames() []string {
	var n []string
	for _, w := range StandardWorkloads() {
		n = append(n, w.Name)
	}
	return n
}
