package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/tandem-project/tandem/volume"
)

// fakeReplica is a replica whose failure the test sets.
type fakeReplica struct{ err error }

func (f *fakeReplica) Name() string { return "v" }
func (f *fakeReplica) Err() error   { return f.err }

// reopenStep is one check of a replica's state in the reopener tests.
type reopenStep struct {
	at      time.Duration // since the start
	err     error         // the replica's failure at the check (nil: healthy)
	room    bool          // whether the disk has raftlog.RoomMargin above the reserve
	due     bool          // what due must answer
	attempt bool          // reopen now (after a due)
}

// checkReopenSteps runs steps against a reopener whose first wait is
// first, failing the test at the first answer of due that differs.
func checkReopenSteps(t *testing.T, first time.Duration, steps []reopenStep) {
	t.Helper()
	r := newReopener(nil, nil, slog.New(slog.DiscardHandler), first)
	room := false
	r.room = func() error {
		if room {
			return nil
		}
		return volume.ErrNoSpace
	}
	v := &fakeReplica{}
	start := time.Unix(1e9, 0)
	for i, s := range steps {
		v.err, room = s.err, s.room
		now := start.Add(s.at)
		if got := r.due(v, now); got != s.due {
			t.Fatalf("step %d (%v): due %v, want %v", i, s.at, got, s.due)
		}
		if s.attempt {
			r.attempt(v.Name(), now)
		}
	}
}

// TestReopenBackoff checks when a failed replica is reopened: first
// after the configured wait, then at doubling intervals up to
// reopenMaxWait while it fails again, and after the first wait again once
// it served for as long as it last waited.
func TestReopenBackoff(t *testing.T) {
	const first = time.Minute
	failed := errors.New("write: input/output error") // not for lack of space: no early reopening
	for _, tc := range []struct {
		name  string
		first time.Duration
		steps []reopenStep
	}{
		{
			name:  "healthy replicas are never due",
			first: first,
			steps: []reopenStep{{at: 0}, {at: time.Hour}},
		},
		{
			name:  "first wait, then doubling while it fails again",
			first: first,
			steps: []reopenStep{
				{at: 0, err: failed},                                          // noticed
				{at: 59 * time.Second, err: failed},                           // waiting
				{at: time.Minute, err: failed, due: true, attempt: true},      // first reopening
				{at: 2*time.Minute + time.Second, err: failed},                // fails again: waits 2 min
				{at: 3 * time.Minute, err: failed, due: true, attempt: true},  // second
				{at: 6*time.Minute + time.Second, err: failed},                // waits 4 min
				{at: 7 * time.Minute, err: failed, due: true, attempt: true},  // third
				{at: 14 * time.Minute, err: failed},                           // waits 8 min
				{at: 15 * time.Minute, err: failed, due: true, attempt: true}, // fourth
			},
		},
		{
			name:  "the wait is capped",
			first: 20 * time.Minute,
			steps: []reopenStep{
				{at: 0, err: failed},
				{at: 20 * time.Minute, err: failed, due: true, attempt: true},
				{at: 49 * time.Minute, err: failed}, // waits 30 min, not 40
				{at: 50 * time.Minute, err: failed, due: true, attempt: true},
				{at: 79 * time.Minute, err: failed},
				{at: 80 * time.Minute, err: failed, due: true, attempt: true},
			},
		},
		{
			name:  "a replica that served long enough starts over",
			first: first,
			steps: []reopenStep{
				{at: 0, err: failed},
				{at: time.Minute, err: failed, due: true, attempt: true},
				{at: 2 * time.Minute},              // serving, for 1 min of its 2
				{at: 3 * time.Minute},              // served 2 min: forgotten
				{at: 4 * time.Minute, err: failed}, // noticed anew
				{at: 4*time.Minute + 59*time.Second, err: failed},
				{at: 5 * time.Minute, err: failed, due: true, attempt: true}, // one minute again
			},
		},
		{
			name:  "0 never reopens",
			first: 0,
			steps: []reopenStep{{at: 0, err: failed}, {at: time.Hour, err: failed}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) { checkReopenSteps(t, tc.first, tc.steps) })
	}
}

// TestReopenRetry checks the wait between attempts at opening a replica
// that could not be opened again, and that untracked volumes are always
// tried.
func TestReopenRetry(t *testing.T) {
	r := newReopener(nil, nil, slog.New(slog.DiscardHandler), time.Minute)
	start := time.Unix(1e9, 0)
	if try, tracked := r.retry("other", start); !try || tracked {
		t.Fatal("a volume never failed is not tried at once, or is tracked")
	}
	r.attempt("v", start) // the reopening whose open failed
	for _, c := range []struct {
		at   time.Duration
		want bool
	}{{30 * time.Second, false}, {time.Minute, true}} {
		if got, tracked := r.retry("v", start.Add(c.at)); got != c.want || !tracked {
			t.Fatalf("retry after %v: %v, want %v", c.at, got, c.want)
		}
	}
	r.attempt("v", start.Add(time.Minute))
	if try, _ := r.retry("v", start.Add(2*time.Minute+59*time.Second)); try {
		t.Fatal("second retry before its 2 min wait")
	}
	if try, _ := r.retry("v", start.Add(2*time.Minute)); r.forget("v") != nil || try {
		t.Fatal("retry before its wait, or a proxy of a test without one")
	}
	if try, tracked := r.retry("v", start.Add(2*time.Minute)); !try || tracked {
		t.Fatal("a forgotten volume is not tried at once")
	}
}

