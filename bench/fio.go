package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// fioClient runs fio with its built-in nbd engine (libnbd): one fio job
// per workload, one NBD connection per fio job.
type fioClient struct {
	prog    string
	version string
	dir     string // for fio's JSON output files
}

// newFioClient finds fio on the PATH.
func newFioClient(ctx context.Context, dir string) (*fioClient, error) {
	prog, err := exec.LookPath("fio")
	if err != nil {
		return nil, fmt.Errorf("fio is not installed (Debian package fio): %w", err)
	}
	return &fioClient{prog: prog, version: toolVersion(ctx, prog, "--version"), dir: dir}, nil
}

// Name implements Client.
func (f *fioClient) Name() string { return ClientFio }

// Version implements Client.
func (f *fioClient) Version() string { return f.version + " (nbd engine)" }

// fioArgs returns fio's command line for w against uri.
func fioArgs(w Workload, uri string, o RunOptions, out string) []string {
	var rw string
	switch {
	case w.ReadPercent == 100 && w.Random:
		rw = "randread"
	case w.ReadPercent == 100:
		rw = "read"
	case w.ReadPercent == 0 && w.Random:
		rw = "randwrite"
	case w.ReadPercent == 0:
		rw = "write"
	case w.Random:
		rw = "randrw"
	default:
		rw = "rw"
	}
	args := []string{
		"--name=" + w.Name, "--ioengine=nbd", "--uri=" + uri,
		"--rw=" + rw, "--bs=" + strconv.Itoa(w.BlockSize), "--iodepth=" + strconv.Itoa(w.QueueDepth),
		"--numjobs=" + strconv.Itoa(w.Conns), "--group_reporting",
		"--size=" + strconv.FormatInt(o.Region, 10),
		"--time_based", "--runtime=" + strconv.FormatInt(o.Runtime.Milliseconds(), 10) + "ms",
		// The same offsets on every system in a round.
		"--randseed=" + strconv.Itoa(o.Round), "--norandommap",
		"--percentile_list=50:99:99.9",
		"--output-format=json", "--output=" + out,
	}
	if o.Warmup > 0 {
		args = append(args, "--ramp_time="+strconv.FormatInt(o.Warmup.Milliseconds(), 10)+"ms")
	}
	if w.ReadPercent > 0 && w.ReadPercent < 100 {
		args = append(args, "--rwmixread="+strconv.Itoa(w.ReadPercent))
	}
	if w.Durable {
		args = append(args, "--fsync=1")
	}
	return args
}

// Run implements Client: one fio job, its JSON output parsed.
func (f *fioClient) Run(ctx context.Context, ep Endpoint, w Workload, o RunOptions) (Result, error) {
	res := Result{Client: ClientFio, Round: o.Round}
	err := f.runFio(ctx, fmt.Sprintf("fio %s against %s", w.Name, ep.URI()),
		func(out string) []string { return fioArgs(w, ep.URI(), o, out) }, o, &res)
	return res, err
}

// runFio runs fio with the arguments args returns for a JSON output file
// and parses that output into res; what names the run in errors.
func (f *fioClient) runFio(ctx context.Context, what string, args func(out string) []string, o RunOptions, res *Result) error {
	out, err := os.CreateTemp(f.dir, "fio-*.json")
	if err != nil {
		return fmt.Errorf("fio output file: %w", err)
	}
	out.Close()
	defer os.Remove(out.Name())
	// fio must finish on its own well within this; the margin covers its
	// start-up and connection set-up.
	rctx, cancel := context.WithTimeout(ctx, o.Warmup+o.Runtime+60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(rctx, f.prog, args(out.Name())...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%s: %w\n%s", what, err, tail(log.String(), 2000))
	}
	b, err := os.ReadFile(out.Name())
	if err != nil {
		return fmt.Errorf("%s: reading its JSON: %w", what, err)
	}
	if err := parseFio(b, res); err != nil {
		return fmt.Errorf("%s: %w\n%s", what, err, tail(log.String(), 2000))
	}
	return nil
}

// fioOutput is the part of fio's JSON output the harness reads.
type fioOutput struct {
	Jobs []struct {
		Name       string `json:"jobname"`
		Error      int    `json:"error"`
		JobRuntime int64  `json:"job_runtime"` // ms
		Read       fioDir `json:"read"`
		Write      fioDir `json:"write"`
		Sync       struct {
			TotalIOs int64  `json:"total_ios"`
			Lat      fioLat `json:"lat_ns"`
		} `json:"sync"`
	} `json:"jobs"`
}

type fioDir struct {
	IOPS     float64 `json:"iops"`
	BW       float64 `json:"bw_bytes"`
	TotalIOs int64   `json:"total_ios"`
	Runtime  int64   `json:"runtime"` // ms
	Clat     fioLat  `json:"clat_ns"`
}

type fioLat struct {
	N          int64            `json:"N"`
	Max        float64          `json:"max"`
	Mean       float64          `json:"mean"`
	Percentile map[string]int64 `json:"percentile"`
}

func (l fioLat) latency() Latency {
	if l.N == 0 {
		return Latency{}
	}
	p := func(k string) time.Duration { return time.Duration(l.Percentile[k]) }
	return Latency{
		Count: l.N, Mean: time.Duration(l.Mean), Max: time.Duration(l.Max),
		P50: p("50.000000"), P99: p("99.000000"), P999: p("99.900000"),
	}
}

// parseFio fills res from fio's JSON output (one job: group_reporting).
func parseFio(b []byte, res *Result) error {
	// fio may print notices before the JSON document.
	if i := bytes.IndexByte(b, '{'); i > 0 {
		b = b[i:]
	}
	var o fioOutput
	if err := json.Unmarshal(b, &o); err != nil {
		return fmt.Errorf("parsing fio's JSON: %w", err)
	}
	if len(o.Jobs) != 1 {
		return fmt.Errorf("fio reported %d jobs, want 1 (group_reporting)", len(o.Jobs))
	}
	j := o.Jobs[0]
	if j.Error != 0 {
		return fmt.Errorf("fio job %s failed with error %d", j.Name, j.Error)
	}
	res.ReadIOPS, res.WriteIOPS = j.Read.IOPS, j.Write.IOPS
	res.IOPS = j.Read.IOPS + j.Write.IOPS
	res.BytesPerSec = j.Read.BW + j.Write.BW
	res.Read, res.Write, res.Sync = j.Read.Clat.latency(), j.Write.Clat.latency(), j.Sync.Lat.latency()
	res.Elapsed = time.Duration(max(j.Read.Runtime, j.Write.Runtime, j.JobRuntime)) * time.Millisecond
	if res.IOPS == 0 {
		return fmt.Errorf("fio job %s completed no I/O", j.Name)
	}
	return nil
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// fioWorkDir is where fio writes its output files.
func fioWorkDir(workDir string) string { return filepath.Join(workDir, "fio") }
