package raftlog

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestExistingWithoutState: a replica opened as Existing that holds no
// log entry and no checkpoint fails with ErrStateLost instead of
// bootstrapping (a term and vote alone do not count), and the failed open
// leaves nothing registered: the same volume opens afterwards.
func TestExistingWithoutState(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	h := c.hosts[0].h
	spec := VolumeSpec{Name: "vol", Size: 1 << 20}
	lost := spec
	lost.Existing = true
	if _, err := h.OpenVolume(lost); !errors.Is(err, ErrStateLost) {
		t.Fatalf("a new replica opened as existing: %v, want ErrStateLost", err)
	}
	c.open1(0, spec) // created (bootstrapped) now
	c.leader("vol")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.hosts[0].vol["vol"].WriteAt(ctx, []byte{1, 2, 3}, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.CloseVolume("vol", false); err != nil {
		t.Fatal(err)
	}
	v, err := h.OpenVolume(lost) // it has its state: opens
	if err != nil {
		t.Fatalf("reopening a replica with its state: %v", err)
	}
	c.hosts[0].vol["vol"] = v
	c.leader("vol")
	if err := h.CloseVolume("vol", false); err != nil {
		t.Fatal(err)
	}
	// Log and checkpoints gone, term and vote kept.
	dir := filepath.Join(c.dirs[0], "groups", "vol")
	for _, p := range []string{"log", "snapshots"} {
		if err := os.RemoveAll(filepath.Join(dir, p)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "stable")); err != nil {
		t.Fatalf("the term and vote's file: %v", err)
	}
	if _, err := h.OpenVolume(lost); !errors.Is(err, ErrStateLost) {
		t.Fatalf("a replica without log or checkpoint opened as existing: %v, want ErrStateLost", err)
	}
	if _, err := h.OpenVolume(spec); err != nil {
		t.Fatalf("opening after a refused open: %v", err)
	}
}
