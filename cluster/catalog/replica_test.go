package catalog

import (
	"errors"
	"slices"
	"testing"
)

// TestReplicaOpened: replica_opened records a replica host once, only for
// the volume's current ID and its replica hosts; a completed move moves
// the record to the destination; a rebuild keeps it.
func TestReplicaOpened(t *testing.T) {
	s := threeHosts(t)
	for i, h := range []*Host{{Name: "n1", State: "alive"}, {Name: "n2", State: "alive"}, {Name: "n3", State: "alive"}, {Name: "n4", State: "alive"}} {
		if err := apply(t, s, uint64(4+i), Command{Kind: CmdPutHost, Host: h}); err != nil {
			t.Fatal(err)
		}
	}
	if err := apply(t, s, 10, Command{Kind: CmdCreateVolume, Volume: &Volume{Name: "v", Size: 1 << 20, Replicas: []string{"n1", "n2", "n3"}, PreferredLeader: "n1", Opened: []string{"n9"}}}); err != nil {
		t.Fatal(err)
	}
	opened := func(id uint64, host string) Command {
		return Command{Kind: CmdReplicaOpened, Name: "v", Move: &MoveCommand{ID: id, From: host}}
	}
	ok := &MoveCheck{Index: 19, Ranges: 4, Compared: 4, OK: true}
	steps := []struct {
		cmd  Command
		want error
		// opened is the volume's Opened after the step.
		opened []string
	}{
		{cmd: opened(10, "n1"), opened: []string{"n1"}}, // what create_volume brought is dropped
		{cmd: opened(10, "n1"), opened: []string{"n1"}}, // again: no change
		{cmd: opened(10, "n2"), opened: []string{"n1", "n2"}},
		{cmd: opened(9, "n3"), want: ErrNotFound, opened: []string{"n1", "n2"}}, // an older volume of the name
		{cmd: opened(10, "n4"), want: ErrInvalid, opened: []string{"n1", "n2"}}, // no replica there
		{cmd: Command{Kind: CmdReplicaOpened, Name: "v"}, want: ErrInvalid, opened: []string{"n1", "n2"}},
		{cmd: Command{Kind: CmdMoveReplica, Name: "v", Move: &MoveCommand{From: "n2", To: "n4"}}, opened: []string{"n1", "n2"}},
		{cmd: Command{Kind: CmdMovePhase, Name: "v", Move: &MoveCommand{ID: 26, Phase: MovePromoted}}, opened: []string{"n1", "n2"}},
		{cmd: Command{Kind: CmdMovePhase, Name: "v", Move: &MoveCommand{ID: 26, Phase: MoveRemoving, Check: ok}}, opened: []string{"n1", "n2"}},
		{cmd: Command{Kind: CmdEndMove, Name: "v", Move: &MoveCommand{ID: 26, Result: &MoveResult{Result: MoveCompleted}}}, opened: []string{"n1", "n4"}},
		{cmd: Command{Kind: CmdMoveReplica, Name: "v", Move: &MoveCommand{From: "n1", To: "n1"}}, opened: []string{"n1", "n4"}},
		{cmd: Command{Kind: CmdMovePhase, Name: "v", Move: &MoveCommand{ID: 30, Phase: MoveCopying}}, opened: []string{"n1", "n4"}},
		{cmd: Command{Kind: CmdMovePhase, Name: "v", Move: &MoveCommand{ID: 30, Phase: MovePromoted}}, opened: []string{"n1", "n4"}},
		{cmd: Command{Kind: CmdEndMove, Name: "v", Move: &MoveCommand{ID: 30, Result: &MoveResult{Result: MoveCompleted, Check: ok}}}, opened: []string{"n1", "n4"}},
	}
	for i, st := range steps {
		before := s.Clone()
		err := apply(t, s, uint64(20+i), st.cmd)
		if !errors.Is(err, st.want) || (st.want == nil) != (err == nil) {
			t.Fatalf("step %d (%s): %v, want %v", i, st.cmd.Kind, err, st.want)
		}
		if got := s.Volumes["v"].Opened; !slices.Equal(got, st.opened) {
			t.Fatalf("step %d (%s): opened %v, want %v", i, st.cmd.Kind, got, st.opened)
		}
		if err == nil && len(before.Volumes["v"].Opened) > 0 && len(s.Volumes["v"].Opened) > 0 && &before.Volumes["v"].Opened[0] == &s.Volumes["v"].Opened[0] && !slices.Equal(before.Volumes["v"].Opened, s.Volumes["v"].Opened) {
			t.Fatalf("step %d: changed the record an older clone shares", i)
		}
	}
	if r := roundTrip(t, s); !slices.Equal(r.Volumes["v"].Opened, s.Volumes["v"].Opened) {
		t.Fatalf("restored opened %v, want %v", r.Volumes["v"].Opened, s.Volumes["v"].Opened)
	}
}

// TestHolds: a host holds its replica except while it is rebuilt.
func TestHolds(t *testing.T) {
	v := &Volume{Replicas: []string{"n1", "n2", "n3"}}
	tests := []struct {
		move *Move
		host string
		want bool
	}{
		{nil, "n1", true},
		{nil, "n4", false},
		{&Move{From: "n1", To: "n4"}, "n1", true}, // a move: the source serves until it completes
		{&Move{From: "n1", To: "n4"}, "n4", false},
		{&Move{From: "n2", To: "n2"}, "n2", false}, // being rebuilt
		{&Move{From: "n2", To: "n2"}, "n1", true},
	}
	for _, tt := range tests {
		v.Move = tt.move
		if got := v.Holds(tt.host); got != tt.want {
			t.Errorf("move %+v: Holds(%s) = %v, want %v", tt.move, tt.host, got, tt.want)
		}
	}
}
