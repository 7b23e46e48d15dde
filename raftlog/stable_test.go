package raftlog

import (
	"testing"
)

// TestOpenStableMoves checks that OpenStable moves a group's term and vote
// from the metadata database, where earlier versions kept them, into the
// group's file, deletes them there, and that values found there win over
// the file's (they were left by a version that predates the file).
func TestOpenStableMoves(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ID, cfg.DataDir = "h1", t.TempDir()
	h, err := OpenHost(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	dir := t.TempDir()
	old := h.Stable("v")
	set := func(term uint64, cand string) {
		t.Helper()
		if err := old.SetUint64([]byte("CurrentTerm"), term); err != nil {
			t.Fatal(err)
		}
		if err := old.Set([]byte("LastVoteCand"), []byte(cand)); err != nil {
			t.Fatal(err)
		}
	}
	check := func(term uint64, cand string) {
		t.Helper()
		s, err := h.OpenStable("v", dir)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != term {
			t.Fatalf("CurrentTerm = %d, %v; want %d", v, err, term)
		}
		if v, err := s.Get([]byte("LastVoteCand")); err != nil || string(v) != cand {
			t.Fatalf("LastVoteCand = %q, %v; want %q", v, err, cand)
		}
		if kv, err := old.All(); err != nil || len(kv) != 0 {
			t.Fatalf("left in the metadata database: %v, %v", kv, err)
		}
	}
	set(7, "a")
	check(7, "a")
	check(7, "a") // reopened: from the file alone
	set(9, "b")   // written by an older version after the move
	check(9, "b")
}
