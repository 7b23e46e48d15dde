package catalog

import (
	"errors"
	"testing"
	"time"
)

// TestVerifyCommands walks verifications of a volume's replicas through
// their commands and checks the volume's Verify and LastVerify after each.
func TestVerifyCommands(t *testing.T) {
	at := time.Date(2026, 12, 7, 19, 0, 0, 0, time.UTC)
	verify := func(name string, rate int64) Command {
		return Command{Kind: CmdVerifyVolume, Name: name, Verify: &VerifyCommand{MaxRate: rate}, At: at}
	}
	end := func(id uint64, r *VerifyResult) Command {
		return Command{Kind: CmdEndVerify, Name: "v", Verify: &VerifyCommand{ID: id, Result: r}, At: at.Add(time.Minute)}
	}
	okResult := &VerifyResult{Leader: "n1", OK: true, Replicas: []VerifiedReplica{
		{Host: "n2", Check: MoveCheck{Index: 30, Ranges: 4, Compared: 4, OK: true}},
		{Host: "n3", Check: MoveCheck{Index: 30, Ranges: 4, Compared: 4, OK: true}}}}
	badResult := &VerifyResult{Leader: "n1", Error: "1 of 4 ranges differ on n3", Replicas: []VerifiedReplica{
		{Host: "n3", Check: MoveCheck{Index: 31, Ranges: 4, Compared: 4, Mismatched: 1}}}}
	type step struct {
		cmd     Command
		want    error
		running uint64 // Verify.ID after the step (0: none)
		last    uint64 // LastVerify.ID after the step (0: none)
		lastOK  bool
	}
	const first = 20 // index of the first step
	tests := []struct {
		name  string
		steps []step
	}{
		{"passes", []step{
			{cmd: verify("v", 100<<20), running: first},
			{cmd: verify("v", 0), want: ErrInvalid, running: first}, // one at a time
			{cmd: end(first, okResult), last: first, lastOK: true},
			{cmd: end(first, okResult), want: ErrNoVerify, last: first, lastOK: true}, // recorded already
		}},
		{"finds a damaged replica, then passes again", []step{
			{cmd: verify("v", 0), running: first},
			{cmd: end(first, badResult), last: first},
			{cmd: verify("v", 0), running: first + 2, last: first},
			{cmd: end(first, okResult), want: ErrNoVerify, running: first + 2, last: first}, // an older run's result
			{cmd: end(first+2, okResult), last: first + 2, lastOK: true},
		}},
		{"refused", []step{
			{cmd: verify("nope", 0), want: ErrNotFound},
			{cmd: verify("one", 0), want: ErrInvalid},
			{cmd: verify("v", -1), want: ErrInvalid},
			{cmd: Command{Kind: CmdVerifyVolume, Name: "v"}, want: ErrInvalid},
			{cmd: end(7, okResult), want: ErrNoVerify},
			{cmd: verify("v", 0), running: first + 5},
			{cmd: end(first+5, nil), want: ErrInvalid, running: first + 5},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := threeHosts(t)
			for i, c := range []Command{
				{Kind: CmdCreateVolume, Volume: &Volume{Name: "v", Size: 4 << 20, Replicas: []string{"n1", "n2", "n3"}, PreferredLeader: "n1"}},
				{Kind: CmdCreateVolume, Volume: &Volume{Name: "one", Size: 4 << 20, Replicas: []string{"n2"}, PreferredLeader: "n2"}},
			} {
				if err := apply(t, s, uint64(10+i), c); err != nil {
					t.Fatal(err)
				}
			}
			for i, st := range tc.steps {
				before := s.Clone()
				err := apply(t, s, uint64(first+i), st.cmd)
				if !errors.Is(err, st.want) || (err == nil) != (st.want == nil) {
					t.Fatalf("step %d (%s): %v, want %v", i, st.cmd.Kind, err, st.want)
				}
				v := s.Volumes["v"]
				var running, last uint64
				if v.Verify != nil {
					running = v.Verify.ID
				}
				if v.LastVerify != nil {
					last = v.LastVerify.ID
				}
				if running != st.running || last != st.last {
					t.Fatalf("step %d (%s): running %d, last %d; want %d and %d", i, st.cmd.Kind, running, last, st.running, st.last)
				}
				if last != 0 && v.LastVerify.OK != st.lastOK {
					t.Errorf("step %d: last verification OK %v, want %v", i, v.LastVerify.OK, st.lastOK)
				}
				if err != nil {
					continue
				}
				// A clone taken before shares nothing that changed.
				if bv := before.Volumes["v"]; bv.Verify == v.Verify && v.Verify != nil && st.cmd.Kind == CmdVerifyVolume {
					t.Errorf("step %d: the clone shares the new verification", i)
				}
				if st.cmd.Kind == CmdEndVerify {
					if r := v.LastVerify; !r.Started.Equal(at) || !r.Finished.Equal(at.Add(time.Minute)) || len(r.Replicas) != len(st.cmd.Verify.Result.Replicas) {
						t.Errorf("step %d: last verification %+v", i, r)
					}
				}
			}
			if got := roundTrip(t, s).Volumes["v"]; (got.LastVerify == nil) != (s.Volumes["v"].LastVerify == nil) || (got.Verify == nil) != (s.Volumes["v"].Verify == nil) {
				t.Errorf("snapshot round trip lost the verification: %+v", got)
			}
		})
	}
}
