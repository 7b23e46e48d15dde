package catalog

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

func apply(t *testing.T, s *State, i uint64, c Command) error {
	t.Helper()
	return s.Apply(i, c.Encode())
}

// roundTrip returns s as restored from its snapshot.
func roundTrip(t *testing.T, s *State) *State {
	t.Helper()
	b, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	r, err := Restore(b)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func threeHosts(t *testing.T) *State {
	s := New()
	for i, n := range []string{"n1", "n2", "n3"} {
		if err := apply(t, s, uint64(i+1), Command{Kind: CmdPutHost, Host: &Host{Name: n, Capacity: 100 << 30}}); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func TestCommands(t *testing.T) {
	at := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
	vol := func(name string, size int64, reps ...string) *Volume {
		return &Volume{Name: name, Size: size, Replicas: reps, PreferredLeader: reps[0]}
	}
	tests := []struct {
		name string
		cmd  Command
		want error
	}{
		{"create", Command{Kind: CmdCreateVolume, Volume: vol("a", 1<<30, "n1", "n2", "n3"), At: at}, nil},
		{"create again", Command{Kind: CmdCreateVolume, Volume: vol("a", 1<<30, "n1"), At: at}, ErrExists},
		{"bad name", Command{Kind: CmdCreateVolume, Volume: vol("A/b", 1, "n1")}, ErrInvalid},
		{"zero size", Command{Kind: CmdCreateVolume, Volume: vol("b", 0, "n1")}, ErrInvalid},
		{"unknown host", Command{Kind: CmdCreateVolume, Volume: vol("b", 1, "n9")}, ErrNotFound},
		{"two replicas on a host", Command{Kind: CmdCreateVolume, Volume: vol("b", 1, "n1", "n1")}, ErrInvalid},
		{"six replicas", Command{Kind: CmdCreateVolume, Volume: vol("b", 1, "n1", "n2", "n3", "n4", "n5", "n6")}, ErrInvalid},
		{"leader without replica", Command{Kind: CmdCreateVolume, Volume: &Volume{Name: "b", Size: 1, Replicas: []string{"n1"}, PreferredLeader: "n2"}}, ErrInvalid},
		{"grow", Command{Kind: CmdResizeVolume, Name: "a", Size: 2 << 30}, nil},
		{"shrink", Command{Kind: CmdResizeVolume, Name: "a", Size: 1 << 30}, ErrShrinking},
		{"resize missing", Command{Kind: CmdResizeVolume, Name: "zz", Size: 1}, ErrNotFound},
		{"remove", Command{Kind: CmdRemoveVolume, Name: "a"}, nil},
		{"remove again", Command{Kind: CmdRemoveVolume, Name: "a"}, ErrNotFound},
		{"unknown kind", Command{Kind: "explode"}, ErrInvalid},
		{"host without name", Command{Kind: CmdPutHost, Host: &Host{}}, ErrInvalid},
	}
	s := threeHosts(t)
	for i, tc := range tests {
		before := s.Clone()
		err := apply(t, s, uint64(10+i), tc.cmd)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Fatalf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if err != nil {
			before.Index = s.Index
			if !reflect.DeepEqual(before, s) {
				t.Fatalf("%s: a refused command changed the catalog", tc.name)
			}
		}
		if s.Index != uint64(10+i) {
			t.Fatalf("%s: index %d", tc.name, s.Index)
		}
		switch tc.name {
		case "create":
			v := s.Volumes["a"]
			if !v.Created.Equal(at) || v.Changed != 10 || v.ID != 10 {
				t.Fatalf("created volume %+v", v)
			}
		case "grow":
			if s.Volumes["a"].Size != 2<<30 {
				t.Fatal("not grown")
			}
		case "remove":
			if !s.IsRemoved(10) || s.Volumes["a"] != nil {
				t.Fatalf("removed volume: removed ids %v", s.Removed)
			}
		}
	}
	if err := s.Apply(99, []byte("{not json")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("garbage: %v", err)
	}
}

func TestPutHostKeepsJoined(t *testing.T) {
	s := New()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	apply(t, s, 1, Command{Kind: CmdPutHost, Host: &Host{Name: "n1", NBDAddr: "a", Joined: t0}})
	apply(t, s, 2, Command{Kind: CmdPutHost, Host: &Host{Name: "n1", NBDAddr: "b", Joined: t0.Add(time.Hour)}})
	if h := s.Hosts["n1"]; h.NBDAddr != "b" || !h.Joined.Equal(t0) {
		t.Fatalf("host %+v", h)
	}
}

func TestPlace(t *testing.T) {
	s := threeHosts(t)
	cands := []Candidate{
		{Name: "n1", Free: 10 << 30, Alive: true},
		{Name: "n2", Free: 50 << 30, Alive: true},
		{Name: "n3", Free: 30 << 30, Alive: true},
		{Name: "n4", Free: 90 << 30, Alive: false},
		{Name: "n5", Free: 1 << 30, Alive: true},
	}
	hosts, leader, err := s.Place(2<<30, 3, cands)
	if err != nil || !reflect.DeepEqual(hosts, []string{"n2", "n3", "n1"}) || leader != "n2" {
		t.Fatalf("place: %v %v %v", hosts, leader, err)
	}
	if _, _, err := s.Place(20<<30, 3, cands); !errors.Is(err, ErrNoPlace) {
		t.Fatalf("too big: %v", err)
	}
	// Leaders spread: with n2 already preferred twice, the next volume on
	// the same hosts prefers another one.
	for i, name := range []string{"v1", "v2"} {
		apply(t, s, uint64(10+i), Command{Kind: CmdCreateVolume, Volume: &Volume{Name: name, Size: 1, Replicas: []string{"n2", "n3", "n1"}, PreferredLeader: "n2"}})
	}
	_, leader, _ = s.Place(1, 3, cands)
	if leader == "n2" {
		t.Fatalf("leader not spread: %s", leader)
	}
	if s.Allocated("n2") != 2 || s.Allocated("n5") != 0 {
		t.Fatalf("allocated %d %d", s.Allocated("n2"), s.Allocated("n5"))
	}
}

func TestSnapshotRoundTripAndClone(t *testing.T) {
	s := threeHosts(t)
	apply(t, s, 7, Command{Kind: CmdCreateVolume, Volume: &Volume{Name: "a", Size: 5, Replicas: []string{"n1", "n2"}}})
	b, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	r, err := Restore(b)
	if err != nil || !reflect.DeepEqual(r, s) {
		t.Fatalf("restore: %v\n%+v\n%+v", err, r, s)
	}
	c := s.Clone()
	c.Volumes["a"].Replicas[0] = "zz"
	c.Hosts["n1"].NBDAddr = "zz"
	if s.Volumes["a"].Replicas[0] != "n1" || s.Hosts["n1"].NBDAddr == "zz" {
		t.Fatal("Clone shares memory with the original")
	}
	if got := s.VolumeNames(); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatal(got)
	}
}
