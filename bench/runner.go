package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Run runs the benchmark cfg describes and returns its report, which it
// has also written under cfg.OutDir. Every process it started is stopped
// before it returns, also when ctx is cancelled or a step fails; the
// report then holds what was measured so far, with the error. Run also
// fails, after writing the report, when a run failed or data verification
// found a mismatch.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	workloads, err := SelectWorkloads(cfg.Workloads)
	if err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, workloads: workloads, sup: &supervisor{}, log: cfg.Logger}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.progress = cfg.Progress
	if r.progress == nil {
		r.progress = io.Discard
	}
	started := time.Now()
	rep := &Report{
		Started: started, Machine: machine(), Repeat: cfg.Repeat, Runtime: cfg.Runtime,
		Warmup: cfg.Warmup, Size: cfg.Size, Verify: cfg.Verify, OutDir: cfg.OutDir,
		Workloads: []WorkloadReport{}, Scenarios: []ScenarioResult{}, Notes: []string{},
	}
	if rep.OutDir == "" {
		rep.OutDir = filepath.Join("bench-results", started.Format("20060102-150405"))
	}
	if err := os.MkdirAll(filepath.Join(rep.OutDir, "logs"), 0o755); err != nil {
		return nil, fmt.Errorf("results directory: %w", err)
	}
	r.rep = rep

	runErr := r.run(ctx)
	r.log.Debug("stopping servers", "processes", len(r.sup.processes()))
	if err := r.sup.stopAll(); err != nil {
		rep.Notes = append(rep.Notes, "stopping the servers: "+err.Error())
	}
	for _, f := range r.files {
		f.Close()
	}
	if r.workDir != "" && !cfg.KeepWorkDir {
		if err := os.RemoveAll(r.workDir); err != nil {
			rep.Notes = append(rep.Notes, "removing the work directory: "+err.Error())
		}
	}
	rep.Processes = r.sup.processes()
	if rep.Processes == nil {
		rep.Processes = []ProcessInfo{}
	}
	rep.Finished = time.Now()
	rep.Wall = rep.Finished.Sub(rep.Started)
	r.finish()
	if runErr != nil {
		rep.Error = runErr.Error()
	}
	if err := rep.write(); err != nil {
		return rep, errors.Join(runErr, err)
	}
	if runErr != nil {
		return rep, runErr
	}
	if f := rep.Failures(); len(f) > 0 {
		return rep, fmt.Errorf("%d failure(s): %s", len(f), strings.Join(f, "; "))
	}
	return rep, nil
}

// runner is the state of one Run.
type runner struct {
	cfg       Config
	workloads []Workload
	sup       *supervisor
	log       *slog.Logger
	progress  io.Writer
	rep       *Report
	workDir   string
	files     []*os.File
	client    Client
	systems   []*System
}

// step prints a progress line.
func (r *runner) step(format string, args ...any) {
	fmt.Fprintf(r.progress, format+"\n", args...)
}

// logFile opens OutDir/logs/name.log for a server's output.
func (r *runner) logFile(name string) (*os.File, error) {
	f, err := os.Create(filepath.Join(r.rep.OutDir, "logs", name+".log"))
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	r.files = append(r.files, f)
	return f, nil
}

