package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
	"github.com/tandem-project/tandem/nbd/nbdclient"
)

// leadingMsg is in the log line of a host that becomes a volume's leader
// ("no longer leading volume" does not match).
const leadingMsg = `msg="leading volume"`

// TestWriteThroughFollower writes through the agent of a host that does
// not lead the volume (so every request is forwarded to the leader):
// concurrent 4 KiB writes, a large unaligned write, small unaligned writes,
// write-zeroes and trim, each read back at once through the same agent.
// The result must read back identically through every agent, and every
// replica file must hold it. The agents know each other by replication
// address only (--peer NAME,raft=ADDR): forwarding needs no more.
func TestWriteThroughFollower(t *testing.T) {
	r := newRand(seed(t), 1)
	c := testbin.StartCluster(t, testbin.ClusterConfig{
		Volumes:         []string{fmt.Sprintf("%s=%d", vol, volSize)},
		Args:            fastArgs,
		PeersWithoutNBD: true,
	})
	l := c.Leader(vol)
	f := c.Followers(l)[r.IntN(2)]
	t.Logf("leader n%d; writing through follower n%d", l+1, f+1)
	conn := dial(t, c, f)
	ctx := context.Background()

	const region = 8 << 20
	want := make([]byte, region)
	readBack := func(step string, off, n int64) {
		t.Helper()
		got := make([]byte, n)
		if err := conn.ReadAt(ctx, got, off, 0); err != nil {
			t.Fatalf("%s: reading back %d+%d through n%d: %v", step, off, n, f+1, err)
		}
		if !bytes.Equal(got, want[off:off+n]) {
			t.Fatalf("%s: %d+%d read back through n%d differs from what was written (first difference at +%d)", step, off, n, f+1, firstDiff(got, want[off:off+n]))
		}
	}

	// 1. 256 concurrent 4 KiB writes to distinct random blocks.
	perm := r.Perm(region / blockSize)[:256]
	var wg sync.WaitGroup
	errs := make(chan error, len(perm))
	for k, blk := range perm {
		b := stamp(int64(blk), tagOf(0, uint64(k+1)))
		copy(want[blk*blockSize:], b)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := conn.WriteAt(ctx, b, int64(blk)*blockSize, 0); err != nil {
				errs <- fmt.Errorf("writing block %d: %w", blk, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	readBack("concurrent writes", 0, region)

	// 2. A 1 MiB write at an unaligned offset, with FUA.
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(r.Uint32())
	}
	off := int64(3<<20 + 777)
	copy(want[off:], big)
	if err := conn.WriteAt(ctx, big, off, nbdclient.CmdFlagFUA); err != nil {
		t.Fatalf("1 MiB write: %v", err)
	}
	readBack("1 MiB write", off-4096, 1<<20+8192)

	// 3. Small unaligned writes.
	for k := range 20 {
		n := 1 + r.IntN(3000)
		o := r.Int64N(region - int64(n))
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(k + i)
		}
		copy(want[o:], p)
		if err := conn.WriteAt(ctx, p, o, 0); err != nil {
			t.Fatalf("write %d+%d: %v", o, n, err)
		}
		readBack("small write", o, int64(n))
	}

	// 4. Write-zeroes (no hole) and trim, both over written data.
	zoff, zn := int64(3<<20), int64(256<<10)
	clear(want[zoff : zoff+zn])
	if err := conn.Zero(ctx, zoff, uint32(zn), nbdclient.CmdFlagNoHole); err != nil {
		t.Fatalf("write-zeroes: %v", err)
	}
	readBack("write-zeroes", zoff-4096, zn+8192)
	toff, tn := int64(1<<20), int64(512<<10)
	clear(want[toff : toff+tn])
	if err := conn.Trim(ctx, toff, uint32(tn), 0); err != nil {
		t.Fatalf("trim: %v", err)
	}
	readBack("trim", toff-4096, tn+8192)
	if err := conn.Flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}

	// Every agent reads the same bytes.
	for i := range c.Nodes {
		ci := dial(t, c, i)
		got := make([]byte, region)
		for o := int64(0); o < region; o += 1 << 20 {
			if err := ci.ReadAt(ctx, got[o:o+1<<20], o, 0); err != nil {
				t.Fatalf("reading through n%d at %d: %v", i+1, o, err)
			}
		}
		if !bytes.Equal(got, want) {
			t.Errorf("n%d reads data different from what was written through n%d (first difference at byte %d)", i+1, f+1, firstDiff(got, want))
		}
	}
	// Every replica file holds it.
	for i := range c.Nodes {
		waitFileRegion(t, c.VolumePath(i, vol), want, 10*time.Second)
	}
	if now := c.LeaderOf(vol); now != l {
		t.Errorf("the leader changed during the test: n%d before, %s after", l+1, hostOrNone(now))
	}
	if strings.Contains(c.Nodes[f].RunLog(), leadingMsg) {
		t.Errorf("n%d, the host written through, led the volume at some point: requests were not all forwarded", f+1)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// waitFileRegion waits until the file at path starts with want.
func waitFileRegion(t *testing.T, path string, want []byte, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	got := make([]byte, len(want))
	for {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.ReadAt(got, 0)
		f.Close()
		if err == nil && bytes.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("replica file %s differs from what was written (first difference at byte %d, read error %v)", path, firstDiff(got, want), err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// writeThroughEach writes n blocks through every running host (writer
// number = host), starting at block base, and records them in m.
func writeThroughEach(t *testing.T, c *testbin.Cluster, m *model, base int64, n int, seq uint64) {
	t.Helper()
	ctx := context.Background()
	for i := range c.Nodes {
		if !c.Running(i) {
			continue
		}
		conn := dial(t, c, i)
		for k := range n {
			blk := base + int64(i*n+k)
			tag := tagOf(i, seq+uint64(k))
			if err := writeBlock(ctx, conn, blk, tag); err != nil {
				t.Fatalf("writing block %d through n%d: %v", blk, i+1, err)
			}
			m.settle(blk, tag)
		}
		conn.Close()
	}
}

// TestRestartAll stops all three hosts cleanly (SIGTERM), then kills all
// three at once (kill -9) while writes are in flight; after each restart
// every acknowledged write reads back through every agent, the volume
// takes writes again, and in the end the three replica files are
// identical.
func TestRestartAll(t *testing.T) {
	r := newRand(seed(t), 4)
	c := startCluster(t, fastArgs...)
	m := newModel()
	writeThroughEach(t, c, m, 0, 64, 1)

	// SIGTERM: every agent exits cleanly (StopAll checks the exit status).
	// The leader applied every acknowledged write to its file before the
	// acknowledgement; a follower may not have learned that the last
	// entries were committed yet (it replays them from its log later).
	l := c.Leader(vol)
	c.StopAll()
	if err := checkReplicaFile(c, l, m); err != nil {
		t.Errorf("the leader n%d's replica file after a clean stop: %v", l+1, err)
	}
	start := time.Now()
	c.StartAll()
	l = c.Leader(vol)
	t.Logf("restarted after SIGTERM: n%d leads, %v after the start", l+1, time.Since(start).Round(time.Millisecond))
	verifyThrough(t, c, m)
	writeThroughEach(t, c, m, 0, 64, 1000)
	verifyThrough(t, c, m)

	// kill -9 of all three at once, in the middle of writes through
	// every agent.
	ws := startWriters(t, c, m, writerOpts{n: 6, blocks: 32, base: 1024, host: func(w int) int { return w % 3 }, redial: true})
	ws.waitAcked(t, 300, 30*time.Second)
	time.Sleep(time.Duration(r.IntN(300)) * time.Millisecond)
	c.KillAll()
	before := ws.acked()
	ws.halt()
	t.Logf("killed all three after %d acknowledged writes", before)
	start = time.Now()
	c.StartAll()
	l = c.Leader(vol)
	t.Logf("restarted after kill -9: n%d leads, %v after the start", l+1, time.Since(start).Round(time.Millisecond))
	verifyThrough(t, c, m)
	writeThroughEach(t, c, m, 0, 64, 2000)
	verifyThrough(t, c, m)
	for i := range c.Nodes {
		waitReplicaFile(t, c, i, m, 10*time.Second)
	}
	c.StopAll()
	filesEqual(t, c)
}

func hostOrNone(i int) string {
	if i < 0 {
		return "none"
	}
	return fmt.Sprintf("n%d", i+1)
}
