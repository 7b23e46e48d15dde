package bench

import (
	"context"
	"fmt"
	"os"
	"strconv"
)

// The disk bound of sequential durable writes.
//
// Tandem's dev cluster keeps its three replicas on one filesystem, and
// every replica writes each byte to its log with O_DIRECT and fdatasync
// before it counts as durable. However fast the rest, three such logs
// writing at once on that filesystem bound what the cluster can write;
// the baselines write each byte once. For the sequential durable write
// workloads the harness therefore measures, after each round, what three
// bare logs get: fio with three jobs, each writing its own file
// sequentially in the workload's block size with O_DIRECT and an
// fdatasync after each write. The report gives the rate each log reached
// and Tandem's bandwidth as a share of it (1 would be Tandem as fast as
// three logs that do nothing else; its checkpoints also write the volume
// files, so it stays below).

// LogBound is the disk bound measured for one workload.
type LogBound struct {
	// Runs holds, per round, the bytes per second each of the three logs
	// wrote (the jobs' total divided by three).
	Runs []float64 `json:"runs_per_log_bytes_per_sec"`
	// PerLog summarizes Runs.
	PerLog Stat `json:"per_log_bytes_per_sec"`
	// TandemShare is Tandem's median bandwidth divided by PerLog's
	// median: the share of the bound Tandem reached.
	TandemShare float64 `json:"tandem_share"`
	// VsBaselines maps each baseline to PerLog's median divided by the
	// baseline's median bandwidth: about the ratio to that baseline of a
	// cluster whose only cost were its logs. A ratio target above it is
	// out of the dev cluster's reach on this filesystem in practice
	// (docs/benchmarks.md, "The disk bound").
	VsBaselines map[string]float64 `json:"per_log_vs_baselines,omitempty"`
	// Failed holds the errors of probes that did not complete.
	Failed []string `json:"failed,omitempty"`
}

// boundLogs is how many replicas' logs the probe writes at once: those of
// the dev cluster.
const boundLogs = 3

// hasLogBound reports whether the harness measures the disk bound for w.
func (w Workload) hasLogBound() bool {
	return w.Durable && w.ReadPercent == 0 && !w.Random
}

// logBounder is a Client that can measure the disk bound (fio).
type logBounder interface {
	// LogBound returns the bytes per second each of boundLogs logs in dir
	// wrote with w's block size.
	LogBound(ctx context.Context, dir string, w Workload, o RunOptions) (float64, error)
}

// logBoundArgs are fio's arguments for the probe: boundLogs jobs, each
// writing its own file in dir.
func logBoundArgs(dir string, w Workload, o RunOptions, out string) []string {
	args := []string{
		"--name=log-bound", "--directory=" + dir, "--filename_format=log-bound.$jobnum",
		"--numjobs=" + strconv.Itoa(boundLogs), "--group_reporting",
		"--rw=write", "--bs=" + strconv.Itoa(w.BlockSize), "--ioengine=psync",
		"--direct=1", "--fdatasync=1",
		"--size=" + strconv.FormatInt(o.Region, 10),
		"--time_based", "--runtime=" + strconv.FormatInt(o.Runtime.Milliseconds(), 10) + "ms",
		"--output-format=json", "--output=" + out,
	}
	if o.Warmup > 0 {
		args = append(args, "--ramp_time="+strconv.FormatInt(o.Warmup.Milliseconds(), 10)+"ms")
	}
	return args
}

// LogBound implements logBounder.
func (f *fioClient) LogBound(ctx context.Context, dir string, w Workload, o RunOptions) (float64, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, fmt.Errorf("disk bound: %w", err)
	}
	var res Result
	err := f.runFio(ctx, "fio disk bound for "+w.Name, func(out string) []string { return logBoundArgs(dir, w, o, out) }, o, &res)
	if err != nil {
		return 0, err
	}
	return res.BytesPerSec / boundLogs, nil
}

// summarize fills PerLog, TandemShare and VsBaselines from the workload's
// runs on every system; tandem is Tandem's, nil if it has none.
func (b *LogBound) summarize(tandem *SystemRuns, systems []SystemRuns) {
	b.PerLog = Summarize(b.Runs)
	b.TandemShare, b.VsBaselines = 0, nil
	if b.PerLog.Median <= 0 {
		return
	}
	if tandem != nil {
		b.TandemShare = tandem.BytesPerSec.Median / b.PerLog.Median
	}
	for _, s := range systems {
		if (tandem != nil && s.System == tandem.System) || s.BytesPerSec.Median <= 0 {
			continue
		}
		if b.VsBaselines == nil {
			b.VsBaselines = map[string]float64{}
		}
		b.VsBaselines[s.System] = b.PerLog.Median / s.BytesPerSec.Median
	}
}
