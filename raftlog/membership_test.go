package raftlog

import (
	"bytes"
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestMoveReplica moves the replica of n1 (the leader) to n4 while a
// writer writes: n4 joins as a non-voter, pulls the volume by stream, is
// promoted, n1 hands leadership over and is removed; the content of n4
// matches the leader's range by range, and the group commits without n1
// and with one of the others stopped.
func TestMoveReplica(t *testing.T) {
	c := newTestCluster(t, 4, nil)
	spec := VolumeSpec{Name: "m", Size: 16 << 20, Peers: c.peers[:3], PreferredLeader: "n1"}
	v1 := c.openLedByN1(spec)
	ctx := context.Background()
	// Enough entries that the join checkpoint drops the start of the log.
	for k := range 300 {
		if err := v1.WriteAt(ctx, bytes.Repeat([]byte{byte(k)}, 4096), int64(k)*4096, 0); err != nil {
			t.Fatal(err)
		}
	}
	// A writer on n2 keeps writing through the whole move.
	var (
		stop    atomic.Bool
		wg      sync.WaitGroup
		mu      sync.Mutex
		written = map[int]byte{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		v := c.hosts[1].vol["m"]
		for k := 0; !stop.Load(); k++ {
			blk := 1000 + k%2000
			val := byte(k%250 + 1)
			if err := v.WriteAt(ctx, bytes.Repeat([]byte{val}, 4096), int64(blk)*4096, 0); err != nil {
				t.Errorf("write during the move: %v", err)
				return
			}
			mu.Lock()
			written[blk] = val
			mu.Unlock()
		}
	}()

	if err := c.hosts[1].vol["m"].AddNonvoter(ctx, c.peers[3]); err == nil {
		t.Fatal("AddNonvoter on a follower succeeded")
	}
	c.open1(3, VolumeSpec{Name: "m", Size: 16 << 20, Peers: c.peers, Join: true})
	v4 := c.hosts[3].vol["m"]
	if err := v1.AddNonvoter(ctx, c.peers[3]); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, v1, v4)
	if cp := v4.Copy(); !cp.OK || cp.Bytes == 0 {
		t.Errorf("n4 did not pull the volume by stream: %+v", cp)
	}
	if err := v1.Promote(ctx, "n4"); err != nil {
		t.Fatal(err)
	}
	ms, _ := v1.Members()
	if !slices.Contains(ms, Member{ID: "n4", Voter: true}) {
		t.Fatalf("members after promotion: %v", ms)
	}
	if err := v1.Remove(ctx, "n1"); err == nil {
		t.Fatal("the leader removed itself")
	}
	// As the agent does when the source leaves: a replica that stays
	// becomes the preferred leader everywhere (otherwise n2 hands the
	// leadership straight back to n1, the spec's preferred leader).
	for _, i := range []int{0, 1, 2, 3} {
		if err := c.hosts[i].vol["m"].SetPreferredLeader("n2"); err != nil {
			t.Fatal(err)
		}
	}
	if err := v1.TransferLeadershipTo("n2"); err != nil {
		t.Fatal(err)
	}
	l := c.leader("m")
	if l == 0 {
		t.Fatal("n1 still leads")
	}
	vl := c.hosts[l].vol["m"]
	if err := vl.Remove(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	ms, _ = vl.Members()
	if slices.ContainsFunc(ms, func(m Member) bool { return m.ID == "n1" }) || len(ms) != 3 {
		t.Fatalf("members after removal: %v", ms)
	}
	time.Sleep(300 * time.Millisecond)
	stop.Store(true)
	wg.Wait()

	// Integrity: n4's ranges against the leader's at a barrier index.
	b, err := vl.Barrier(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want, err := vl.Checksums(ctx, b, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := v4.Checksums(ctx, b, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) || len(got) != 16 {
		t.Fatalf("%d and %d ranges, want 16", len(got), len(want))
	}
	for i := range want {
		if !want[i].Comparable(got[i]) {
			t.Errorf("range %d: %+v and %+v not comparable with writes stopped", i, want[i], got[i])
		} else if want[i].Sum != got[i].Sum {
			t.Errorf("range %d differs: %+v, n4 %+v", i, want[i], got[i])
		}
	}
	// The data acknowledged during the move is on n4.
	for blk, val := range written {
		waitFile(t, v4, blk, val)
	}
	// n1 is out: with n1 closed and one more voter stopped, the two
	// others (n4 among them) still commit.
	c.stop(0)
	other := 1
	if l == 1 {
		other = 2
	}
	c.stop(other)
	l = c.leader("m")
	if err := c.hosts[l].vol["m"].WriteAt(ctx, bytes.Repeat([]byte{9}, 4096), 0, 0); err != nil {
		t.Fatalf("write after the move with one voter down: %v", err)
	}
	waitFile(t, v4, 0, 9)
}

// waitCaughtUp waits until replica f has applied the leader's commit index.
func waitCaughtUp(t *testing.T, leader, f *Volume) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if f.Status().AppliedIndex >= leader.Status().CommitIndex-4 && !f.Copy().Active && f.Status().AppliedIndex > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica did not catch up: %+v vs leader %+v", f.Status(), leader.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRangeSumComparable(t *testing.T) {
	for _, tc := range []struct {
		a, b RangeSum
		want bool
	}{
		{RangeSum{Since: 5, Until: 10}, RangeSum{Since: 7, Until: 12}, true},
		{RangeSum{Since: 5, Until: 10}, RangeSum{Since: 11, Until: 12}, false},
		{RangeSum{Since: 10, Until: 10}, RangeSum{Since: 0, Until: 10}, true},
		{RangeSum{Since: 11, Until: 10}, RangeSum{Since: 0, Until: 20}, false}, // read mid-entry
	} {
		if got := tc.a.Comparable(tc.b); got != tc.want {
			t.Errorf("%+v vs %+v: %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestRangeVersions(t *testing.T) {
	var r rangeVersions
	r.reset(7)
	r.touch(ChecksumRange-1, 2, 9) // ranges 0 and 1
	r.touch(5*ChecksumRange, ChecksumRange, 11)
	for i, want := range []uint64{9, 9, 7, 7, 7, 11, 7} {
		if got := r.version(int64(i)); got != want {
			t.Errorf("range %d: version %d, want %d", i, got, want)
		}
	}
	r.reset(20)
	if got := r.version(5); got != 20 {
		t.Errorf("after reset: %d", got)
	}
}

// TestCopyResumesAfterRestart stops a joining replica in the middle of its
// (rate-limited) copy by stream: when it opens again it finishes the copy
// from the offset it had recorded, not from the start, does not copy it
// once more when raft sends the snapshot again, and catches up to the
// leader's content.
func TestCopyResumesAfterRestart(t *testing.T) {
	defer func(v int64) { pullSyncEvery = v }(pullSyncEvery)
	pullSyncEvery = 2 << 20
	const size = 16 << 20
	c := newTestCluster(t, 4, nil)
	spec := VolumeSpec{Name: "r", Size: size, Peers: c.peers[:3], PreferredLeader: "n1"}
	v1 := c.openLedByN1(spec)
	ctx := context.Background()
	for k := range size >> 20 {
		if err := v1.WriteAt(ctx, bytes.Repeat([]byte{byte(k + 1)}, 1<<20), int64(k)<<20, 0); err != nil {
			t.Fatal(err)
		}
	}
	// Enough entries that the join checkpoint drops the start of the log.
	for k := range 300 {
		if err := v1.WriteAt(ctx, bytes.Repeat([]byte{byte(k)}, 4096), int64(k)*4096, 0); err != nil {
			t.Fatal(err)
		}
	}
	join := VolumeSpec{Name: "r", Size: size, Peers: c.peers, Join: true}
	slow := join
	slow.CopyRate = 4 << 20 // 4 s for the volume
	c.open1(3, slow)
	for try := 0; ; try++ { // leadership may move on a loaded machine
		err := c.hosts[c.leader("r")].vol["r"].AddNonvoter(ctx, c.peers[3])
		if err == nil {
			break
		}
		if try == 5 {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	deadline := time.Now().Add(30 * time.Second)
	for c.hosts[3].vol["r"].Copy().Offset < 7<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("copy %+v", c.hosts[3].vol["r"].Copy())
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.stop(3)
	c.start(3)
	c.open1(3, join)
	v4 := c.hosts[3].vol["r"]
	cp := v4.Copy()
	if !cp.OK || cp.Bytes == 0 || cp.Bytes > size-4<<20 {
		t.Fatalf("copy after the restart: %+v (want a copy resumed past 4 MiB)", cp)
	}
	t.Logf("copy resumed: %d bytes after the restart", cp.Bytes)
	// The leader sends the snapshot again (its InstallSnapshot failed):
	// the replica, which has the volume as of that index, does not copy
	// it again before it applies the next entries.
	if err := v1.WriteAt(ctx, bytes.Repeat([]byte{0xee}, 4096), 3000*4096, 0); err != nil {
		t.Fatal(err)
	}
	waitFile(t, v4, 3000, 0xee)
	waitCaughtUp(t, v1, v4)
	if got := v4.Copy(); got.Started != cp.Started {
		t.Errorf("the volume was copied again after the resumed copy: %+v", got)
	}
	want, got := make([]byte, size), make([]byte, size)
	if err := v1.g.file.ReadAt(ctx, want, 0); err != nil {
		t.Fatal(err)
	}
	if err := v4.g.file.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the resumed replica differs from the leader")
	}
}

// openLedByN1 opens spec on the first three hosts and returns n1's replica
// once n1 leads it (spec.PreferredLeader must be n1).
func (c *testCluster) openLedByN1(spec VolumeSpec) *Volume {
	for i := range 3 {
		c.open1(i, spec)
	}
	for c.leader(spec.Name) != 0 {
		time.Sleep(50 * time.Millisecond)
	}
	return c.hosts[0].vol[spec.Name]
}
