package mirror

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/testbin"
	"github.com/tandem-project/tandem/nbd/nbdclient"
	"github.com/tandem-project/tandem/raftlog"
)

const (
	blockSize = 4096
	volName   = "mv"
)

// startCluster starts 4 managed agents (one more than the replicas), with
// the extra agent flags args, and creates a volume of size bytes with 3
// replicas.
func startCluster(t *testing.T, size int64, args ...string) (*testbin.Cluster, admin.Volume) {
	t.Helper()
	return startHosts(t, 4, size, args...)
}

// startHosts is startCluster with hosts agents.
func startHosts(t *testing.T, hosts int, size int64, args ...string) (*testbin.Cluster, admin.Volume) {
	t.Helper()
	c := testbin.StartCluster(t, testbin.ClusterConfig{Hosts: hosts, Managed: true, Args: args})
	c.WaitManaged(30 * time.Second)
	ctx := context.Background()
	if _, err := c.Admin(0).CreateVolume(ctx, admin.CreateVolume{Name: volName, Size: admin.Size(size), Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	return c, waitReady(t, c, 0)
}

// waitReady waits until the volume has a ready leader, and it is the
// preferred one (a new volume's first leader may be another replica, which
// hands leadership over), as host api's agent reports it.
func waitReady(t *testing.T, c *testbin.Cluster, api int) admin.Volume {
	t.Helper()
	var v admin.Volume
	testbin.WaitFor(t, 30*time.Second, "the preferred leader leading", func() error {
		var err error
		if v, err = c.Admin(api).Volume(context.Background(), volName); err != nil {
			return err
		}
		if v.Leader == "" || v.State != admin.VolumeReady || v.Leader != v.PreferredLeader {
			return fmt.Errorf("volume %s, leader %q, preferred %q", v.State, v.Leader, v.PreferredLeader)
		}
		return nil
	})
	return v
}

// spareHosts returns the hosts of the cluster that hold no replica of v,
// in cluster order.
func spareHosts(c *testbin.Cluster, v admin.Volume) []string {
	var out []string
	for _, n := range c.Nodes {
		if !slices.Contains(v.Hosts, n.Name) {
			out = append(out, n.Name)
		}
	}
	return out
}

// spareHost returns the last of spareHosts ("" if none): the only one in
// startCluster's cluster.
func spareHost(c *testbin.Cluster, v admin.Volume) string {
	s := spareHosts(c, v)
	if len(s) == 0 {
		return ""
	}
	return s[len(s)-1]
}

// index returns the index of host name in the cluster.
func index(c *testbin.Cluster, name string) int {
	for i, n := range c.Nodes {
		if n.Name == name {
			return i
		}
	}
	return -1
}

// prefillBlock is the content the prefill writes to block k.
func prefillBlock(k int64) []byte {
	b := bytes.Repeat([]byte{byte(k*7 + 3)}, blockSize)
	binary.BigEndian.PutUint64(b, uint64(k))
	return b
}

// prefill writes n bytes from offset 0 in 1 MiB writes.
func prefill(t *testing.T, c *testbin.Cluster, host int, n int64) {
	t.Helper()
	prefillVolume(t, c, host, volName, n)
}

// prefillVolume is prefill for volume name.
func prefillVolume(t *testing.T, c *testbin.Cluster, host int, name string, n int64) {
	t.Helper()
	ctx := context.Background()
	conn, err := c.Dial(ctx, host, name)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < n; off += int64(len(buf)) {
		for k := int64(0); k < int64(len(buf))/blockSize; k++ {
			copy(buf[k*blockSize:], prefillBlock(off/blockSize+k))
		}
		if err := conn.WriteAt(ctx, buf, off, 0); err != nil {
			t.Fatal(err)
		}
	}
}

// load is a set of writers, each writing stamped 4 KiB blocks of its own
// (block ≡ writer mod writers) one at a time through one NBD connection,
// recording what was acknowledged and the gaps between completed writes.
type load struct {
	mu      sync.Mutex
	acked   map[int64][]byte // block -> content last acknowledged
	writes  int
	errs    []error
	last    time.Time
	maxGap  time.Duration
	gapAt   time.Time
	gaps    []gap // every gap of 10 ms or more
	stop    chan struct{}
	wg      sync.WaitGroup
	started time.Time
}

// localCopy returns the progress of the last copy by stream of volume's
// replica on host, as its agent reports it (nil if it reports none).
func localCopy(t *testing.T, c *testbin.Cluster, host, volume string) *raftlog.CopyStatus {
	t.Helper()
	n := c.Nodes[index(c, host)]
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "http://"+n.AdminAddr+"/v1/local/volumes", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Logf("local volumes of %s: %v", host, err)
		return nil
	}
	defer resp.Body.Close()
	var vs []admin.LocalVolume
	if err := json.NewDecoder(resp.Body).Decode(&vs); err != nil {
		t.Logf("local volumes of %s: %v", host, err)
		return nil
	}
	for _, v := range vs {
		if v.Name == volume {
			return v.Copy
		}
	}
	return nil
}

// gap is a time without completed writes.
type gap struct{ from, to time.Time }

// longestGap returns the longest time without a completed write within
// [from, to] (gaps cut at the bounds); 0 if none reached 10 ms.
func (l *load) longestGap(from, to time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var longest time.Duration
	for _, g := range l.gaps {
		a, b := g.from, g.to
		if a.Before(from) {
			a = from
		}
		if b.After(to) {
			b = to
		}
		if b.Sub(a) > longest {
			longest = b.Sub(a)
		}
	}
	return longest
}

// logLongGaps logs every gap between completed writes of at least min,
// with its wall-clock time (to find it in the agents' logs) and its offset
// from the load's start.
func (l *load) logLongGaps(t *testing.T, min time.Duration) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, g := range l.gaps {
		if d := g.to.Sub(g.from); d >= min {
			t.Logf("write gap of %v from %s (+%v)", d.Round(100*time.Microsecond),
				g.from.UTC().Format("15:04:05.000"), g.from.Sub(l.started).Round(time.Millisecond))
		}
	}
}

