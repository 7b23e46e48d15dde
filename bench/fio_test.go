package bench

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// fioSample is fio 3.33's JSON output for a durable random-write job,
// trimmed to what the harness reads, after the notice the nbd engine
// prints first.
const fioSample = `fio: connected to NBD server
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "randwrite-4k-qd1-durable",
      "error" : 0,
      "job_runtime" : 2000,
      "read" : {"io_bytes" : 0, "bw_bytes" : 0, "iops" : 0.0, "runtime" : 0, "total_ios" : 0,
        "clat_ns" : {"min" : 0, "max" : 0, "mean" : 0.0, "N" : 0}},
      "write" : {"io_bytes" : 9277440, "bw_bytes" : 4638720, "iops" : 1132.5, "runtime" : 2000, "total_ios" : 2265,
        "clat_ns" : {"min" : 20000, "max" : 6000000, "mean" : 149353.4, "N" : 2265,
          "percentile" : {"50.000000" : 34560, "99.000000" : 2965504, "99.900000" : 5406720}}},
      "sync" : {"total_ios" : 2266, "lat_ns" : {"min" : 11321, "max" : 14517327, "mean" : 709711.6, "N" : 2266,
        "percentile" : {"50.000000" : 321536, "99.000000" : 7503872, "99.900000" : 12124160}}}
    }
  ]
}`

func TestParseFio(t *testing.T) {
	var r Result
	if err := parseFio([]byte(fioSample), &r); err != nil {
		t.Fatal(err)
	}
	if r.IOPS != 1132.5 || r.WriteIOPS != 1132.5 || r.ReadIOPS != 0 || r.BytesPerSec != 4638720 {
		t.Errorf("rates: %+v", r)
	}
	if r.Write.P50 != 34560 || r.Write.P99 != 2965504 || r.Write.P999 != 5406720 || r.Write.Count != 2265 {
		t.Errorf("write latency: %+v", r.Write)
	}
	if r.Sync.P99 != 7503872 || r.Sync.Count != 2266 {
		t.Errorf("sync latency: %+v", r.Sync)
	}
	if r.Elapsed != 2*time.Second {
		t.Errorf("elapsed %v", r.Elapsed)
	}
	if err := parseFio([]byte(`{"jobs": [{"jobname": "x", "error": 5}]}`), &r); err == nil {
		t.Error("a failed job parsed without error")
	}
}

func TestFioArgs(t *testing.T) {
	ws := map[string]Workload{}
	for _, w := range StandardWorkloads() {
		ws[w.Name] = w
	}
	o := RunOptions{Runtime: 3 * time.Second, Warmup: 500 * time.Millisecond, Region: 512 * mib, Round: 2}
	for name, want := range map[string][]string{
		"randread-4k-qd32":          {"--rw=randread", "--bs=4096", "--iodepth=32", "--numjobs=1", "--runtime=3000ms", "--ramp_time=500ms", "--size=536870912", "--randseed=2"},
		"write-1m-qd8-durable":      {"--rw=write", "--bs=1048576", "--iodepth=8", "--fsync=1"},
		"randrw70-4k-qd32":          {"--rw=randrw", "--rwmixread=70"},
		"randread-4k-qd32-4conn":    {"--numjobs=4", "--group_reporting"},
		"randwrite-4k-qd32-durable": {"--rw=randwrite", "--fsync=1"},
	} {
		args := fioArgs(ws[name], "nbd://127.0.0.1:1/e", o, "/tmp/out.json")
		for _, a := range want {
			if !slices.Contains(args, a) {
				t.Errorf("%s: %s missing from %s", name, a, strings.Join(args, " "))
			}
		}
	}
}

// TestLogBound checks which workloads get the disk-bound probe and its fio
// arguments.
func TestLogBound(t *testing.T) {
	var with []string
	for _, w := range StandardWorkloads() {
		if w.hasLogBound() {
			with = append(with, w.Name)
		}
	}
	if strings.Join(with, ",") != "write-1m-qd8-durable" {
		t.Errorf("disk bound measured for %v, want write-1m-qd8-durable only", with)
	}
	w, _ := SelectWorkloads([]string{"write-1m-qd8-durable"})
	o := RunOptions{Runtime: 3 * time.Second, Warmup: 500 * time.Millisecond, Region: 512 * mib}
	args := logBoundArgs("/d", w[0], o, "/o.json")
	for _, a := range []string{"--directory=/d", "--numjobs=3", "--group_reporting", "--rw=write", "--bs=1048576",
		"--direct=1", "--fdatasync=1", "--size=536870912", "--runtime=3000ms", "--ramp_time=500ms", "--output=/o.json"} {
		if !slices.Contains(args, a) {
			t.Errorf("%s missing from %s", a, strings.Join(args, " "))
		}
	}
}
