package bench

import (
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latency summarizes the completion latencies of one kind of request.
// Durations are in nanoseconds in JSON.
type Latency struct {
	Count int64         `json:"count"`
	Mean  time.Duration `json:"mean_ns"`
	P50   time.Duration `json:"p50_ns"`
	P99   time.Duration `json:"p99_ns"`
	P999  time.Duration `json:"p99_9_ns"`
	Max   time.Duration `json:"max_ns"`
}

// latencyOf summarizes an HDR histogram of nanosecond values.
func latencyOf(h *hdrhistogram.Histogram) Latency {
	if h == nil || h.TotalCount() == 0 {
		return Latency{}
	}
	return Latency{
		Count: h.TotalCount(),
		Mean:  time.Duration(h.Mean()),
		P50:   time.Duration(h.ValueAtQuantile(50)),
		P99:   time.Duration(h.ValueAtQuantile(99)),
		P999:  time.Duration(h.ValueAtQuantile(99.9)),
		Max:   time.Duration(h.Max()),
	}
}

// Result is what one client run of one workload against one system
// measured.
type Result struct {
	// Client is the client that measured it ("fio" or "go").
	Client string `json:"client"`
	// Round is the 1-based repetition.
	Round int `json:"round"`
	// Elapsed is the measured time (warm-up excluded).
	Elapsed time.Duration `json:"elapsed_ns"`
	// ReadIOPS and WriteIOPS are completed requests per second; IOPS is
	// their sum.
	IOPS      float64 `json:"iops"`
	ReadIOPS  float64 `json:"read_iops"`
	WriteIOPS float64 `json:"write_iops"`
	// BytesPerSec is the bandwidth of reads and writes together.
	BytesPerSec float64 `json:"bytes_per_sec"`
	// Read and Write are completion latencies of reads and writes (fio's
	// clat). Sync is the latency of the flush that follows each write in
	// durable workloads; it is not included in Write.
	Read  Latency `json:"read_lat"`
	Write Latency `json:"write_lat"`
	Sync  Latency `json:"sync_lat"`
	// Errors counts failed requests.
	Errors int64 `json:"errors"`
	// Verified and Mismatches count 4 KiB units checked by the Go load
	// generator's data verification, and those that were wrong.
	Verified   int64 `json:"verified_units,omitempty"`
	Mismatches int64 `json:"mismatches,omitempty"`
	// FirstMismatch describes the first wrong unit, if any.
	FirstMismatch string `json:"first_mismatch,omitempty"`
}

// Lat returns the latency that represents w: reads for read and mixed
// workloads, writes for write-only ones.
func (r Result) Lat(w Workload) Latency {
	if w.Reads() {
		return r.Read
	}
	return r.Write
}