// startLoad starts the writers on host's agent; prev, if not nil, is an
// earlier load whose acknowledged blocks this one starts from.
func startLoad(t *testing.T, c *testbin.Cluster, host, writers int, blocks int64, prev *load) *load {
	t.Helper()
	return startLoadTo(t, c, host, writers, blocks, prev, "")
}

// startLoadTo is startLoad whose writers also write each block, once
// acknowledged, to volume control (if not "").
func startLoadTo(t *testing.T, c *testbin.Cluster, host, writers int, blocks int64, prev *load, control string) *load {
	t.Helper()
	l := &load{acked: map[int64][]byte{}, stop: make(chan struct{}), started: time.Now(), last: time.Now()}
	if prev != nil {
		for k, b := range prev.acked {
			l.acked[k] = b
		}
	}
	for w := range writers {
		conn, err := c.Dial(context.Background(), host, volName)
		if err != nil {
			t.Fatal(err)
		}
		var ctl *nbdclient.Conn
		if control != "" {
			if ctl, err = c.Dial(context.Background(), host, control); err != nil {
				t.Fatal(err)
			}
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer conn.Close()
			if ctl != nil {
				defer ctl.Close()
			}
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for seq := uint64(1); ; seq++ {
				select {
				case <-l.stop:
					return
				default:
				}
				blk := int64(rng.IntN(int(blocks/int64(writers))))*int64(writers) + int64(w)
				p := bytes.Repeat([]byte{byte(seq)}, blockSize)
				binary.BigEndian.PutUint64(p, uint64(blk))
				binary.BigEndian.PutUint64(p[8:], seq<<8|uint64(w))
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := conn.WriteAt(ctx, p, blk*blockSize, 0)
				if err == nil && ctl != nil {
					if err = ctl.WriteAt(ctx, p, blk*blockSize, 0); err != nil {
						err = fmt.Errorf("control volume %s: %w", control, err)
					}
				}
				cancel()
				now := time.Now()
				l.mu.Lock()
				if err != nil {
					l.errs = append(l.errs, fmt.Errorf("writer %d, block %d: %w", w, blk, err))
					l.mu.Unlock()
					return
				}
				l.acked[blk] = p
				l.writes++
				g := now.Sub(l.last)
				if g > l.maxGap {
					l.maxGap, l.gapAt = g, now
				}
				if g >= 10*time.Millisecond {
					l.gaps = append(l.gaps, gap{l.last, now})
				}
				l.last = now
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// end stops the writers and fails the test on any I/O error.
func (l *load) end(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	if len(l.errs) > 0 {
		t.Fatalf("%d I/O errors during the move, the first: %v", len(l.errs), l.errs[0])
	}
}

// verify checks every replica's volume file against what was
// acknowledged: the load's last write of a block, else the prefill, else
// zeroes.
func verify(t *testing.T, c *testbin.Cluster, hosts []string, l *load, prefilled, size int64) {
	t.Helper()
	waitCaughtUp(t, c, index(c, hosts[0]))
	zero := make([]byte, blockSize)
	for _, h := range hosts {
		f, err := os.Open(c.VolumePath(index(c, h), volName))
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, size)
		n, err := f.ReadAt(got, 0)
		f.Close()
		if err != nil && n != len(got) {
			t.Fatalf("%s: reading the replica: %v", h, err)
		}
		bad := 0
		for k := int64(0); k < size/blockSize; k++ {
			want, ok := l.acked[k]
			switch {
			case ok:
			case k*blockSize < prefilled:
				want = prefillBlock(k)
			default:
				want = zero
			}
			if !bytes.Equal(got[k*blockSize:(k+1)*blockSize], want) {
				if bad++; bad <= 3 {
					t.Errorf("replica on %s: block %d differs from what was acknowledged", h, k)
				}
			}
		}
		if bad > 0 {
			t.Fatalf("replica on %s: %d blocks differ", h, bad)
		}
	}
}

// waitCaughtUp waits until every replica applied everything (the leader's
// commit index), as host api's agent reports it.
func waitCaughtUp(t *testing.T, c *testbin.Cluster, api int) {
	t.Helper()
	testbin.WaitFor(t, 30*time.Second, "every replica caught up", func() error {
		v, err := c.Admin(api).Volume(context.Background(), volName)
		if err != nil {
			return err
		}
		for _, r := range v.Replicas {
			if r.Lag != 0 || r.AppliedIndex == 0 {
				return fmt.Errorf("replica %s lags %d (%s)", r.Host, r.Lag, r.State)
			}
		}
		return nil
	})
}

// cli runs the tandem CLI against host i's agent.
func cli(t *testing.T, c *testbin.Cluster, i int, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(testbin.Binary(t), args...)
	cmd.Env = append(os.Environ(), "TANDEM_ADMIN="+c.Nodes[i].AdminAddr, "TANDEM_ADMIN_TOKEN="+c.Token)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if errb.Len() > 0 {
		t.Logf("tandem %v (stderr):\n%s", args, errb.String())
	}
	if err != nil {
		return out.String(), fmt.Errorf("tandem %v: %w: %s", args, err, errb.String())
	}
	return out.String(), nil
}

// TestMoveUnderWrites moves the replica of the volume's leader to the
// fourth host with the CLI while 4 writers write stamped blocks through
// another replica's agent: no write fails, the move completes with a
// passed integrity check, the old replica's files are removed, and every
// replica holds exactly what was acknowledged. It logs the copy rate and
// the longest gap between completed writes.
func TestMoveUnderWrites(t *testing.T) {
	const size, prefilled = 128 << 20, 96 << 20
	c, v := startCluster(t, size)
	from := v.Leader
	free := spareHost(c, v)
	client := -1 // a replica host that stays
	for _, h := range v.Hosts {
		if h != from && client < 0 {
			client = index(c, h)
		}
	}
	prefill(t, c, client, prefilled)
	l := startLoad(t, c, client, 4, size/blockSize, nil)
	time.Sleep(500 * time.Millisecond)

	start := time.Now()
	out, err := cli(t, c, client, "volume", "move", volName, "--from", from, "--to", free, "--wait-timeout", "90s")
	if err != nil {
		l.end(t)
		t.Fatal(err)
	}
	took := time.Since(start)
	time.Sleep(500 * time.Millisecond)
	l.end(t)
	t.Logf("%s", out)

	got, err := c.Admin(0).Volume(context.Background(), volName)
	if err != nil {
		t.Fatal(err)
	}
	r := got.LastMove
	if r == nil || r.Result != "completed" || r.Check == nil || !r.Check.OK {
		t.Fatalf("last move %+v", r)
	}
	want := slices.Clone(v.Hosts)
	want[slices.Index(want, from)] = free
	if !slices.Equal(got.Hosts, want) || got.PreferredLeader == from || got.Leader == from {
		t.Fatalf("after the move: hosts %v (want %v), preferred leader %s, leader %s", got.Hosts, want, got.PreferredLeader, got.Leader)
	}
	rate := 0.0
	if r.Copy > 0 {
		rate = float64(r.Bytes) / r.Copy.Seconds()
	}
	l.mu.Lock()
	t.Logf("move %s -> %s took %v: %d MiB copied by stream in %v = %.1f MiB/s (%.0f bytes/s); integrity check: %d/%d ranges at index %d",
		from, free, took.Round(time.Millisecond), r.Bytes>>20, r.Copy.Round(time.Millisecond), rate/(1<<20), rate, r.Check.Compared, r.Check.Ranges, r.Check.Index)
	t.Logf("load: %d writes acknowledged, 0 errors, longest gap between completed writes %v (at +%v)",
		l.writes, l.maxGap.Round(100*time.Microsecond), l.gapAt.Sub(l.started).Round(time.Millisecond))
	l.mu.Unlock()
	if cp := localCopy(t, c, free, volName); cp != nil && !cp.Finished.IsZero() {
		t.Logf("during the copy (+%v to +%v): longest gap between completed writes %v (0: none of 10 ms)",
			cp.Started.Sub(l.started).Round(time.Millisecond), cp.Finished.Sub(l.started).Round(time.Millisecond),
			l.longestGap(cp.Started, cp.Finished).Round(100*time.Microsecond))
	}
	if r.Bytes < prefilled/2 {
		t.Errorf("only %d bytes copied by stream: the new replica did not catch up by stream", r.Bytes)
	}

	// The source's agent removes its replica.
	dir := filepath.Dir(c.VolumePath(index(c, from), volName))
	testbin.WaitFor(t, 20*time.Second, "the old replica removed", func() error {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s still there (%v)", dir, err)
		}
		return nil
	})
	verify(t, c, got.Hosts, l, prefilled, size)
}

// TestMoveDestinationKilled kills the destination with SIGKILL in the
// middle of a rate-limited copy: the volume keeps serving writes, the move
// is cancelled, the destination's leftover replica is removed when it
// comes back, and the move issued again completes.
func TestMoveDestinationKilled(t *testing.T) {
	const size = 64 << 20
	c, v := startCluster(t, size)
	ctx := context.Background()
	from := v.Hosts[len(v.Hosts)-1]
	free := spareHost(c, v)
	client := index(c, v.Hosts[0])
	if v.Hosts[0] == from {
		client = index(c, v.Hosts[1])
	}
	prefill(t, c, client, size)
	api := c.Admin(client)
	if _, err := api.MoveVolume(ctx, volName, admin.MoveVolume{From: from, To: free, MaxRate: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	testbin.WaitFor(t, 30*time.Second, "the copy under way", func() error {
		got, err := api.Volume(ctx, volName)
		if err != nil {
			return err
		}
		if got.Move == nil || got.Move.Copied < 4<<20 {
			return fmt.Errorf("move %+v", got.Move)
		}
		return nil
	})
	dest := index(c, free)
	c.Kill(dest)
	t.Logf("killed %s mid-copy", free)

	// The volume serves.
	l := startLoad(t, c, client, 2, size/blockSize, nil)
	time.Sleep(time.Second)
	l.end(t)
	l.mu.Lock()
	t.Logf("with the destination dead: %d writes, longest gap %v", l.writes, l.maxGap.Round(100*time.Microsecond))
	l.mu.Unlock()
	if l.writes == 0 {
		t.Fatal("no write completed with the destination dead")
	}
	if _, err := cli(t, c, client, "volume", "move", volName, "--cancel"); err != nil {
		t.Fatal(err)
	}
	got, err := api.Volume(ctx, volName)
	if err != nil {
		t.Fatal(err)
	}
	if got.Move != nil || got.LastMove == nil || got.LastMove.Result != "cancelled" || !slices.Equal(got.Hosts, v.Hosts) {
		t.Fatalf("after the cancel: move %+v, last %+v, hosts %v", got.Move, got.LastMove, got.Hosts)
	}
	// The destination comes back and removes its leftover replica.
	c.Start(dest)
	dir := filepath.Dir(c.VolumePath(dest, volName))
	testbin.WaitFor(t, 30*time.Second, "the leftover replica removed", func() error {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s still there (%v)", dir, err)
		}
		return nil
	})
	c.WaitManaged(30 * time.Second)
	// The move again, to completion, under writes.
	l = startLoad(t, c, client, 2, size/blockSize, l)
	out, err := cli(t, c, client, "volume", "move", volName, "--from", from, "--to", free, "--wait-timeout", "90s")
	l.end(t)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", out)
	got, err = api.Volume(ctx, volName)
	if err != nil {
		t.Fatal(err)
	}
	if r := got.LastMove; r == nil || r.Result != "completed" || r.Check == nil || !r.Check.OK {
		t.Fatalf("last move %+v", got.LastMove)
	}
	verify(t, c, got.Hosts, l, size, size)
}
