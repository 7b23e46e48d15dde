package catalog

import (
	"errors"
	"slices"
	"testing"
)

// TestMoveCommands walks replica moves through their phases and checks the
// volume's replicas, preferred leader and move after each command.
func TestMoveCommands(t *testing.T) {
	type step struct {
		cmd  Command
		want error
		// replicas and leader after the step; phase of the move ("" for
		// none); result of LastMove, if checked.
		replicas string
		leader   string
		phase    string
		result   string
	}
	const first = 20 // index of the first step; the move started there has ID 20
	move := func(from, to string) Command {
		return Command{Kind: CmdMoveReplica, Name: "v", Move: &MoveCommand{From: from, To: to}}
	}
	ok := &MoveCheck{Index: 19, Ranges: 4, Compared: 4, OK: true}
	phase := func(id uint64, p string, ck *MoveCheck) Command {
		return Command{Kind: CmdMovePhase, Name: "v", Move: &MoveCommand{ID: id, Phase: p, Check: ck}}
	}
	withLeader := func(c Command, l string) Command { c.Move.Leader = l; return c }
	end := func(id uint64, result, leader string) Command {
		return Command{Kind: CmdEndMove, Name: "v", Move: &MoveCommand{ID: id, Leader: leader, Result: &MoveResult{Result: result}}}
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"completed, the source led", []step{
			{cmd: move("n1", "n4"), replicas: "n1,n2,n3", leader: "n1", phase: MoveCopying},
			{cmd: phase(first, MovePromoted, nil), replicas: "n1,n2,n3", leader: "n1", phase: MovePromoted},
			{cmd: phase(first, MovePromoted, nil), replicas: "n1,n2,n3", leader: "n1", phase: MovePromoted}, // again: no-op
			{cmd: withLeader(phase(first, MoveRemoving, ok), "n3"), replicas: "n1,n2,n3", leader: "n3", phase: MoveRemoving},
			{cmd: end(first, MoveCompleted, "n2"), replicas: "n4,n2,n3", leader: "n3", result: MoveCompleted},
		}},
		{"completed, a follower moves", []step{
			{cmd: move("n3", "n4"), replicas: "n1,n2,n3", leader: "n1", phase: MoveCopying},
			{cmd: phase(first, MovePromoted, nil), replicas: "n1,n2,n3", leader: "n1", phase: MovePromoted},
			{cmd: withLeader(phase(first, MoveRemoving, ok), "n2"), replicas: "n1,n2,n3", leader: "n1", phase: MoveRemoving}, // n1 stays: not the source
			{cmd: end(first, MoveCancelled, ""), want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1", phase: MoveRemoving},
			{cmd: end(first, MoveCompleted, "n2"), replicas: "n1,n2,n4", leader: "n1", result: MoveCompleted},
			{cmd: move("n4", "n3"), replicas: "n1,n2,n4", leader: "n1", phase: MoveCopying}, // and back
		}},
		{"cancelled while copying, then moved again", []step{
			{cmd: move("n2", "n4"), replicas: "n1,n2,n3", leader: "n1", phase: MoveCopying},
			{cmd: end(first, MoveCancelled, ""), replicas: "n1,n2,n3", leader: "n1", result: MoveCancelled},
			{cmd: phase(first, MovePromoted, nil), want: ErrNoMove, replicas: "n1,n2,n3", leader: "n1"},
			{cmd: move("n2", "n4"), replicas: "n1,n2,n3", leader: "n1", phase: MoveCopying},
			{cmd: end(first, MoveCompleted, ""), want: ErrNoMove, replicas: "n1,n2,n3", leader: "n1", phase: MoveCopying},
			{cmd: end(first+3, MoveFailed, ""), replicas: "n1,n2,n3", leader: "n1", result: MoveFailed},
		}},
		{"refusals", []step{
			{cmd: move("n4", "n1"), want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1"},  // no replica on n4
			{cmd: move("n1", "n2"), want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1"},  // n2 has one
			{cmd: move("n1", "n9"), want: ErrNotFound, replicas: "n1,n2,n3", leader: "n1"}, // unknown host
			{cmd: move("n1", "n5"), want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1"},  // n5 failed
			{cmd: move("n1", ""), want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1"},    // no destination
			{cmd: Command{Kind: CmdMoveReplica, Name: "v"}, want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1"},
			{cmd: Command{Kind: CmdMoveReplica, Name: "nope", Move: &MoveCommand{From: "n1", To: "n4"}}, want: ErrNotFound, replicas: "n1,n2,n3", leader: "n1"},
			{cmd: Command{Kind: CmdMoveReplica, Name: "v", Move: &MoveCommand{From: "n1", To: "n4", MaxRate: -1}}, want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1"},
			{cmd: move("n1", "n4"), replicas: "n1,n2,n3", leader: "n1", phase: MoveCopying},
			{cmd: move("n2", "n4"), want: ErrExists, replicas: "n1,n2,n3", leader: "n1", phase: MoveCopying},                  // one at a time
			{cmd: phase(first+8, MoveRemoving, ok), want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1", phase: MoveCopying}, // skips promoted
			{cmd: phase(first+8, MovePromoted, nil), replicas: "n1,n2,n3", leader: "n1", phase: MovePromoted},
			{cmd: phase(first+8, MoveRemoving, nil), want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1", phase: MovePromoted}, // no check
			{cmd: phase(first+8, MoveRemoving, &MoveCheck{Mismatched: 1}), want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1", phase: MovePromoted},
			{cmd: phase(first+8, "dancing", nil), want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1", phase: MovePromoted},
			{cmd: end(first+8, MoveCompleted, ""), want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1", phase: MovePromoted}, // not removing
			{cmd: end(first+8, "rolled-back", ""), want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1", phase: MovePromoted},
			{cmd: Command{Kind: CmdEndMove, Name: "v", Move: &MoveCommand{ID: first + 8}}, want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1", phase: MovePromoted},
			{cmd: end(first+8, MoveFailed, ""), replicas: "n1,n2,n3", leader: "n1", result: MoveFailed}, // rolled back after promotion
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := threeHosts(t)
			for i, h := range []*Host{{Name: "n1", State: "alive"}, {Name: "n2", State: "alive"}, {Name: "n3", State: "alive"}, {Name: "n4", State: "alive"}, {Name: "n5", State: "failed"}} {
				if err := apply(t, s, uint64(4+i), Command{Kind: CmdPutHost, Host: h}); err != nil {
					t.Fatal(err)
				}
			}
			if err := apply(t, s, 10, Command{Kind: CmdCreateVolume, Volume: &Volume{Name: "v", Size: 1 << 20, Replicas: []string{"n1", "n2", "n3"}, PreferredLeader: "n1"}}); err != nil {
				t.Fatal(err)
			}
			for i, st := range tt.steps {
				idx := uint64(first + i)
				before := s.Clone()
				err := apply(t, s, idx, st.cmd)
				if !errors.Is(err, st.want) || (st.want == nil) != (err == nil) {
					t.Fatalf("step %d (%s): %v, want %v", i, st.cmd.Kind, err, st.want)
				}
				v := s.Volumes["v"]
				ph := ""
				if v.Move != nil {
					ph = v.Move.Phase
				}
				if got := joinNames(v.Replicas); got != st.replicas || v.PreferredLeader != st.leader || ph != st.phase {
					t.Fatalf("step %d (%s): replicas %s leader %s phase %q; want %s %s %q", i, st.cmd.Kind, got, v.PreferredLeader, ph, st.replicas, st.leader, st.phase)
				}
				if st.result != "" && (v.LastMove == nil || v.LastMove.Result != st.result) {
					t.Fatalf("step %d: last move %+v, want %s", i, v.LastMove, st.result)
				}
				if st.result == MoveCompleted && (v.LastMove.Check == nil || !v.LastMove.Check.OK) {
					t.Fatalf("step %d: a completed move without its check: %+v", i, v.LastMove)
				}
				// A clone taken before is not changed by the command.
				if bv := before.Volumes["v"]; bv.Move != nil && v.Move != nil && bv.Move == v.Move && err == nil && st.cmd.Kind != CmdMovePhase {
					t.Fatalf("step %d: the move record is shared with an older clone", i)
				}
			}
			b, err := s.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			r, err := Restore(b)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := r.Volumes["v"], s.Volumes["v"]; (got.Move == nil) != (want.Move == nil) || (got.LastMove == nil) != (want.LastMove == nil) {
				t.Fatalf("restored %+v, want %+v", got, want)
			}
		})
	}
}

func joinNames(ns []string) string {
	out := ""
	for i, n := range ns {
		if i > 0 {
			out += ","
		}
		out += n
	}
	return out
}

// TestCheckMoveKeepsReplicas: the replicas stay those of
// before the move in every phase short of completion.
func TestCheckMoveKeepsReplicas(t *testing.T) {
	s := threeHosts(t)
	_ = apply(t, s, 4, Command{Kind: CmdPutHost, Host: &Host{Name: "n4", State: "alive"}})
	_ = apply(t, s, 5, Command{Kind: CmdCreateVolume, Volume: &Volume{Name: "v", Size: 1 << 20, Replicas: []string{"n1", "n2", "n3"}}})
	if err := s.CheckMove("v", "n1", "n4"); err != nil {
		t.Fatal(err)
	}
	_ = apply(t, s, 6, Command{Kind: CmdMoveReplica, Name: "v", Move: &MoveCommand{From: "n1", To: "n4"}})
	if !slices.Equal(s.Volumes["v"].Replicas, []string{"n1", "n2", "n3"}) {
		t.Fatal(s.Volumes["v"].Replicas)
	}
	if s.Allocated("n4") != 0 {
		t.Fatal("n4 charged before the move completed")
	}
}
