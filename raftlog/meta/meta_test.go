package meta

import (
	"errors"
	"log/slog"
	"testing"

	"github.com/hashicorp/raft"
)

var _ raft.StableStore = (*Stable)(nil)

func TestStableStore(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	a, b := db.Stable("a"), db.Stable("b")
	if _, err := a.Get([]byte("k")); !errors.Is(err, ErrNotFound) || err.Error() != "not found" {
		t.Fatalf("missing key: %v (raft needs the message \"not found\")", err)
	}
	if _, err := a.GetUint64([]byte("term")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing uint64: %v", err)
	}
	if err := a.SetUint64([]byte("term"), 42); err != nil {
		t.Fatal(err)
	}
	if err := a.Set([]byte("vote"), []byte("n2")); err != nil {
		t.Fatal(err)
	}
	if err := b.SetUint64([]byte("term"), 7); err != nil {
		t.Fatal(err)
	}
	if err := db.PutJSON("x", map[string]int{"n": 1}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	db, err = Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	a, b = db.Stable("a"), db.Stable("b")
	if v, err := a.GetUint64([]byte("term")); err != nil || v != 42 {
		t.Fatalf("term of a after reopen: %d %v", v, err)
	}
	if v, err := b.GetUint64([]byte("term")); err != nil || v != 7 {
		t.Fatalf("groups share keys: term of b %d %v", v, err)
	}
	if v, err := a.Get([]byte("vote")); err != nil || string(v) != "n2" {
		t.Fatalf("vote %q %v", v, err)
	}
	var m map[string]int
	if err := db.GetJSON("x", &m); err != nil || m["n"] != 1 {
		t.Fatalf("json %v %v", m, err)
	}
	if err := db.Delete([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := db.GetJSON("x", &m); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := a.Set([]byte("bad"), []byte{1, 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.GetUint64([]byte("bad")); err == nil {
		t.Fatal("a 2-byte value read as uint64")
	}
}
