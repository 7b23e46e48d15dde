package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"
)

// Report is everything a benchmark run measured. It is written as JSON
// (results.json) and rendered as Markdown (Markdown) and SVG (SVG).
type Report struct {
	Started  time.Time     `json:"started"`
	Finished time.Time     `json:"finished"`
	Wall     time.Duration `json:"wall_ns"`
	Machine  Machine       `json:"machine"`
	// Client is the client that drove every system ("fio" or "go") and
	// ClientVersion its version.
	Client        string        `json:"client"`
	ClientVersion string        `json:"client_version"`
	Repeat        int           `json:"repeat"`
	Runtime       time.Duration `json:"runtime_ns"`
	Warmup        time.Duration `json:"warmup_ns"`
	Size          int64         `json:"size_bytes"`
	Verify        bool          `json:"verify"`
	// Systems are the systems under test, Tandem first.
	Systems   []*System        `json:"systems"`
	Workloads []WorkloadReport `json:"workloads"`
	Scenarios []ScenarioResult `json:"scenarios"`
	// ScenarioSummaries summarize the scenarios that ran several rounds.
	ScenarioSummaries []ScenarioSummary `json:"scenario_summaries,omitempty"`
	// Processes lists every process the harness started (all stopped by
	// the time Run returns).
	Processes []ProcessInfo `json:"processes"`
	// Notes are remarks on the run (skipped baselines, fill times, …).
	Notes []string `json:"notes"`
	// Error is why the run ended early, if it did.
	Error string `json:"error,omitempty"`
	// OutDir is where the report was written.
	OutDir string `json:"out_dir"`
}

