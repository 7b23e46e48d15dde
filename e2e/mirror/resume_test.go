package mirror

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/testbin"
)

// startMove starts a rate-limited move of the volume's replica on from to
// to through host api, and waits until the copy is past minCopied bytes.
func startMove(t *testing.T, c *testbin.Cluster, api int, from, to string, rate, minCopied int64) admin.VolumeMove {
	t.Helper()
	ctx := context.Background()
	if _, err := c.Admin(api).MoveVolume(ctx, volName, admin.MoveVolume{From: from, To: to, MaxRate: admin.Size(rate)}); err != nil {
		t.Fatal(err)
	}
	var m admin.VolumeMove
	testbin.WaitFor(t, 60*time.Second, "the copy under way", func() error {
		got, err := c.Admin(api).Volume(ctx, volName)
		if err != nil {
			return err
		}
		if got.Move == nil || got.Move.Done < minCopied {
			return fmt.Errorf("move %+v", got.Move)
		}
		m = *got.Move
		return nil
	})
	return m
}

// waitMoved waits until the volume's last move is the one with id and
// returns the volume; the move must have completed with a passed check.
func waitMoved(t *testing.T, c *testbin.Cluster, api int, id uint64, timeout time.Duration) admin.Volume {
	t.Helper()
	var v admin.Volume
	testbin.WaitFor(t, timeout, "the move completed", func() error {
		got, err := c.Admin(api).Volume(context.Background(), volName)
		if err != nil {
			return err
		}
		if got.LastMove == nil || got.LastMove.ID != id {
			return fmt.Errorf("move %+v", got.Move)
		}
		v = got
		return nil
	})
	if r := v.LastMove; r.Result != "completed" || r.Check == nil || !r.Check.OK {
		t.Fatalf("last move %+v (check %+v)", r, r.Check)
	}
	return v
}

// TestMoveDestinationRestarted kills the destination with SIGKILL in the
// middle of a rate-limited copy, under writes, and starts it again without
// cancelling: the move goes on, the copy resumes from where it stopped
// (the destination receives less than the whole volume after its restart),
// and the new replica holds what was acknowledged.
func TestMoveDestinationRestarted(t *testing.T) {
	const size = 64 << 20
	c, v := startCluster(t, size)
	from, to := v.Hosts[2], spareHost(c, v)
	client := index(c, v.Hosts[0])
	prefill(t, c, client, size)
	l := startLoad(t, c, client, 2, size/blockSize, nil)
	m := startMove(t, c, client, from, to, 16<<20, size/2)
	dest := index(c, to)
	c.Kill(dest)
	t.Logf("killed %s with %d of %d bytes copied", to, m.Done, size)
	time.Sleep(time.Second)
	c.Start(dest)
	got := waitMoved(t, c, client, m.ID, 90*time.Second)
	l.end(t)
	r := got.LastMove
	l.mu.Lock()
	t.Logf("move completed: after the restart the destination received %d bytes (of %d; %d before the kill); %d writes, longest gap %v",
		r.Bytes, size, m.Done, l.writes, l.maxGap.Round(100*time.Microsecond))
	l.mu.Unlock()
	// Progress is recorded every 0.5 s (8 MiB at this rate): the copy
	// resumes at most that far before where it was killed.
	if limit := size - m.Done + 12<<20; r.Bytes == 0 || r.Bytes > limit {
		t.Fatalf("the destination received %d bytes after its restart, want more than 0 and at most %d: the copy did not resume near %d", r.Bytes, limit, m.Done)
	}
	if !slices.Contains(got.Hosts, to) || slices.Contains(got.Hosts, from) {
		t.Fatalf("hosts %v after moving %s to %s", got.Hosts, from, to)
	}
	verify(t, c, got.Hosts, l, size, size)
}

// TestMoveSourceKilled kills the source of a move, which also leads the
// volume, with SIGKILL in the middle of the copy, under writes: another
// replica takes the lead, the destination's copy continues from a live
// replica, the move completes without the source, and the source, started
// again, deletes its replica.
func TestMoveSourceKilled(t *testing.T) {
	const size = 64 << 20
	c, v := startCluster(t, size)
	from, to := v.Leader, spareHost(c, v)
	client := -1
	for _, h := range v.Hosts {
		if h != from && client < 0 {
			client = index(c, h)
		}
	}
	prefill(t, c, client, size)
	l := startLoad(t, c, client, 2, size/blockSize, nil)
	m := startMove(t, c, client, from, to, 16<<20, size/4)
	c.Kill(index(c, from))
	t.Logf("killed the source and leader %s with %d of %d bytes copied", from, m.Done, size)
	got := waitMoved(t, c, client, m.ID, 90*time.Second)
	l.end(t)
	r := got.LastMove
	l.mu.Lock()
	t.Logf("move completed without its source: %d bytes copied in the last stream; %d writes, longest gap %v", r.Bytes, l.writes, l.maxGap.Round(100*time.Microsecond))
	l.mu.Unlock()
	if !slices.Contains(got.Hosts, to) || slices.Contains(got.Hosts, from) {
		t.Fatalf("hosts %v after moving %s to %s", got.Hosts, from, to)
	}
	verify(t, c, got.Hosts, l, size, size)
	c.Start(index(c, from))
	waitGone(t, c, index(c, from))
}