func (r *runner) run(ctx context.Context) error {
	cfg := r.cfg
	base := cfg.WorkDir
	if base != "" {
		if err := os.MkdirAll(base, 0o755); err != nil {
			return fmt.Errorf("work directory: %w", err)
		}
	}
	wd, err := os.MkdirTemp(base, "tandem-bench-")
	if err != nil {
		return fmt.Errorf("work directory: %w", err)
	}
	r.workDir = wd
	if cfg.KeepWorkDir {
		r.rep.Notes = append(r.rep.Notes, "work directory kept: "+wd)
	}

	if err := r.chooseClient(ctx); err != nil {
		return err
	}
	r.rep.Client, r.rep.ClientVersion = r.client.Name(), r.client.Version()
	if err := r.startSystems(ctx); err != nil {
		return err
	}
	r.rep.Systems = r.systems
	if len(r.workloads) == 0 {
		r.rep.Notes = append(r.rep.Notes, "no workloads: the exports were not filled (each scenario fills its own region)")
		return r.runScenarios(ctx)
	}
	for _, s := range r.systems {
		r.step("filling %s (%s) with %d MiB of verifiable data", s.Name, s.URI, cfg.Size/mib)
		d, err := prepareExport(ctx, s, cfg.Size)
		if err != nil {
			return err
		}
		r.rep.Notes = append(r.rep.Notes, fmt.Sprintf("%s filled in %v", s.Name, d.Round(time.Millisecond)))
	}
	if err := r.runWorkloads(ctx); err != nil {
		return err
	}
	return r.runScenarios(ctx)
}

func (r *runner) chooseClient(ctx context.Context) error {
	kind := r.cfg.Client
	if kind == ClientAuto {
		kind = ClientGo
		switch _, err := exec.LookPath("fio"); {
		case r.cfg.Verify:
			r.rep.Notes = append(r.rep.Notes, "verification asked: the Go load generator drives every system")
		case err == nil:
			kind = ClientFio
		default:
			r.rep.Notes = append(r.rep.Notes, "fio is not installed: the Go load generator drives every system")
		}
	}
	if kind == ClientGo {
		r.client = goClient{}
		return nil
	}
	dir := fioWorkDir(r.workDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("fio directory: %w", err)
	}
	f, err := newFioClient(ctx, dir)
	if err != nil {
		return err
	}
	r.client = f
	return nil
}

// startSystems starts (or connects) Tandem and the baselines; their data
// live in the work directory, one filesystem for all.
func (r *runner) startSystems(ctx context.Context) error {
	cfg := r.cfg
	if cfg.TandemURI != "" {
		s, err := externalSystem("tandem", RoleTandem, cfg.TandemURI)
		if err != nil {
			return err
		}
		r.systems = append(r.systems, s)
	} else if cfg.TandemMode == TandemCluster {
		r.step("starting tandem as 3 agent processes (%s agent)", cfg.TandemBinary)
		s, err := startTandemCluster(ctx, cfg.TandemBinary, filepath.Join(r.workDir, "tandem"), cfg.Size, r.agentLogs("tandem"), r.sup)
		if err != nil {
			return fmt.Errorf("%w (logs: %s)", err, filepath.Join(r.rep.OutDir, "logs", "tandem-n*.log"))
		}
		r.systems = append(r.systems, s)
	} else {
		log, err := r.logFile("tandem")
		if err != nil {
			return err
		}
		r.step("starting tandem dev (%s)", cfg.TandemBinary)
		s, err := startTandem(ctx, cfg.TandemBinary, filepath.Join(r.workDir, "tandem"), cfg.Size, log, r.sup)
		if err != nil {
			return fmt.Errorf("%w (log: %s)", err, log.Name())
		}
		r.systems = append(r.systems, s)
	}
	if len(r.workloads) == 0 {
		return nil // the scenarios run against Tandem alone
	}
	for _, b := range cfg.Baselines {
		log, err := r.logFile(b)
		if err != nil {
			return err
		}
		file := filepath.Join(r.workDir, b+".img")
		if err := createFile(file, cfg.Size); err != nil {
			return err
		}
		r.step("starting %s", b)
		var s *System
		switch b {
		case BaselineNbdkit:
			s, err = startNbdkit(ctx, file, r.workDir, log, r.sup)
		case BaselineNBDServer:
			s, err = startNBDServer(ctx, file, r.workDir, log, r.sup)
			if errors.Is(err, errNotInstalled) {
				r.rep.Notes = append(r.rep.Notes, "nbd-server is not installed (Debian package nbd-server): compared with the other baselines only")
				r.step("nbd-server is not installed: skipped")
				continue
			}
		}
		if err != nil {
			return fmt.Errorf("%w (log: %s)", err, log.Name())
		}
		r.systems = append(r.systems, s)
	}
	for _, u := range cfg.BaselineURIs {
		s, err := externalSystem(u.Name, RoleBaseline, u.URI)
		if err != nil {
			return err
		}
		r.systems = append(r.systems, s)
	}
	return nil
}

