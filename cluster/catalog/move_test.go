package catalog

import (
	"errors"
	"slices"
	"strings"
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
		{"rebuild in place", []step{
			{cmd: move("n2", "n2"), replicas: "n1,n2,n3", leader: "n1", phase: MoveEvicting},
			{cmd: phase(first, MovePromoted, nil), want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1", phase: MoveEvicting}, // skips copying
			{cmd: phase(first, MoveCopying, nil), replicas: "n1,n2,n3", leader: "n1", phase: MoveCopying},
			{cmd: phase(first, MovePromoted, nil), replicas: "n1,n2,n3", leader: "n1", phase: MovePromoted},
			{cmd: phase(first, MoveRemoving, ok), want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1", phase: MovePromoted}, // nothing leaves
			{cmd: end(first, MoveCompleted, ""), want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1", phase: MovePromoted},  // no check
			{cmd: Command{Kind: CmdEndMove, Name: "v", Move: &MoveCommand{ID: first, Result: &MoveResult{Result: MoveCompleted, Check: ok}}}, replicas: "n1,n2,n3", leader: "n1", result: MoveCompleted},
		}},
		{"rebuild of the preferred leader's replica, lost, cancelled", []step{
			{cmd: Command{Kind: CmdMoveReplica, Name: "v", Move: &MoveCommand{From: "n1", To: "n1", Reason: MoveLost}}, replicas: "n1,n2,n3", leader: "n1", phase: MoveEvicting},
			{cmd: end(first, MoveCancelled, ""), replicas: "n1,n2,n3", leader: "n1", result: MoveCancelled},
			{cmd: Command{Kind: CmdMoveReplica, Name: "v", Move: &MoveCommand{From: "n1", To: "n4", Reason: MoveLost}}, want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1"}, // lost: rebuilds only
			{cmd: move("n4", "n4"), want: ErrInvalid, replicas: "n1,n2,n3", leader: "n1"},                                                                                     // no replica there
			{cmd: move("n3", "n3"), replicas: "n1,n2,n3", leader: "n1", phase: MoveEvicting},
			{cmd: phase(first+4, MoveCopying, nil), replicas: "n1,n2,n3", leader: "n1", phase: MoveCopying},
			{cmd: end(first+4, MoveFailed, ""), replicas: "n1,n2,n3", leader: "n1", result: MoveFailed},
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
			r := roundTrip(t, s)
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

// TestReplicaSetMove walks a move of a volume's whole replica set: the
// planned moves run one after the other, the preferred leader's replica
// last, and a move that does not complete drops the rest.
func TestReplicaSetMove(t *testing.T) {
	s := vmCatalog(t) // d1..d4 on n1, n2, n3, preferred leader n2
	for i, n := range []string{"n4", "n5", "n6"} {
		if err := apply(t, s, uint64(20+i), Command{Kind: CmdPutHost, Host: &Host{Name: n, State: "alive", Capacity: 100 << 30}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := apply(t, s, 23, Command{Kind: CmdPutHost, Host: &Host{Name: "n7", State: "failed", Capacity: 100 << 30}}); err != nil {
		t.Fatal(err)
	}
	hosts := func(h ...string) Command {
		return Command{Kind: CmdMoveReplica, Name: "d1", Move: &MoveCommand{Hosts: h}}
	}
	for _, tt := range []struct {
		name string
		cmd  Command
		msg  string
	}{
		{"too few hosts", hosts("n4", "n5"), "2 hosts for 3 replicas"},
		{"a host twice", hosts("n4", "n4", "n5"), "named twice"},
		{"the same set", hosts("n3", "n1", "n2"), "already"},
		{"a failed host", hosts("n1", "n7", "n3"), "not alive"},
		{"an unknown host", hosts("n1", "n9", "n3"), "not found"},
		{"hosts and from", Command{Kind: CmdMoveReplica, Name: "d1", Move: &MoveCommand{Hosts: []string{"n4", "n5", "n6"}, From: "n1", To: "n4"}}, "either"},
	} {
		err := apply(t, s, 30, tt.cmd)
		if err == nil || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: %v, want an error with %q", tt.name, err, tt.msg)
		}
	}
	if v := s.Volumes["d1"]; v.Move != nil || v.Planned != nil {
		t.Fatalf("refused commands changed the volume: %+v %+v", v.Move, v.Planned)
	}

	ok := &MoveCheck{Ranges: 1, Compared: 1, OK: true}
	complete := func(i uint64) uint64 {
		t.Helper()
		m := s.Volumes["d1"].Move
		for k, c := range []Command{
			{Kind: CmdMovePhase, Name: "d1", Move: &MoveCommand{ID: m.ID, Phase: MovePromoted}},
			{Kind: CmdMovePhase, Name: "d1", Move: &MoveCommand{ID: m.ID, Phase: MoveRemoving, Check: ok}},
			{Kind: CmdEndMove, Name: "d1", Move: &MoveCommand{ID: m.ID, Result: &MoveResult{Result: MoveCompleted}}},
		} {
			if err := apply(t, s, i+uint64(k), c); err != nil {
				t.Fatal(err)
			}
		}
		return i + 2
	}
	if err := apply(t, s, 40, hosts("n4", "n5", "n6")); err != nil {
		t.Fatal(err)
	}
	want := []string{"n1->n4", "n3->n5", "n2->n6"} // the preferred leader n2 last
	i := uint64(41)
	for k, w := range want {
		v := s.Volumes["d1"]
		if got := v.Move.From + "->" + v.Move.To; got != w || len(v.Planned) != len(want)-k-1 {
			t.Fatalf("move %d: %s with %d planned, want %s with %d", k, got, len(v.Planned), w, len(want)-k-1)
		}
		i = complete(i) + 1
	}
	v := s.Volumes["d1"]
	if v.Move != nil || v.Planned != nil || !slices.Equal(v.Replicas, []string{"n4", "n6", "n5"}) || v.PreferredLeader != "n6" {
		t.Fatalf("after the set move: replicas %v, leader %s, move %+v, planned %v", v.Replicas, v.PreferredLeader, v.Move, v.Planned)
	}

	// Cancelling the first move drops the rest.
	if err := apply(t, s, 60, Command{Kind: CmdMoveReplica, Name: "d2", Move: &MoveCommand{Hosts: []string{"n4", "n5", "n6"}, MaxRate: 1 << 20}}); err != nil {
		t.Fatal(err)
	}
	d2 := s.Volumes["d2"]
	if d2.Move.MaxRate != 1<<20 || len(d2.Planned) != 2 {
		t.Fatalf("d2: move %+v, planned %v", d2.Move, d2.Planned)
	}
	if err := apply(t, s, 61, Command{Kind: CmdEndMove, Name: "d2", Move: &MoveCommand{ID: 60, Result: &MoveResult{Result: MoveCancelled}}}); err != nil {
		t.Fatal(err)
	}
	if d2 = s.Volumes["d2"]; d2.Move != nil || d2.Planned != nil || !strings.Contains(d2.LastMove.Error, "2 planned moves dropped") {
		t.Fatalf("d2 after the cancel: move %+v, planned %v, last %+v", d2.Move, d2.Planned, d2.LastMove)
	}
}
