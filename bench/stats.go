package bench

import (
	"fmt"
	"math"
	"slices"
	"strconv"
)

// Stat summarizes one figure over the rounds of a workload on one system.
type Stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

// Summarize returns the median, minimum and maximum of xs (the median of
// an even count is the mean of the two middle values). An empty xs gives
// a zero Stat.
func Summarize(xs []float64) Stat {
	if len(xs) == 0 {
		return Stat{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return Stat{Median: Median(s), Min: s[0], Max: s[len(s)-1], N: len(s)}
}

// Median returns the median of xs (NaN for none).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Ratio compares one Tandem figure with the same figure of a baseline.
type Ratio struct {
	// Baseline is the system Tandem is compared with.
	Baseline string `json:"baseline"`
	// Metric names the figure: "iops", "p50", "p99" or "p99.9".
	Metric string `json:"metric"`
	// Median is Tandem's median divided by the baseline's median.
	Median Float `json:"median_ratio"`
	// Min and Max bound the per-round ratios (Tandem's figure in round i
	// divided by the baseline's in the same round), over the rounds both
	// completed.
	Min Float `json:"min_round_ratio"`
	Max Float `json:"max_round_ratio"`
	// Rounds is how many rounds were paired.
	Rounds int `json:"rounds"`
}

// Compare returns the ratio of tandem to base for metric: the ratio of the
// medians, and the range of the per-round ratios. tandem[i] and base[i]
// must come from the same round; NaN entries (failed runs) are skipped.
func Compare(baseline, metric string, tandem, base []float64) Ratio {
	r := Ratio{Baseline: baseline, Metric: metric, Median: Float(math.NaN()), Min: Float(math.NaN()), Max: Float(math.NaN())}
	clean := func(xs []float64) []float64 {
		var out []float64
		for _, x := range xs {
			if !math.IsNaN(x) {
				out = append(out, x)
			}
		}
		return out
	}
	mt, mb := Median(clean(tandem)), Median(clean(base))
	if !math.IsNaN(mt) && !math.IsNaN(mb) && mb != 0 {
		r.Median = Float(mt / mb)
	}
	for i := 0; i < min(len(tandem), len(base)); i++ {
		if math.IsNaN(tandem[i]) || math.IsNaN(base[i]) || base[i] == 0 {
			continue
		}
		q := Float(tandem[i] / base[i])
		if r.Rounds == 0 || q < r.Min {
			r.Min = q
		}
		if r.Rounds == 0 || q > r.Max {
			r.Max = q
		}
		r.Rounds++
	}
	return r
}

// Float is a float64 that encodes NaN and infinities (no value) as JSON
// null.
type Float float64

// MarshalJSON implements json.Marshaler.
func (f Float) MarshalJSON() ([]byte, error) {
	v := float64(f)
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, v, 'g', -1, 64), nil
}

// UnmarshalJSON implements json.Unmarshaler.
func (f *Float) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*f = Float(math.NaN())
		return nil
	}
	v, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return fmt.Errorf("bench.Float: %w", err)
	}
	*f = Float(v)
	return nil
}

// Valid reports whether f holds a value.
func (f Float) Valid() bool { return !math.IsNaN(float64(f)) && !math.IsInf(float64(f), 0) }
