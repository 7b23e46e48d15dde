package mirror

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
)

// TestMoveCheckFails damages the new replica behind raft's back in the
// middle of a rate-limited copy (a disk that returns other bytes than it
// was given): the integrity check finds the damaged range, the move ends
// as failed, the destination leaves the group and deletes its replica, the
// volume stays on its hosts, and its data is intact.
func TestMoveCheckFails(t *testing.T) {
	const size = 32 << 20
	c, v := startCluster(t, size)
	from, to := v.Hosts[2], spareHost(c, v)
	client := index(c, v.Hosts[0])
	prefill(t, c, client, size)
	m := startMove(t, c, client, from, to, 8<<20, 8<<20)
	// Block 1 is copied (the copy is in order) and no write after the
	// checkpoint touches it: only the check can notice the damage.
	const damaged = 1
	f, err := os.OpenFile(c.VolumePath(index(c, to), volName), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xee}, blockSize), damaged*blockSize); err != nil {
		t.Fatal(err)
	}
	f.Close()

	ctx := context.Background()
	api := c.Admin(client)
	testbin.WaitFor(t, 90*time.Second, "the move ended", func() error {
		got, err := api.Volume(ctx, volName)
		if err != nil {
			return err
		}
		if got.LastMove == nil || got.LastMove.ID != m.ID {
			return fmt.Errorf("move %+v", got.Move)
		}
		v = got
		return nil
	})
	r := v.LastMove
	if r.Result != "failed" || r.Check == nil || r.Check.OK || r.Check.Mismatched != 1 {
		t.Fatalf("last move %+v (check %+v), want failed with one range mismatched", r, r.Check)
	}
	t.Logf("move failed as it should: %s (check: %d of %d ranges compared, %d mismatched)", r.Error, r.Check.Compared, r.Check.Ranges, r.Check.Mismatched)
	if !slices.Contains(v.Hosts, from) || slices.Contains(v.Hosts, to) {
		t.Fatalf("hosts %v after a failed move of %s to %s", v.Hosts, from, to)
	}
	// The destination leaves the group and deletes its replica.
	testbin.WaitFor(t, 30*time.Second, "the destination's replica deleted", func() error {
		if _, err := os.Stat(c.VolumePath(index(c, to), volName)); err == nil {
			return fmt.Errorf("%s still holds its replica", to)
		}
		got, err := api.Volume(ctx, volName)
		if err != nil {
			return err
		}
		for _, rep := range got.Replicas {
			if rep.Host == to {
				return fmt.Errorf("%s is still a member: %+v", to, got.Replicas)
			}
		}
		return nil
	})
	// Every replica still holds the prefill, the damaged block included,
	// and reads through the destination's agent (now a proxy) see it.
	verify(t, c, v.Hosts, &load{acked: map[int64][]byte{}}, size, size)
	conn, err := c.Dial(ctx, index(c, to), volName)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got := make([]byte, blockSize)
	if err := conn.ReadAt(ctx, got, damaged*blockSize, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, prefillBlock(damaged)) {
		t.Fatal("block read through the destination's agent differs from what was written")
	}
}