// TestReopenFailedSince checks that a replica's failure time, which the
// control leader heals by, survives attempts at opening it again and is
// reset only once the replica served for as long as it last waited; it is
// kept with --replica-retry 0 too.
func TestReopenFailedSince(t *testing.T) {
	for _, first := range []time.Duration{time.Minute, 0} {
		r := newReopener(nil, nil, slog.New(slog.DiscardHandler), first)
		v := &fakeReplica{err: errors.New("disk full")}
		start := time.Unix(1e9, 0)
		if r.due(v, start); !r.failedSince("v").Equal(start) {
			t.Fatalf("first %v: failed since %v, want %v", first, r.failedSince("v"), start)
		}
		r.due(v, start.Add(time.Minute))
		r.attempt("v", start.Add(time.Minute)) // opened again; fails again
		r.due(v, start.Add(90*time.Second))
		if !r.failedSince("v").Equal(start) {
			t.Fatalf("first %v: failed since %v after an attempt, want %v", first, r.failedSince("v"), start)
		}
		v.err = nil
		r.due(v, start.Add(time.Hour)) // served long enough
		if !r.failedSince("v").IsZero() {
			t.Fatalf("first %v: failed since %v once healthy", first, r.failedSince("v"))
		}
	}
}

// TestReopenEarlyOnRoom checks that a replica which failed for lack of
// disk space is opened again as soon as the disk has room (at most every
// roomRetryGap), while one that failed otherwise waits out its backoff,
// and that --replica-retry 0 still never reopens.
func TestReopenEarlyOnRoom(t *testing.T) {
	full := fmt.Errorf("raftlog: entry 7: %w: 1 MiB free", volume.ErrNoSpace)
	eio := errors.New("write: input/output error")
	for _, tc := range []struct {
		name  string
		first time.Duration
		steps []reopenStep
	}{
		{
			name:  "full disk, room again",
			first: time.Minute,
			steps: []reopenStep{
				{at: 0, err: full},                           // noticed
				{at: 5 * time.Second, err: full},             // no room
				{at: 6 * time.Second, err: full, room: true}, // room, but too soon after the failure
				{at: 10 * time.Second, err: full, room: true, due: true, attempt: true},
				{at: 15 * time.Second, err: full, room: true},                           // failed again at once: too soon
				{at: 20 * time.Second, err: full, room: true, due: true, attempt: true}, // room: again
				{at: 40 * time.Second, err: full},                                       // room gone: the backoff (4 min after 20 s) stands
				{at: 4 * time.Minute, err: full},
				{at: 4*time.Minute + 20*time.Second, err: full, due: true},
			},
		},
		{
			name:  "other failures wait out the backoff",
			first: time.Minute,
			steps: []reopenStep{
				{at: 0, err: eio},
				{at: 30 * time.Second, err: eio, room: true},
				{at: time.Minute, err: eio, room: true, due: true, attempt: true},
				{at: 65 * time.Second, err: full, room: true}, // now full: early, but not 10 s after the attempt
				{at: 70 * time.Second, err: full, room: true, due: true},
			},
		},
		{
			name:  "0 never reopens",
			first: 0,
			steps: []reopenStep{{at: 0, err: full}, {at: time.Hour, err: full, room: true}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) { checkReopenSteps(t, tc.first, tc.steps) })
	}
}

// TestReopenRetryOnRoom checks that a replica which could not be opened
// again for lack of disk space is tried again once the disk has room.
func TestReopenRetryOnRoom(t *testing.T) {
	r := newReopener(nil, nil, slog.New(slog.DiscardHandler), time.Minute)
	room := false
	r.room = func() error {
		if room {
			return nil
		}
		return volume.ErrNoSpace
	}
	start := time.Unix(1e9, 0)
	r.attempt("v", start)
	r.failedAgain("v", fmt.Errorf("opening the write log: %w", volume.ErrNoSpace))
	for _, c := range []struct {
		at   time.Duration
		room bool
		want bool
	}{{20 * time.Second, false, false}, {5 * time.Second, true, false}, {10 * time.Second, true, true}} {
		room = c.room
		if got, _ := r.retry("v", start.Add(c.at)); got != c.want {
			t.Fatalf("retry after %v with room %v: %v, want %v", c.at, c.room, got, c.want)
		}
	}
	r.failedAgain("v", errors.New("permission denied"))
	if try, _ := r.retry("v", start.Add(30*time.Second)); try {
		t.Fatal("a replica that failed to open for another reason is tried before its wait")
	}
}
