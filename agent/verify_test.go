package agent

import (
	"testing"
	"time"

	"github.com/tandem-project/tandem/cluster/catalog"
)

func TestDueForVerify(t *testing.T) {
	now := time.Date(2026, 12, 7, 19, 0, 0, 0, time.UTC)
	const week = 7 * 24 * time.Hour
	vol := func(name string, created time.Time, lastVerified time.Time, opts ...func(*catalog.Volume)) *catalog.Volume {
		v := &catalog.Volume{Name: name, Replicas: []string{"n1", "n2", "n3"}, Created: created}
		if !lastVerified.IsZero() {
			v.LastVerify = &catalog.VerifyResult{Finished: lastVerified}
		}
		for _, o := range opts {
			o(v)
		}
		return v
	}
	running := func(v *catalog.Volume) { v.Verify = &catalog.Verify{ID: 9} }
	moving := func(v *catalog.Volume) { v.Move = &catalog.Move{ID: 8} }
	single := func(v *catalog.Volume) { v.Replicas = v.Replicas[:1] }
	tests := []struct {
		name  string
		every time.Duration
		vols  []*catalog.Volume
		want  string
	}{
		{"off", 0, []*catalog.Volume{vol("a", now.Add(-2*week), time.Time{})}, ""},
		{"never verified, created long ago", week, []*catalog.Volume{vol("a", now.Add(-2*week), time.Time{})}, "a"},
		{"new volume", week, []*catalog.Volume{vol("a", now.Add(-time.Hour), time.Time{})}, ""},
		{"verified recently", week, []*catalog.Volume{vol("a", now.Add(-4*week), now.Add(-time.Hour))}, ""},
		{"due exactly", week, []*catalog.Volume{vol("a", now.Add(-4*week), now.Add(-week))}, "a"},
		{"oldest first", week, []*catalog.Volume{
			vol("a", now.Add(-4*week), now.Add(-8*24*time.Hour)),
			vol("b", now.Add(-3*week), time.Time{}),
			vol("c", now.Add(-4*week), now.Add(-9*24*time.Hour)),
		}, "b"},
		{"one at a time", week, []*catalog.Volume{vol("a", now.Add(-4*week), time.Time{}), vol("b", now.Add(-4*week), now.Add(-time.Hour), running)}, ""},
		{"moving and single replicas skipped", week, []*catalog.Volume{
			vol("a", now.Add(-5*week), time.Time{}, moving),
			vol("b", now.Add(-5*week), time.Time{}, single),
			vol("c", now.Add(-2*week), time.Time{}),
		}, "c"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := catalog.New()
			for _, v := range tc.vols {
				st.Volumes[v.Name] = v
			}
			if got := dueForVerify(st, tc.every, now); got != tc.want {
				t.Errorf("dueForVerify = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestCheckBatchFor(t *testing.T) {
	for _, tc := range []struct {
		rate int64
		want int64
	}{
		{0, checkBatch},
		{-1, checkBatch},
		{1 << 20, 1},    // less than a range a quarter second
		{4 << 20, 1},    // one range a quarter second
		{64 << 20, 16},  // the scheduled default: 16 MiB four times a second
		{200 << 20, 50}, //
		{1 << 30, 64},   // capped at checkBatch
		{1 << 40, 64},   //
	} {
		if got := checkBatchFor(tc.rate); got != tc.want {
			t.Errorf("checkBatchFor(%d) = %d, want %d", tc.rate, got, tc.want)
		}
	}
}

// TestNextRun: the integrity check asks for runs of consecutive ranges,
// each at most limit long.
func TestNextRun(t *testing.T) {
	tests := []struct {
		pending            []int64
		limit              int64
		wantFirst, wantLen int64
	}{
		{[]int64{5}, 8, 5, 1},
		{[]int64{0, 1, 2, 3}, 8, 0, 4},
		{[]int64{0, 1, 2, 3}, 2, 0, 2},
		{[]int64{3, 4, 7, 8}, 8, 3, 2},
		{[]int64{3, 5}, 8, 3, 1},
	}
	for _, tt := range tests {
		if first, n := nextRun(tt.pending, tt.limit); first != tt.wantFirst || n != tt.wantLen {
			t.Errorf("nextRun(%v, %d) = %d, %d; want %d, %d", tt.pending, tt.limit, first, n, tt.wantFirst, tt.wantLen)
		}
	}
}
