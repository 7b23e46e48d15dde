package catalog

import (
	"errors"
	"testing"
	"time"
)

// TestHostSince checks that a host's Since is when its state last
// changed: kept by put_host commands that keep the state, reset by those
// that change it.
func TestHostSince(t *testing.T) {
	s := vmCatalog(t) // hosts n1..n3
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	steps := []struct {
		state string
		at    time.Time
		since time.Time
	}{
		{"alive", t0, t0},
		{"alive", t0.Add(time.Minute), t0},                           // same state: kept
		{"failed", t0.Add(2 * time.Minute), t0.Add(2 * time.Minute)}, // changed
		{"failed", t0.Add(9 * time.Minute), t0.Add(2 * time.Minute)},
		{"alive", t0.Add(10 * time.Minute), t0.Add(10 * time.Minute)},
	}
	for i, st := range steps {
		if err := apply(t, s, uint64(40+i), Command{Kind: CmdPutHost, At: st.at, Host: &Host{Name: "n4", State: st.state, Capacity: 1 << 40}}); err != nil {
			t.Fatal(err)
		}
		if h := s.Hosts["n4"]; h.State != st.state || !h.Since.Equal(st.since) {
			t.Fatalf("step %d: n4 %s since %v, want %s since %v", i, h.State, h.Since, st.state, st.since)
		}
	}
}

// TestMoveReason checks the reasons a move records, and that an unknown one
// is refused.
func TestMoveReason(t *testing.T) {
	s := vmCatalog(t) // volumes d1..d4 on n1..n3
	if err := apply(t, s, 30, Command{Kind: CmdPutHost, Host: &Host{Name: "n4", State: "alive", Capacity: 100 << 30}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		volume, reason, want string
		err                  error
	}{
		{"d1", "", MoveByOperator, nil},
		{"d2", MoveToDrain, MoveToDrain, nil},
		{"d3", MoveToHeal, MoveToHeal, nil},
		{"d4", "because", "", ErrInvalid},
	}
	for i, tt := range tests {
		err := apply(t, s, uint64(31+i), Command{Kind: CmdMoveReplica, Name: tt.volume, Move: &MoveCommand{From: "n1", To: "n4", Reason: tt.reason}})
		if !errors.Is(err, tt.err) {
			t.Fatalf("%s, reason %q: %v, want %v", tt.volume, tt.reason, err, tt.err)
		}
		if tt.err != nil {
			if s.Volumes[tt.volume].Move != nil {
				t.Fatalf("%s: a move with an unknown reason was recorded", tt.volume)
			}
			continue
		}
		m := s.Volumes[tt.volume].Move
		if m == nil || m.Reason != tt.want {
			t.Fatalf("%s: move %+v, want reason %s", tt.volume, m, tt.want)
		}
		end := Command{Kind: CmdEndMove, Name: tt.volume, Move: &MoveCommand{ID: m.ID, Result: &MoveResult{Result: MoveCancelled}}}
		if err := apply(t, s, uint64(41+i), end); err != nil {
			t.Fatal(err)
		}
		if r := s.Volumes[tt.volume].LastMove; r == nil || r.Reason != tt.want {
			t.Fatalf("%s: last move %+v, want reason %s", tt.volume, r, tt.want)
		}
	}
}
