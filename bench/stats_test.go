package bench

import (
	"encoding/json"
	"math"
	"testing"
)

func TestSummarize(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want Stat
	}{
		{nil, Stat{}},
		{[]float64{7}, Stat{Median: 7, Min: 7, Max: 7, N: 1}},
		{[]float64{30, 10, 20}, Stat{Median: 20, Min: 10, Max: 30, N: 3}},
		{[]float64{4, 1, 3, 2}, Stat{Median: 2.5, Min: 1, Max: 4, N: 4}},
	} {
		if got := Summarize(c.in); got != c.want {
			t.Errorf("Summarize(%v) = %+v, want %+v", c.in, got, c.want)
		}
	}
	in := []float64{3, 1, 2}
	Summarize(in)
	if in[0] != 3 || in[1] != 1 {
		t.Errorf("Summarize sorted its argument: %v", in)
	}
	if !math.IsNaN(Median(nil)) {
		t.Error("Median(nil) is not NaN")
	}
}

// TestCompare checks that the ratio is the ratio of the medians (not the
// median of the per-round ratios) and that the range is that of the
// per-round ratios, skipping failed rounds.
func TestCompare(t *testing.T) {
	tandem := []float64{100, 300, 200}
	base := []float64{200, 200, 800}
	r := Compare("nbdkit", "iops", tandem, base)
	// medians 200 and 200: ratio 1; per round 0.5, 1.5, 0.25.
	if float64(r.Median) != 1 || float64(r.Min) != 0.25 || float64(r.Max) != 1.5 || r.Rounds != 3 {
		t.Errorf("Compare = %+v, want median 1, min 0.25, max 1.5, 3 rounds", r)
	}
	if r.Baseline != "nbdkit" || r.Metric != "iops" {
		t.Errorf("Compare labels = %q %q", r.Baseline, r.Metric)
	}

	// A failed round (NaN) is left out of both the medians and the
	// per-round range.
	nan := math.NaN()
	r = Compare("b", "p99", []float64{10, nan, 30, 40}, []float64{20, 20, nan, 10})
	// medians: tandem {10,30,40} → 30, base {20,20,10} → 20: 1.5; rounds 1
	// and 4 pair up: 0.5 and 4.
	if float64(r.Median) != 1.5 || float64(r.Min) != 0.5 || float64(r.Max) != 4 || r.Rounds != 2 {
		t.Errorf("Compare with failed rounds = %+v, want median 1.5, min 0.5, max 4, 2 rounds", r)
	}

	r = Compare("b", "iops", []float64{nan}, []float64{5})
	if r.Median.Valid() || r.Min.Valid() || r.Rounds != 0 {
		t.Errorf("Compare without data = %+v, want no values", r)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatalf("marshalling a ratio without values: %v", err)
	}
	var back Ratio
	if err := json.Unmarshal(b, &back); err != nil || back.Median.Valid() {
		t.Errorf("round trip of %s: %+v, %v", b, back, err)
	}
}

// TestReportRatios checks the ratios a report computes from raw runs.
func TestReportRatios(t *testing.T) {
	w := Workload{Name: "w", ReadPercent: 100, Random: true, BlockSize: 4096, QueueDepth: 1, Conns: 1, Latency: true}
	run := func(round int, iops float64, p99 float64) Result {
		return Result{Round: round, IOPS: iops, Read: Latency{P99: durationOf(p99)}}
	}
	wr := WorkloadReport{Workload: w, Systems: []SystemRuns{
		{System: "tandem", Runs: []Result{run(1, 900, 100), run(2, 1100, 300), run(3, 1000, 200)}},
		{System: "nbdkit", Runs: []Result{run(1, 2000, 50), run(2, 1800, 100), run(3, 2200, 400)}},
	}}
	systems := []*System{{Name: "tandem", Role: RoleTandem}, {Name: "nbdkit", Role: RoleBaseline}}
	for i := range wr.Systems {
		wr.Systems[i].summarize(w, 3)
	}
	wr.computeRatios(systems, 3)
	if got := wr.Systems[0].IOPS; got != (Stat{Median: 1000, Min: 900, Max: 1100, N: 3}) {
		t.Errorf("tandem IOPS summary %+v", got)
	}
	iops, ok := wr.ratio("nbdkit", "iops")
	// 1000/2000; rounds 900/2000 (the lowest), 1100/1800 (the highest), 1000/2200.
	if !ok || float64(iops.Median) != 0.5 || float64(iops.Min) != 900.0/2000 || float64(iops.Max) != 1100.0/1800 {
		t.Errorf("iops ratio %+v", iops)
	}
	p99, ok := wr.ratio("nbdkit", "p99")
	// medians 200 and 100; rounds 2, 3, 0.5.
	if !ok || float64(p99.Median) != 2 || float64(p99.Min) != 0.5 || float64(p99.Max) != 3 {
		t.Errorf("p99 ratio %+v", p99)
	}
	cell := ratioCell(wr, "nbdkit")
	if cell != "IOPS 0.50× (0.45–0.61), p99 2.00× (0.50–3.00)" {
		t.Errorf("ratio cell %q", cell)
	}
}
