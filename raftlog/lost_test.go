package raftlog

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

// TestReadmitLostReplica: in a configuration without a catalog
// (AskPeers), a new volume's replicas bootstrap as before; a follower
// whose files are deleted while its host is down does not come back as an
// empty voter: it has the leader remove it, joins as a non-voter, pulls
// the volume and is a voter again once caught up, with every write.
func TestReadmitLostReplica(t *testing.T) {
	// No preferred leader: leadership must not be handed to the follower
	// that loses its files.
	spec := VolumeSpec{Name: "vol", Size: 8 << 20, AskPeers: true}
	c, f, v := askingVolume(t, spec, 200)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// A request to evict a server that answers the leader is refused (by
	// whoever leads: leadership may move on a loaded machine).
	for deadline := time.Now().Add(20 * time.Second); ; {
		nl := c.leader("vol")
		ans := c.hosts[nl].h.answerReadmit(readmitRequest{Group: "vol", ID: c.peers[f].ID, Step: stepEvict})
		if ans.Leader && nl != f {
			if ans.Done || !strings.Contains(ans.Error, "answers the leader") {
				t.Fatalf("evicting a healthy follower: %+v", ans)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no leader other than the follower answered the eviction request")
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.stop(f)
	if err := os.RemoveAll(filepath.Join(c.dirs[f], "groups", "vol")); err != nil {
		t.Fatal(err)
	}
	// Whether the leader's configuration ever leaves the lost replica out
	// or as a non-voter.
	stopWatch, left := make(chan struct{}), make(chan bool, 1)
	go func() {
		out := false
		for {
			select {
			case <-stopWatch:
				left <- out
				return
			case <-time.After(2 * time.Millisecond):
			}
			ms, _ := v.Members()
			if !slices.ContainsFunc(ms, func(m Member) bool { return m.ID == c.peers[f].ID && m.Voter }) {
				out = true
			}
		}
	}()
	c.start(f)
	c.open1(f, spec)
	// Writes go on meanwhile (two voters, then three).
	for k := 200; k < 220; k++ {
		if err := v.WriteAt(ctx, bytes.Repeat([]byte{byte(k + 1)}, 4096), int64(k)*4096, 0); err != nil {
			t.Fatal(err)
		}
	}
	nv := c.hosts[f].vol["vol"]
	deadline := time.Now().Add(30 * time.Second)
	for {
		ms, err := v.Members()
		if err != nil {
			t.Fatal(err)
		}
		voters := 0
		for _, m := range ms {
			if m.Voter {
				voters++
			}
		}
		if voters == 3 && nv.Status().AppliedIndex > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lost replica was not readmitted: members %+v, its status %+v", ms, nv.Status())
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stopWatch)
	if !<-left {
		t.Error("the replica was a voter throughout: it came back as the same voter without its state")
	}
	if cp := nv.Copy(); !cp.OK || cp.Bytes == 0 {
		t.Errorf("the readmitted replica did not pull the volume: %+v", cp)
	}
	for k := 0; k < 220; k += 11 {
		waitFile(t, nv, k, byte(k+1))
	}
	waitFile(t, nv, 219, 220)

	// Lost again, and stopped while it pulls the volume as a non-voter
	// (the pull slowed down): started again, it is promoted all the same.
	c.stop(f)
	if err := os.RemoveAll(filepath.Join(c.dirs[f], "groups", "vol")); err != nil {
		t.Fatal(err)
	}
	c.start(f)
	slow := spec
	slow.CopyRate = 128 << 10
	c.open1(f, slow)
	nv = c.hosts[f].vol["vol"]
	nonvoter := func() bool {
		ms, _ := v.Members()
		return slices.ContainsFunc(ms, func(m Member) bool { return m.ID == c.peers[f].ID && !m.Voter })
	}
	for deadline := time.Now().Add(10 * time.Second); !nv.Copy().Active || !nonvoter(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no pull as a non-voter: %+v", nv.Copy())
		}
	}
	c.stop(f)
	c.start(f)
	c.open1(f, spec)
	nv = c.hosts[f].vol["vol"]
	deadline = time.Now().Add(30 * time.Second)
	for {
		ms, _ := v.Members()
		if slices.ContainsFunc(ms, func(m Member) bool { return m.ID == c.peers[f].ID && m.Voter }) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not promoted after a restart as a non-voter: members %+v", ms)
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitFile(t, nv, 219, 220)
}

// TestReadmitAfterWholeRestart restarts all three hosts at once, one of
// them with its replica's files deleted: the others' replicas are not
// open yet when it asks, and must not pass for replicas without history
// (it would bootstrap an empty voter); it waits for them and is
// readmitted, with every write.
func TestReadmitAfterWholeRestart(t *testing.T) {
	spec := VolumeSpec{Name: "vol", Size: 8 << 20, AskPeers: true}
	c, f, _ := askingVolume(t, spec, 64)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range 3 {
		c.stop(i)
	}
	if err := os.RemoveAll(filepath.Join(c.dirs[f], "groups", "vol")); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		c.start(i)
	}
	// The lost replica asks first; the others open a little later.
	vols := make([]*Volume, 3)
	errs := make(chan error, 3)
	open := func(i int) {
		var err error
		vols[i], err = c.hosts[i].h.OpenVolumeContext(ctx, spec)
		errs <- err
	}
	go open(f)
	time.Sleep(300 * time.Millisecond)
	for i := range 3 {
		if i != f {
			go open(i)
		}
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		c.hosts[i].vol["vol"] = vols[i]
	}
	nl := c.leader("vol")
	deadline := time.Now().Add(30 * time.Second)
	for {
		ms, _ := vols[nl].Members()
		if slices.ContainsFunc(ms, func(m Member) bool { return m.ID == c.peers[f].ID && m.Voter }) && vols[f].Copy().OK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lost replica was not readmitted: members %+v, copy %+v", ms, vols[f].Copy())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for k := 0; k < 64; k += 7 {
		waitFile(t, vols[f], k, byte(k+1))
	}
}

// askingVolume opens spec on three hosts and writes blocks 0 to n-1 (block
// k holds k+1) through its leader; it returns the cluster, a follower's
// index and the leader's volume.
func askingVolume(t *testing.T, spec VolumeSpec, n int) (*testCluster, int, *Volume) {
	t.Helper()
	c := newTestCluster(t, 3, nil)
	c.open(spec)
	l := c.leader(spec.Name)
	v := c.hosts[l].vol[spec.Name]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for k := range n {
		if err := v.WriteAt(ctx, bytes.Repeat([]byte{byte(k + 1)}, 4096), int64(k)*4096, 0); err != nil {
			t.Fatal(err)
		}
	}
	return c, (l + 1) % 3, v
}