// createFile creates a sparse file of size bytes.
func createFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("baseline file: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("baseline file: %w", err)
	}
	return f.Close()
}

// runWorkloads runs every workload on every system: for each workload,
// the rounds in turn, and in each round every system once, so that the
// systems interleave (A, B, A, B, …) and share any drift of the machine.
func (r *runner) runWorkloads(ctx context.Context) error {
	cfg := r.cfg
	total := len(r.workloads) * cfg.Repeat * len(r.systems)
	n := 0
	for _, w := range r.workloads {
		wr := WorkloadReport{Workload: w}
		for _, s := range r.systems {
			wr.Systems = append(wr.Systems, SystemRuns{System: s.Name, Runs: []Result{}})
		}
		r.rep.Workloads = append(r.rep.Workloads, wr)
		cur := &r.rep.Workloads[len(r.rep.Workloads)-1]
		for round := 1; round <= cfg.Repeat; round++ {
			for i, s := range r.systems {
				n++
				prefix := fmt.Sprintf("[%d/%d] %s %s round %d/%d ...", n, total, w.Name, s.Name, round, cfg.Repeat)
				res, err := r.client.Run(ctx, s.Endpoint(), w, RunOptions{
					Runtime: cfg.Runtime, Warmup: cfg.Warmup, Region: cfg.Size, Round: round,
					Verify: cfg.Verify, Prefilled: cfg.Verify,
				})
				if ctx.Err() != nil {
					return ctx.Err()
				}
				res.Round = round
				if err != nil {
					r.log.Warn("run failed", "workload", w.Name, "system", s.Name, "round", round, "err", err)
					cur.Systems[i].Failed = append(cur.Systems[i].Failed, fmt.Sprintf("round %d: %v", round, err))
					r.step("%s FAILED: %v", prefix, firstLine(err.Error()))
					continue
				}
				r.log.Debug("run", "workload", w.Name, "system", s.Name, "round", round, "iops", res.IOPS,
					"bytes_per_sec", res.BytesPerSec, "read_p99", res.Read.P99, "write_p99", res.Write.P99, "sync_p99", res.Sync.P99)
				cur.Systems[i].Runs = append(cur.Systems[i].Runs, res)
				msg := headline(w, res)
				if res.Mismatches > 0 {
					msg += fmt.Sprintf(" — %d DATA MISMATCHES: %s", res.Mismatches, res.FirstMismatch)
				}
				r.step("%s %s", prefix, msg)
			}
			if lb, ok := r.client.(logBounder); ok && cfg.LogBound && w.hasLogBound() {
				if err := r.measureBound(ctx, lb, cur, round); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// measureBound runs the disk-bound probe of cur's workload once (see
// bound.go); it returns only the context's error.
func (r *runner) measureBound(ctx context.Context, lb logBounder, cur *WorkloadReport, round int) error {
	w := cur.Workload
	if cur.LogBound == nil {
		cur.LogBound = &LogBound{Runs: []float64{}}
	}
	prefix := fmt.Sprintf("%s disk bound (%d synced logs) round %d/%d ...", w.Name, boundLogs, round, r.cfg.Repeat)
	perLog, err := lb.LogBound(ctx, filepath.Join(r.workDir, "log-bound"), w, RunOptions{
		Runtime: r.cfg.Runtime, Warmup: r.cfg.Warmup, Region: r.cfg.Size, Round: round,
	})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		r.log.Warn("disk bound failed", "workload", w.Name, "round", round, "err", err)
		cur.LogBound.Failed = append(cur.LogBound.Failed, fmt.Sprintf("round %d: %v", round, err))
		r.step("%s FAILED: %v", prefix, firstLine(err.Error()))
		return nil
	}
	cur.LogBound.Runs = append(cur.LogBound.Runs, perLog)
	r.step("%s %.0f MiB/s per log", prefix, perLog/mib)
	return nil
}

// agentLogs opens the logs of a cluster's agents as OutDir/logs/prefix-NAME.log.
func (r *runner) agentLogs(prefix string) func(agent string) (io.Writer, error) {
	return func(agent string) (io.Writer, error) { return r.logFile(prefix + "-" + agent) }
}

// runScenarios runs the configured fault scenarios against Tandem with
// the Go load generator, each ScenarioRounds times.
func (r *runner) runScenarios(ctx context.Context) error {
	env := ScenarioEnv{Tandem: r.systems[0], Region: r.cfg.Size, Progress: r.step}
	if r.cfg.TandemBinary != "" {
		clusters := 0
		env.StartCluster = func(ctx context.Context, name string) (*Cluster, error) {
			clusters++
			id := fmt.Sprintf("%s-%d", name, clusters)
			c, err := startCluster(ctx, r.cfg.TandemBinary, filepath.Join(r.workDir, id), r.cfg.Size, r.agentLogs(id), r.sup)
			if err != nil {
				return nil, fmt.Errorf("%w (logs: %s)", err, filepath.Join(r.rep.OutDir, "logs", id+"-n*.log"))
			}
			return c, nil
		}
	}
	rounds := max(r.cfg.ScenarioRounds, 1)
	for _, name := range r.cfg.Scenarios {
		sc, err := scenarioByName(name)
		if err != nil {
			return err
		}
		for round := 1; round <= rounds; round++ {
			label := name
			if rounds > 1 {
				label = fmt.Sprintf("%s (round %d/%d)", name, round, rounds)
			}
			r.step("scenario %s: %s", label, sc.Description())
			res, err := sc.Run(ctx, env)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("scenario %s: %w", label, err)
			}
			res.Round = round
			if res.Skipped {
				r.step("scenario %s skipped: %s", label, res.SkipReason)
			} else {
				r.step("scenario %s: %s", label, res.summary())
				for _, c := range res.Unmet() {
					r.step("scenario %s: NOT AS DESIGNED: %s (%s)", label, c.What, c.Detail)
				}
			}
			r.rep.Scenarios = append(r.rep.Scenarios, res)
		}
	}
	return nil
}

// finish computes the summaries and ratios of whatever was measured.
func (r *runner) finish() {
	for i := range r.rep.Workloads {
		wr := &r.rep.Workloads[i]
		for j := range wr.Systems {
			wr.Systems[j].summarize(wr.Workload, r.cfg.Repeat)
		}
		if len(r.systems) > 0 {
			wr.computeRatios(r.systems, r.cfg.Repeat)
		}
		if wr.LogBound != nil {
			wr.LogBound.summarize(wr.tandemRuns(r.systems), wr.Systems)
		}
	}
	r.rep.ScenarioSummaries = r.rep.summarizeScenarios()
	if r.rep.Systems == nil {
		r.rep.Systems = r.systems
	}
	if r.rep.Systems == nil {
		r.rep.Systems = []*System{}
	}
}

// headline renders a run's main figure for the progress line.
func headline(w Workload, r Result) string {
	s := fmtIOPS(r.IOPS)
	if w.Throughput() {
		s = fmtBW(r.BytesPerSec)
	}
	if w.Latency {
		s += ", p99 " + fmtLat(r.Lat(w).P99)
	}
	return s
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// machine describes this machine.
func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), OS: runtime.GOOS, Arch: runtime.GOARCH, GoVersion: runtime.Version()}
	m.Hostname, _ = os.Hostname()
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}
