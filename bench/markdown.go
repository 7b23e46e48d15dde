package bench

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Markdown renders the report: the run's settings, one table row per
// workload and system with medians, min–max and Tandem's ratios to each
// baseline, then the scenarios and the notes.
func (r *Report) Markdown() string {
	var b strings.Builder
	b.WriteString("## Tandem benchmark\n\n")
	m := r.Machine
	fmt.Fprintf(&b, "%s on %s (%d CPUs", r.Started.UTC().Format("2006-01-02 15:04 MST"), orDash(m.Hostname), m.CPUs)
	if m.CPUModel != "" {
		fmt.Fprintf(&b, ", %s", m.CPUModel)
	}
	if m.Kernel != "" {
		fmt.Fprintf(&b, ", Linux %s", m.Kernel)
	}
	fmt.Fprintf(&b, "). Client: %s, the same for every system. %d round(s) of %v (after %v of warm-up) per workload and system, interleaved; %s exports pre-filled with the same data, all files in one filesystem. Wall time %v.\n\n",
		orDash(r.ClientVersion), r.Repeat, r.Runtime, r.Warmup, fmtSize(r.Size), r.Wall.Round(time.Second))
	if len(r.Systems) > 0 {
		b.WriteString("Systems:\n\n")
		for _, s := range r.Systems {
			fmt.Fprintf(&b, "- **%s**: %s (`%s`", s.Name, s.Description, s.URI)
			if s.Version != "" {
				fmt.Fprintf(&b, ", %s", s.Version)
			}
			b.WriteString(")\n")
		}
		b.WriteString("\n")
	}

	var baselines []string
	tandem := ""
	for _, s := range r.Systems {
		if s.Role == RoleBaseline {
			baselines = append(baselines, s.Name)
		} else {
			tandem = s.Name
		}
	}
	if len(r.Workloads) > 0 {
		b.WriteString("| Workload | System | IOPS median (min–max) | MiB/s | p50 | p99 | p99.9 |")
		for _, bl := range baselines {
			fmt.Fprintf(&b, " Tandem ÷ %s |", bl)
		}
		b.WriteString("\n|---|---|--:|--:|--:|--:|--:|")
		for range baselines {
			b.WriteString("---|")
		}
		b.WriteString("\n")
		for _, w := range r.Workloads {
			for i, s := range w.Systems {
				name := ""
				if i == 0 {
					name = w.Workload.Name
				}
				sys := s.System
				if sys == tandem {
					sys = "**" + sys + "**"
				}
				fmt.Fprintf(&b, "| %s | %s | ", name, sys)
				if s.IOPS.N == 0 {
					b.WriteString("FAILED | | | | |")
				} else {
					fmt.Fprintf(&b, "%s (%s–%s) | %.1f | %s | %s | %s |",
						fmtCount(s.IOPS.Median), fmtCount(s.IOPS.Min), fmtCount(s.IOPS.Max),
						s.BytesPerSec.Median/mib,
						fmtLat(time.Duration(s.P50.Median)), fmtLat(time.Duration(s.P99.Median)), fmtLat(time.Duration(s.P999.Median)))
				}
				for _, bl := range baselines {
					if s.System != tandem {
						b.WriteString(" |")
						continue
					}
					fmt.Fprintf(&b, " %s |", ratioCell(w, bl))
				}
				b.WriteString("\n")
			}
		}
		b.WriteString(`
IOPS: median over the rounds, with the lowest and highest round. MiB/s and latencies: medians over the rounds. Latencies are completion latencies of the workload's reads (of its writes for write-only workloads), each round's percentile from the client's histogram. In the *durable* rows a FLUSH follows every write (fio --fsync=1 queues it behind the write; each Go client goroutine waits for its flush before its next write): IOPS counts the writes, the latency columns are the write's alone, the flush latencies are in results.json (sync_lat).
Tandem ÷ baseline: the ratio of the medians, with the lowest and highest per-round ratio (Tandem's run divided by the baseline's run of the same round). Above 1× Tandem does more I/O; for latencies (p99, on the QD1 rows) above 1× Tandem is slower.
`)
		for _, w := range r.Workloads {
			logBoundMarkdown(&b, w)
		}
	}

	if len(r.Scenarios) > 0 {
		r.scenariosMarkdown(&b)
	}
	if f := r.Failures(); len(f) > 0 {
		b.WriteString("\n### Failures\n\n")
		for _, x := range f {
			fmt.Fprintf(&b, "- %s\n", x)
		}
	}
	if r.Error != "" {
		fmt.Fprintf(&b, "\n**The run ended early:** %s\n", firstLine(r.Error))
	}
	if len(r.Notes) > 0 {
		b.WriteString("\nNotes:\n\n")
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	return b.String()
}

// ratioCell renders Tandem's ratios to baseline on workload w.
func ratioCell(w WorkloadReport, baseline string) string {
	var parts []string
	metrics := []string{"iops"}
	if w.Workload.Latency {
		metrics = append(metrics, "p99")
	}
	for _, m := range metrics {
		r, ok := w.ratio(baseline, m)
		if !ok || !r.Median.Valid() {
			continue
		}
		label := "IOPS"
		if m != "iops" {
			label = m
		}
		parts = append(parts, fmt.Sprintf("%s %s (%s–%s)", label, fmtRatio(r.Median), fmtNum(r.Min), fmtNum(r.Max)))
	}
	if len(parts) == 0 {
		return "n/a"
	}
	return strings.Join(parts, ", ")
}

func fmtRatio(f Float) string {
	if !f.Valid() {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", float64(f))
}

// fmtNum renders a ratio without its unit.
func fmtNum(f Float) string {
	if !f.Valid() {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", float64(f))
}

// fmtCount renders a count per second compactly: 912, 12.3k, 1.25M.
func fmtCount(v float64) string {
	switch {
	case math.IsNaN(v):
		return "n/a"
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	case v >= 1e3:
		return fmt.Sprintf("%.2fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

func fmtIOPS(v float64) string { return fmtCount(v) + " IOPS" }

// fmtBW renders bytes per second in binary units.
func fmtBW(v float64) string {
	if v >= 1<<30 {
		return fmt.Sprintf("%.2f GiB/s", v/(1<<30))
	}
	return fmt.Sprintf("%.0f MiB/s", v/(1<<20))
}

// fmtLat renders a duration with three significant digits: 71.2 µs, 1.25 ms.
func fmtLat(d time.Duration) string {
	switch {
	case d <= 0:
		return "—"
	case d < time.Millisecond:
		return sig3(float64(d)/1e3) + " µs"
	case d < time.Second:
		return sig3(float64(d)/1e6) + " ms"
	}
	return sig3(d.Seconds()) + " s"
}

// sig3 renders v with about three significant digits, without exponents.
func sig3(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// fmtSize renders bytes as MiB or GiB.
func fmtSize(n int64) string {
	if n >= 1<<30 && n%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", n>>30)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

// relTo renders an offset from the fault ("120 ms after", "3 ms before").
func relTo(d time.Duration) string {
	if d < 0 {
		return fmtLat(-d) + " before"
	}
	if d == 0 {
		return "at"
	}
	return fmtLat(d) + " after"
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

// scenariosMarkdown renders the scenario table, the summary over rounds,
// what each scenario did, and the expectations it did not meet.
func (r *Report) scenariosMarkdown(b *strings.Builder) {
	b.WriteString("\n### Fault scenarios (Go load generator, measured from the client)\n\n")
	b.WriteString("| Scenario | System | Killed (client on) | I/O gap at the fault | Longest gap before the fault | Longest gap in the run | Failed requests | Reconnects | Reads checked (4 KiB units) | Mismatches | New leader serves after | Rejoined after (I/O gap then) |\n|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, s := range r.Scenarios {
		name := s.Name
		if s.Round > 1 {
			name = fmt.Sprintf("%s #%d", s.Name, s.Round)
		}
		if s.Skipped {
			fmt.Fprintf(b, "| %s | %s | skipped: %s | | | | | | | | | |\n", name, s.System, s.SkipReason)
			continue
		}
		killed := "all"
		if s.Killed != "" {
			killed = fmt.Sprintf("%s (%s)", s.Killed, s.ClientAgent)
		}
		leader, rejoin := "—", "—"
		if s.LeaderServes > 0 {
			leader = fmt.Sprintf("%s (%s)", fmtLat(s.LeaderServes), s.NewLeader)
		}
		if s.Rejoined {
			rejoin = fmt.Sprintf("%s (%s)", fmtLat(s.RejoinAfter), fmtGap(s.ReturnGap))
		} else if s.Killed != "" {
			rejoin = "**did not rejoin**"
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s (%s the fault) | %d | %d | %d | %d | %s | %s |\n", name, s.System, killed,
			fmtGap(s.FaultGap), fmtLat(s.NoiseGap), fmtLat(s.MaxGap), relTo(s.MaxGapAt), s.Errors, s.Reconnects, s.Verified, s.Mismatches, leader, rejoin)
	}
	if sums := r.ScenarioSummaries; len(sums) > 0 {
		b.WriteString("\n| Scenario | Rounds | I/O gap at the fault, median (min–max) | New leader serves after, median (max) | I/O gap when the agent returns, median (max) | Failed requests (total) | Mismatches (total) | Rounds with an expectation not met |\n|---|--:|--:|--:|--:|--:|--:|--:|\n")
		for _, m := range sums {
			lead := "—"
			if m.LeaderServes.N > 0 {
				lead = fmt.Sprintf("%s (%s)", fmtLat(durationOf(m.LeaderServes.Median)), fmtLat(durationOf(m.LeaderServes.Max)))
			}
			ret := "—"
			if m.ReturnGap.N > 0 {
				ret = fmt.Sprintf("%s (%s)", fmtGap(durationOf(m.ReturnGap.Median)), fmtGap(durationOf(m.ReturnGap.Max)))
			}
			fmt.Fprintf(b, "| %s | %d | %s (%s–%s) | %s | %s | %d | %d | %d |\n", m.Name, m.Rounds,
				fmtGap(durationOf(m.FaultGap.Median)), fmtGap(durationOf(m.FaultGap.Min)), fmtGap(durationOf(m.FaultGap.Max)),
				lead, ret, m.Errors, m.Mismatches, m.Unmet)
		}
	}
	for _, s := range r.Scenarios {
		if s.Skipped {
			continue
		}
		title := s.Name
		if s.Round > 1 {
			title = fmt.Sprintf("%s #%d", s.Name, s.Round)
		}
		fmt.Fprintf(b, "\n**%s**", title)
		if s.Round <= 1 {
			fmt.Fprintf(b, ": %s. Load: %s.", s.Description, s.Workload.Description)
		} else {
			b.WriteString(":")
		}
		if len(s.Phases) > 0 {
			var ph []string
			for _, p := range s.Phases {
				ph = append(ph, fmt.Sprintf("%s %s", p.Name, fmtLat(p.Duration)))
			}
			fmt.Fprintf(b, " Fault at %s into the load; %s.", fmtLat(s.FaultAt), strings.Join(ph, ", "))
		}
		b.WriteString("\n")
		for _, c := range s.Unmet() {
			fmt.Fprintf(b, "- **Not as designed:** %s", c.What)
			if c.Detail != "" {
				fmt.Fprintf(b, " (%s)", c.Detail)
			}
			b.WriteString("\n")
		}
		if s.Round <= 1 {
			for _, n := range s.Notes {
				fmt.Fprintf(b, "- %s\n", n)
			}
		}
	}
}

// durationOf converts a Stat's nanoseconds back to a duration.
func durationOf(ns float64) time.Duration { return time.Duration(ns) }

// logBoundMarkdown describes w's disk bound, if it was measured.
func logBoundMarkdown(b *strings.Builder, w WorkloadReport) {
	lb := w.LogBound
	if lb == nil || (lb.PerLog.N == 0 && len(lb.Failed) == 0) {
		return
	}
	fmt.Fprintf(b, "\n**Disk bound, %s:** %d synced logs writing at once on this filesystem (fio: %d jobs, each writing its own file sequentially in %s O_DIRECT writes, each followed by fdatasync; one run after each round)",
		w.Workload.Name, boundLogs, boundLogs, fmtSize(int64(w.Workload.BlockSize)))
	if lb.PerLog.N == 0 {
		fmt.Fprintf(b, " could not be measured: %s\n", firstLine(lb.Failed[0]))
		return
	}
	fmt.Fprintf(b, " wrote %.0f MiB/s each (%.0f–%.0f).", lb.PerLog.Median/mib, lb.PerLog.Min/mib, lb.PerLog.Max/mib)
	if lb.TandemShare > 0 {
		fmt.Fprintf(b, " Tandem, whose %d replicas each write every byte to such a log on this filesystem, reached **%.2f×** of that (its checkpoints also write the volume files).", boundLogs, lb.TandemShare)
	}
	if len(lb.VsBaselines) > 0 {
		var parts []string
		for _, s := range w.Systems { // in the table's order
			if v, ok := lb.VsBaselines[s.System]; ok {
				parts = append(parts, fmt.Sprintf("%.2f× %s's", v, s.System))
			}
		}
		fmt.Fprintf(b, " Each bare log wrote %s bandwidth: about what a cluster whose only cost were its logs would reach.", strings.Join(parts, " and "))
	}
	b.WriteString("\n")
}
