package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
)

// tinyConfig is a run of a second per workload against
// tandem dev and the baselines, all started by the harness.
func tinyConfig(t *testing.T, client string, workloads ...string) Config {
	cfg := DefaultConfig()
	cfg.TandemBinary = testbin.Binary(t)
	cfg.Client = client
	cfg.Workloads = workloads
	cfg.Repeat = 2
	// Long enough that a round completes requests on a loaded machine
	// (a durable QD32 round of a baseline once completed none in 300 ms).
	cfg.Runtime = time.Second
	cfg.Warmup = 50 * time.Millisecond
	cfg.Size = 16 * mib
	cfg.OutDir = filepath.Join(t.TempDir(), "out")
	cfg.WorkDir = t.TempDir()
	cfg.Scenarios = nil
	var progress bytes.Buffer
	cfg.Progress = &progress
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("progress:\n%s", progress.String())
		}
	})
	return cfg
}

// TestRunGoClient runs two workloads and the agent-kill scenario with the
// Go load generator, verifying data, against tandem dev, nbdkit and
// nbd-server, and checks the harness's outputs and clean-up.
func TestRunGoClient(t *testing.T) {
	testbin.Require(t, "nbdkit", "nbd-server")
	cfg := tinyConfig(t, ClientGo, "randread-4k-qd1", "randwrite-4k-qd32-durable")
	cfg.Verify = true
	cfg.Scenarios = []string{ScenarioAgentKill}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, cfg, rep, []string{"tandem", "nbdkit", "nbd-server"})
	if len(rep.Scenarios) != 1 {
		t.Fatalf("%d scenario results, want 1", len(rep.Scenarios))
	}
	sc := rep.Scenarios[0]
	if sc.Skipped || sc.Load == nil {
		t.Fatalf("agent-kill did not run: %+v", sc)
	}
	if sc.Reconnects < 1 || sc.FaultGap <= 0 || sc.Mismatches != 0 || sc.Verified == 0 {
		t.Errorf("agent-kill: %d reconnects, fault gap %v, %d mismatches (%s), %d verified; want a reconnect, a gap and verified data",
			sc.Reconnects, sc.FaultGap, sc.Mismatches, sc.Load.FirstMismatch, sc.Verified)
	}
	// The killed tandem and its replacement are both among the processes.
	n := 0
	for _, p := range rep.Processes {
		if p.Name == "tandem" {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d tandem processes recorded, want 2 (before and after the kill): %+v", n, rep.Processes)
	}
	for _, w := range rep.Workloads {
		for _, s := range w.Systems {
			for _, r := range s.Runs {
				if r.Client != ClientGo || (w.Workload.Reads() && r.Verified == 0) {
					t.Errorf("%s on %s: client %q, %d units verified", w.Workload.Name, s.System, r.Client, r.Verified)
				}
			}
		}
	}
}

// TestRunFio runs one workload with fio's nbd engine.
func TestRunFio(t *testing.T) {
	testbin.Require(t, "nbdkit", "fio")
	cfg := tinyConfig(t, ClientAuto, "randrw70-4k-qd32")
	cfg.Baselines = []string{BaselineNbdkit}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Client != ClientFio {
		t.Errorf("auto chose client %q with fio installed", rep.Client)
	}
	checkReport(t, cfg, rep, []string{"tandem", "nbdkit"})
	r := rep.Workloads[0].Systems[0].Runs[0]
	if r.ReadIOPS <= 0 || r.WriteIOPS <= 0 || r.Read.P99 <= 0 || r.Write.P99 <= 0 {
		t.Errorf("fio mix run lacks figures: %+v", r)
	}
}

// TestRunFioLogBound runs the sequential durable write workload with fio
// and checks the disk bound measured after each round, and Tandem's share
// of it.
func TestRunFioLogBound(t *testing.T) {
	testbin.Require(t, "nbdkit", "fio")
	cfg := tinyConfig(t, ClientFio, "write-1m-qd8-durable")
	cfg.Baselines = []string{BaselineNbdkit}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, cfg, rep, []string{"tandem", "nbdkit"})
	w := rep.Workloads[0]
	lb := w.LogBound
	if lb == nil || len(lb.Runs) != cfg.Repeat || len(lb.Failed) != 0 {
		t.Fatalf("disk bound %+v, want %d runs", lb, cfg.Repeat)
	}
	for _, v := range lb.Runs {
		if v <= 0 {
			t.Errorf("disk bound run of %v bytes/s", v)
		}
	}
	want := w.Systems[0].BytesPerSec.Median / Median(lb.Runs)
	if lb.PerLog.Median != Median(lb.Runs) || math.Abs(lb.TandemShare-want) > 1e-9*want {
		t.Errorf("disk bound summary %+v, want median %v and share %v", lb, Median(lb.Runs), want)
	}
	wantVs := lb.PerLog.Median / w.Systems[1].BytesPerSec.Median
	if got, ok := lb.VsBaselines["nbdkit"]; !ok || len(lb.VsBaselines) != 1 || math.Abs(got-wantVs) > 1e-9*wantVs {
		t.Errorf("disk bound against the baselines %v, want nbdkit %v", lb.VsBaselines, wantVs)
	}
	md := rep.Markdown()
	if !strings.Contains(md, "**Disk bound, write-1m-qd8-durable:**") {
		t.Errorf("no disk bound in the Markdown:\n%s", md)
	}
	if want := fmt.Sprintf("Each bare log wrote %.2f× nbdkit's bandwidth", wantVs); !strings.Contains(md, want) {
		t.Errorf("the Markdown lacks %q:\n%s", want, md)
	}
}