// Machine describes where the benchmark ran.
type Machine struct {
	Hostname  string `json:"hostname"`
	CPUs      int    `json:"cpus"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	Kernel    string `json:"kernel"`
	CPUModel  string `json:"cpu_model"`
	GoVersion string `json:"go_version"`
}

// WorkloadReport holds one workload's runs on every system and Tandem's
// ratios to each baseline.
type WorkloadReport struct {
	Workload Workload     `json:"workload"`
	Systems  []SystemRuns `json:"systems"`
	// Ratios compare Tandem with each baseline: "iops" (which is also the
	// bandwidth ratio, the block size being the same) and, for the
	// latency workloads, "p50", "p99" and "p99.9" of the workload's main
	// direction (reads, or writes for write-only workloads).
	Ratios []Ratio `json:"ratios"`
	// LogBound is the disk bound measured for a sequential durable write
	// workload (Config.LogBound), nil if none was.
	LogBound *LogBound `json:"log_bound,omitempty"`
}

// SystemRuns holds the runs of one workload on one system and their
// summaries over the rounds.
type SystemRuns struct {
	System string   `json:"system"`
	Runs   []Result `json:"runs"`
	// Failed holds the errors of runs that did not complete.
	Failed []string `json:"failed,omitempty"`
	IOPS   Stat     `json:"iops"`
	// BytesPerSec summarizes the bandwidth.
	BytesPerSec Stat `json:"bytes_per_sec"`
	// P50, P99 and P999 summarize the latency percentiles (ns) of the
	// workload's main direction.
	P50  Stat `json:"p50_ns"`
	P99  Stat `json:"p99_ns"`
	P999 Stat `json:"p99_9_ns"`
}

// figures returns one figure per round (NaN for a round that failed), so
// that rounds line up across systems.
func (s SystemRuns) figures(w Workload, repeat int, f func(Result, Workload) float64) []float64 {
	out := make([]float64, repeat)
	for i := range out {
		out[i] = math.NaN()
	}
	for _, r := range s.Runs {
		if r.Round >= 1 && r.Round <= repeat {
			out[r.Round-1] = f(r, w)
		}
	}
	return out
}

// metric is a named figure of a run.
type metric struct {
	name string
	f    func(Result, Workload) float64
}

// Figure extractors.
func figIOPS(r Result, _ Workload) float64 { return r.IOPS }
func figBW(r Result, _ Workload) float64   { return r.BytesPerSec }
func figP50(r Result, w Workload) float64  { return float64(r.Lat(w).P50) }
func figP99(r Result, w Workload) float64  { return float64(r.Lat(w).P99) }
func figP999(r Result, w Workload) float64 { return float64(r.Lat(w).P999) }

// summarize fills the Stat fields of s from its runs.
func (s *SystemRuns) summarize(w Workload, repeat int) {
	stat := func(f func(Result, Workload) float64) Stat {
		var xs []float64
		for _, x := range s.figures(w, repeat, f) {
			if !math.IsNaN(x) {
				xs = append(xs, x)
			}
		}
		return Summarize(xs)
	}
	s.IOPS, s.BytesPerSec = stat(figIOPS), stat(figBW)
	s.P50, s.P99, s.P999 = stat(figP50), stat(figP99), stat(figP999)
}

// computeRatios fills wr.Ratios: Tandem against every baseline.
func (wr *WorkloadReport) computeRatios(systems []*System, repeat int) {
	tandem := wr.tandemRuns(systems)
	wr.Ratios = nil
	if tandem == nil {
		return
	}
	w := wr.Workload
	metrics := []metric{{"iops", figIOPS}}
	if w.Latency {
		metrics = append(metrics, metric{"p50", figP50}, metric{"p99", figP99}, metric{"p99.9", figP999})
	}
	for _, b := range wr.Systems {
		if b.System == tandem.System {
			continue
		}
		for _, m := range metrics {
			wr.Ratios = append(wr.Ratios, Compare(b.System, m.name,
				tandem.figures(w, repeat, m.f), b.figures(w, repeat, m.f)))
		}
	}
}

// tandemRuns returns Tandem's runs (systems[0], when it is Tandem), nil if
// it has none.
func (wr *WorkloadReport) tandemRuns(systems []*System) *SystemRuns {
	if len(systems) == 0 || systems[0].Role != RoleTandem {
		return nil
	}
	for i := range wr.Systems {
		if wr.Systems[i].System == systems[0].Name {
			return &wr.Systems[i]
		}
	}
	return nil
}

// ratio returns the ratio of metric against baseline, if computed.
func (wr WorkloadReport) ratio(baseline, metric string) (Ratio, bool) {
	for _, r := range wr.Ratios {
		if r.Baseline == baseline && r.Metric == metric {
			return r, true
		}
	}
	return Ratio{}, false
}

// Failures returns a description of every run that failed or whose data
// verification found a mismatch, and of every scenario with a mismatch.
func (r *Report) Failures() []string {
	var out []string
	for _, w := range r.Workloads {
		for _, s := range w.Systems {
			for _, f := range s.Failed {
				out = append(out, fmt.Sprintf("%s on %s: %s", w.Workload.Name, s.System, f))
			}
			for _, run := range s.Runs {
				if run.Mismatches > 0 {
					out = append(out, fmt.Sprintf("%s on %s round %d: %d data mismatches, first: %s", w.Workload.Name, s.System, run.Round, run.Mismatches, run.FirstMismatch))
				}
			}
		}
	}
	for _, sc := range r.Scenarios {
		if sc.Mismatches > 0 && sc.Load != nil {
			out = append(out, fmt.Sprintf("scenario %s: %d data mismatches, first: %s", sc.Name, sc.Mismatches, sc.Load.FirstMismatch))
		}
	}
	return out
}

// write saves results.json, results.md and results.svg in r.OutDir.
func (r *Report) write() error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the report: %w", err)
	}
	files := map[string][]byte{
		"results.json": append(b, '\n'),
		"results.md":   []byte(r.Markdown()),
		"results.svg":  []byte(r.SVG()),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(r.OutDir, name), data, 0o644); err != nil {
			return fmt.Errorf("writing the report: %w", err)
		}
	}
	return nil
}

// ScenarioSummary summarizes the rounds of one scenario.
type ScenarioSummary struct {
	Name   string `json:"name"`
	Rounds int    `json:"rounds"`
	// FaultGap, LeaderServes and ReturnGap summarize the rounds' figures
	// (ns; LeaderServes and ReturnGap over the rounds that have them).
	FaultGap     Stat `json:"fault_gap_ns"`
	LeaderServes Stat `json:"leader_serves_after_ns"`
	ReturnGap    Stat `json:"return_gap_ns"`
	// Errors and Mismatches are totals over the rounds; Unmet counts the
	// rounds with an expectation not met.
	Errors     int64 `json:"errors"`
	Mismatches int64 `json:"mismatches"`
	Unmet      int   `json:"rounds_not_as_designed"`
}

// summarizeScenarios summarizes every scenario that ran more than once, in
// the order they first ran.
func (r *Report) summarizeScenarios() []ScenarioSummary {
	var names []string
	by := map[string][]ScenarioResult{}
	for _, s := range r.Scenarios {
		if s.Skipped {
			continue
		}
		if _, ok := by[s.Name]; !ok {
			names = append(names, s.Name)
		}
		by[s.Name] = append(by[s.Name], s)
	}
	var out []ScenarioSummary
	for _, n := range names {
		rs := by[n]
		if len(rs) < 2 {
			continue
		}
		m := ScenarioSummary{Name: n, Rounds: len(rs)}
		var fault, lead, ret []float64
		for _, s := range rs {
			fault = append(fault, float64(s.FaultGap))
			if s.LeaderServes > 0 {
				lead = append(lead, float64(s.LeaderServes))
			}
			if s.Rejoined {
				ret = append(ret, float64(s.ReturnGap))
			}
			m.Errors += s.Errors
			m.Mismatches += s.Mismatches
			if len(s.Unmet()) > 0 {
				m.Unmet++
			}
		}
		m.FaultGap, m.LeaderServes, m.ReturnGap = Summarize(fault), Summarize(lead), Summarize(ret)
		out = append(out, m)
	}
	return out
}
