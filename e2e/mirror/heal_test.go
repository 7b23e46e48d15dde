package mirror

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
)

// healAfter is the self-healing delay of TestHeal's agents.
const healAfter = 5 * time.Second

// TestHeal kills (SIGKILL) the host of one of a volume's replicas while
// writers write through another host, and leaves it dead: once it has
// been failed for --heal-after, the control leader rebuilds its replica
// on the spare host by a replica move, with no write failing and every
// replica holding what was acknowledged. The dead host, started again
// late, removes the replica it no longer owns and serves the volume
// through its proxy with the data written while it was down.
func TestHeal(t *testing.T) {
	const size = 64 << 20
	c, v := startCluster(t, size, "--heal-after", healAfter.String())
	ctx := context.Background()
	// The victim is the volume's leader (its preferred leader, placed
	// first): the harder case, leadership moves before the rebuild.
	victim := v.Hosts[0]
	client := index(c, v.Hosts[1])
	spare := spareHost(c, v)
	prefill(t, c, client, size)
	api := c.Admin(client)
	l := startLoad(t, c, client, 2, size/blockSize, nil)
	time.Sleep(500 * time.Millisecond)
	c.Kill(index(c, victim))
	killed := time.Now()
	t.Logf("killed %s (replica and leader of %s) with SIGKILL", victim, volName)
	testbin.WaitFor(t, 30*time.Second, "another leader", func() error {
		got, err := api.Volume(ctx, volName)
		if err != nil {
			return err
		}
		if got.Leader == "" || got.Leader == victim {
			return fmt.Errorf("leader %q", got.Leader)
		}
		return nil
	})
	l.end(t)
	l.mu.Lock()
	t.Logf("failover: a new leader %v after the kill; longest write gap %v", time.Since(killed).Round(100*time.Millisecond), l.maxGap.Round(100*time.Microsecond))
	l.mu.Unlock()
	// The writers again, through the rebuild.
	l = startLoad(t, c, client, 2, size/blockSize, l)
	testbin.WaitFor(t, 120*time.Second, "the replica rebuilt on "+spare, func() error {
		got, err := api.Volume(ctx, volName)
		if err != nil {
			return err
		}
		if r := got.LastMove; r == nil || r.Result != "completed" || slices.Contains(got.Hosts, victim) {
			return fmt.Errorf("hosts %v, move %+v, last move %+v", got.Hosts, got.Move, got.LastMove)
		}
		return nil
	})
	healed := time.Since(killed)
	l.end(t)
	got, err := api.Volume(ctx, volName)
	if err != nil {
		t.Fatal(err)
	}
	r := got.LastMove
	if r.Reason != "heal" || r.From != victim || r.To != spare || r.Check == nil || !r.Check.OK {
		t.Fatalf("last move %+v (check %+v), want a healing move %s -> %s with a passed check", r, r.Check, victim, spare)
	}
	if !slices.Contains(got.Hosts, spare) || len(got.Hosts) != 3 {
		t.Fatalf("hosts after healing: %v", got.Hosts)
	}
	l.mu.Lock()
	t.Logf("healed %v after the kill (delay %v): %s copied in %v; during the rebuild %d writes, longest gap %v, 0 errors",
		healed.Round(100*time.Millisecond), healAfter, humanBytes(r.Bytes), r.Copy.Round(time.Millisecond), l.writes, l.maxGap.Round(100*time.Microsecond))
	l.mu.Unlock()
	l.logLongGaps(t, 50*time.Millisecond)
	verify(t, c, got.Hosts, l, size, size)

	// The dead host comes back late: it removes its old replica and serves
	// the volume through a proxy, with the data written while it was down.
	dead := index(c, victim)
	c.Start(dead)
	waitGone(t, c, dead)
	var blk int64
	var want []byte
	for blk, want = range l.acked {
		break
	}
	testbin.WaitFor(t, 30*time.Second, "a read through the late host", func() error {
		conn, err := c.Dial(ctx, dead, volName)
		if err != nil {
			return err
		}
		defer conn.Close()
		buf := make([]byte, blockSize)
		if err := conn.ReadAt(ctx, buf, blk*blockSize, 0); err != nil {
			return err
		}
		if !bytes.Equal(buf, want) {
			t.Fatalf("block %d through the late host %s differs from what was acknowledged", blk, victim)
		}
		return nil
	})
	if got, err = api.Volume(ctx, volName); err != nil || slices.Contains(got.Hosts, victim) {
		t.Fatalf("after the late host's return: hosts %v, %v", got.Hosts, err)
	}
}

// waitGone waits until host i no longer holds a replica of the volume.
func waitGone(t *testing.T, c *testbin.Cluster, i int) {
	t.Helper()
	dir := filepath.Dir(c.VolumePath(i, volName))
	testbin.WaitFor(t, 30*time.Second, "the old replica removed", func() error {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s still there (%v)", dir, err)
		}
		return nil
	})
}

// humanBytes renders n bytes in MiB.
func humanBytes(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