// TestRunCancelled cancels a run in the middle of its workloads and checks
// that every process is stopped and the partial report written.
func TestRunCancelled(t *testing.T) {
	testbin.Require(t, "nbdkit")
	cfg := tinyConfig(t, ClientGo, "randread-4k-qd32", "randwrite-4k-qd32")
	cfg.Baselines = []string{BaselineNbdkit}
	cfg.Runtime = time.Second
	cfg.Repeat = 5
	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	start := time.Now()
	rep, err := Run(ctx, cfg)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run = %v, want the context's error", err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("Run took %v to return after its context ended", d)
	}
	if rep == nil || rep.Error == "" {
		t.Fatalf("no partial report with the error: %+v", rep)
	}
	if _, err := os.Stat(filepath.Join(cfg.OutDir, "results.json")); err != nil {
		t.Errorf("partial results not written: %v", err)
	}
	checkStopped(t, rep)
}

// checkReport checks the outputs of a completed run.
func checkReport(t *testing.T, cfg Config, rep *Report, systems []string) {
	t.Helper()
	checkStopped(t, rep)
	if _, err := os.Stat(cfg.WorkDir); err == nil {
		if ents, _ := os.ReadDir(cfg.WorkDir); len(ents) != 0 {
			t.Errorf("work directory not cleaned: %v", ents)
		}
	}
	var names []string
	for _, s := range rep.Systems {
		names = append(names, s.Name)
	}
	if strings.Join(names, ",") != strings.Join(systems, ",") {
		t.Fatalf("systems %v, want %v", names, systems)
	}
	if len(rep.Workloads) != len(cfg.Workloads) {
		t.Fatalf("%d workloads reported, want %d", len(rep.Workloads), len(cfg.Workloads))
	}

	// JSON: well-formed, and the raw runs are all there.
	b, err := os.ReadFile(filepath.Join(cfg.OutDir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("results.json: %v", err)
	}
	for _, w := range back.Workloads {
		if len(w.Systems) != len(systems) {
			t.Errorf("%s: %d systems in JSON", w.Workload.Name, len(w.Systems))
		}
		for _, s := range w.Systems {
			if len(s.Runs) != cfg.Repeat || len(s.Failed) != 0 {
				t.Errorf("%s on %s: %d runs, failures %v; want %d runs", w.Workload.Name, s.System, len(s.Runs), s.Failed, cfg.Repeat)
			}
			for i, r := range s.Runs {
				if r.Round != i+1 || r.IOPS <= 0 || r.Elapsed <= 0 {
					t.Errorf("%s on %s run %d: round %d, %v IOPS over %v", w.Workload.Name, s.System, i, r.Round, r.IOPS, r.Elapsed)
				}
			}
		}
		// Ratios: Tandem's median over each baseline's median, per round
		// min–max, recomputed here from the raw runs.
		tandem := w.Systems[0]
		for _, base := range w.Systems[1:] {
			var tv, bv []float64
			var lo, hi = math.Inf(1), math.Inf(-1)
			for i := range tandem.Runs {
				tv = append(tv, tandem.Runs[i].IOPS)
				bv = append(bv, base.Runs[i].IOPS)
				if base.Runs[i].IOPS == 0 {
					continue // no ratio for that round (Compare skips it)
				}
				q := tandem.Runs[i].IOPS / base.Runs[i].IOPS
				lo, hi = math.Min(lo, q), math.Max(hi, q)
			}
			r, ok := w.ratio(base.System, "iops")
			if !ok {
				t.Errorf("%s: no IOPS ratio to %s", w.Workload.Name, base.System)
				continue
			}
			want := Median(tv) / Median(bv)
			if math.Abs(float64(r.Median)-want) > 1e-9*want || float64(r.Min) != lo || float64(r.Max) != hi {
				t.Errorf("%s vs %s: ratio %+v, want median %v, range %v–%v", w.Workload.Name, base.System, r, want, lo, hi)
			}
			if _, ok := w.ratio(base.System, "p99"); ok != w.Workload.Latency {
				t.Errorf("%s vs %s: p99 ratio present %v, want %v", w.Workload.Name, base.System, ok, w.Workload.Latency)
			}
		}
	}

	// Markdown: one row per workload and system, and a ratio column per
	// baseline.
	md, err := os.ReadFile(filepath.Join(cfg.OutDir, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	if string(md) != rep.Markdown() {
		t.Error("results.md differs from Report.Markdown")
	}
	rows := 0
	for _, l := range strings.Split(string(md), "\n") {
		if strings.HasPrefix(l, "| ") && !strings.HasPrefix(l, "| Workload") && !strings.HasPrefix(l, "| Scenario") && !strings.Contains(l, "agent-kill") {
			rows++
			// Seven columns, then one per baseline.
			if n := strings.Count(l, "|"); n != 8+len(systems)-1 {
				t.Errorf("table row with %d cell separators, want %d: %s", n, 8+len(systems)-1, l)
			}
		}
	}
	if rows != len(cfg.Workloads)*len(systems) {
		t.Errorf("%d table rows, want %d:\n%s", rows, len(cfg.Workloads)*len(systems), md)
	}
	for _, s := range systems[1:] {
		if !strings.Contains(string(md), "Tandem ÷ "+s) {
			t.Errorf("no ratio column for %s", s)
		}
	}

	// SVG: well-formed XML, an svg root, a bar per workload and system.
	svg, err := os.ReadFile(filepath.Join(cfg.OutDir, "results.svg"))
	if err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(bytes.NewReader(svg))
	root, rects := "", 0
	for {
		tok, err := d.Token()
		if err != nil {
			if err.Error() != "EOF" {
				t.Fatalf("results.svg is not well-formed: %v", err)
			}
			break
		}
		if se, ok := tok.(xml.StartElement); ok {
			if root == "" {
				root = se.Name.Local
			}
			if se.Name.Local == "rect" {
				rects++
			}
		}
	}
	// A background, one legend swatch per system, one bar per run.
	if want := 1 + len(systems) + len(cfg.Workloads)*len(systems); root != "svg" || rects != want {
		t.Errorf("results.svg: root %q with %d rects, want svg with %d", root, rects, want)
	}
}

// checkStopped checks that every process the run started is gone, and
// that the test process has no children left.
func checkStopped(t *testing.T, rep *Report) {
	t.Helper()
	if len(rep.Processes) == 0 {
		t.Error("no processes recorded")
	}
	for _, p := range rep.Processes {
		if alive(p.PID) {
			t.Errorf("%s (pid %d) still running after Run returned", p.Name, p.PID)
		}
	}
	ents, _ := os.ReadDir("/proc")
	me := strconv.Itoa(os.Getpid())
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == me && f[0] != "Z" {
			t.Errorf("child process left running: %s", s[:i+1])
		}
	}
}

// TestLeaderKillScenario runs the leader-kill scenario alone (no workloads)
// on a three-process cluster and checks what it reports: the killed agent
// led, the client's agent was another one, a survivor took over, the
// killed agent rejoined, and no read returned wrong data. It checks the
// harness, not the figures.
func TestLeaderKillScenario(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-process cluster")
	}
	cfg := tinyConfig(t, ClientGo)
	cfg.Workloads = []string{NoWorkloads}
	cfg.Baselines = nil
	cfg.Scenarios = []string{ScenarioLeaderKill}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Scenarios) != 1 {
		t.Fatalf("%d scenario results, want 1", len(rep.Scenarios))
	}
	sc := rep.Scenarios[0]
	if sc.Skipped || sc.Load == nil {
		t.Fatalf("leader-kill did not run: %+v", sc)
	}
	if sc.Killed == "" || sc.ClientAgent == "" || sc.Killed == sc.ClientAgent {
		t.Errorf("killed %q with the client on %q: want the leader killed and the client on another agent", sc.Killed, sc.ClientAgent)
	}
	if sc.NewLeader == "" || sc.NewLeader == sc.Killed || sc.LeaderServes <= 0 {
		t.Errorf("new leader %q serving after %v: want a survivor", sc.NewLeader, sc.LeaderServes)
	}
	if !sc.Rejoined || sc.Mismatches != 0 || sc.Verified == 0 || sc.FaultGap <= 0 {
		t.Errorf("rejoined %v, %d mismatches, %d verified, fault gap %v", sc.Rejoined, sc.Mismatches, sc.Verified, sc.FaultGap)
	}
	md, err := os.ReadFile(filepath.Join(rep.OutDir, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "| leader-kill | tandem") {
		t.Errorf("results.md lacks the leader-kill row:\n%s", md)
	}
}
