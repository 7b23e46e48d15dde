package meta

import (
	"errors"
	"fmt"
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

// TestDeletePrefix deletes more keys than one batch while another volume's
// store keeps writing (DropPrefix would have refused those writes).
func TestDeletePrefix(t *testing.T) {
	db, err := Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for i := range 2500 {
		if err := db.Put(fmt.Appendf(nil, "raft/a/%d", i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Put([]byte("raft/b/CurrentTerm"), []byte("1")); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	writes := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				writes <- nil
				return
			default:
			}
			if err := db.Put([]byte("raft/b/CurrentTerm"), fmt.Appendf(nil, "%d", i)); err != nil {
				writes <- err
				return
			}
		}
	}()
	if err := db.DeletePrefix("raft/a/"); err != nil {
		t.Fatal(err)
	}
	close(stop)
	if err := <-writes; err != nil {
		t.Fatalf("a write to another prefix failed during the delete: %v", err)
	}
	if v, err := db.Get([]byte("raft/a/7")); err == nil && v != nil {
		t.Fatalf("raft/a/7 survived: %q", v)
	}
	if v, err := db.Get([]byte("raft/b/CurrentTerm")); err != nil || v == nil {
		t.Fatalf("raft/b/CurrentTerm: %q, %v", v, err)
	}
}
