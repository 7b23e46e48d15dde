package raftlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tandem-project/tandem/internal/testnet"
	"github.com/tandem-project/tandem/nbd"
	"github.com/tandem-project/tandem/volume"
)

// testHost is one host of an in-process test cluster: replication plus an
// NBD server exposing each volume and its forwarding view.
type testHost struct {
	h   *Host
	srv *nbd.Server
	ln  net.Listener
	vol map[string]*Volume
}

type testCluster struct {
	t     testing.TB
	hosts []*testHost
	peers []Peer
	dirs  []string
	cfg   func(*Config)
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("TANDEM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

func newTestCluster(t *testing.T, n int, cfg func(*Config)) *testCluster {
	return newTestClusterTB(t, n, cfg)
}

func newTestClusterTB(t testing.TB, n int, cfg func(*Config)) *testCluster {
	c := &testCluster{t: t, cfg: cfg}
	for i := range n {
		c.peers = append(c.peers, Peer{ID: fmt.Sprintf("n%d", i+1), Raft: testnet.FreeAddr(t), NBD: testnet.FreeAddr(t)})
		c.dirs = append(c.dirs, t.TempDir())
	}
	c.hosts = make([]*testHost, n)
	for i := range n {
		c.start(i)
	}
	t.Cleanup(func() {
		for i := range c.hosts {
			c.stop(i)
		}
	})
	return c
}

func (c *testCluster) start(i int) {
	t := c.t
	cfg := DefaultConfig()
	cfg.ID, cfg.DataDir, cfg.RaftAddr, cfg.Peers = c.peers[i].ID, c.dirs[i], c.peers[i].Raft, c.peers[i:i]
	cfg.Peers = c.peers
	cfg.HeartbeatTimeout = 500 * time.Millisecond
	cfg.ElectionTimeout = 500 * time.Millisecond
	cfg.LeaderLeaseTimeout = 250 * time.Millisecond
	cfg.StallTimeout = 20 * time.Second
	cfg.Logger = testLogger(t).With("host", cfg.ID)
	if c.cfg != nil {
		c.cfg(&cfg)
	}
	h, err := OpenHost(cfg)
	if err != nil {
		t.Fatal(err)
	}
	th := &testHost{h: h, vol: map[string]*Volume{}}
	c.hosts[i] = th
}

// open opens volume name on every running host and serves it over NBD.
func (c *testCluster) open(spec VolumeSpec) {
	for i, th := range c.hosts {
		if th == nil {
			continue
		}
		v, err := th.h.OpenVolume(spec)
		if err != nil {
			c.t.Fatalf("host %d: %v", i, err)
		}
		th.vol[spec.Name] = v
		c.serve(i)
	}
}

func (c *testCluster) serve(i int) {
	th := c.hosts[i]
	if th.srv != nil {
		th.srv.Close()
	}
	var exps []nbd.Export
	for name, v := range th.vol {
		exps = append(exps, nbd.Export{Name: name, Backend: v}, nbd.Export{Name: ForwardPrefix + name, Backend: v.Direct(), PassHandle: true})
	}
	srv := nbd.NewServer(epochExports{nbd.NewStaticExports("", exps...)}, nbd.DefaultConfig())
	th.srv = srv
	// Other hosts forward to the leader on its replication port.
	th.h.ServeForwarded(func(c net.Conn) { srv.ServeConn(c) })
	var err error
	for try := 0; try < 50; try++ {
		if th.ln, err = net.Listen("tcp", c.peers[i].NBD); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	go th.srv.Serve(th.ln)
}

// epochExports serves "NAME@EPOCH" as the writer view of NAME, as the
// agent does.
type epochExports struct{ nbd.Exports }

func (e epochExports) Lookup(name string) (nbd.Export, error) {
	name, epoch, err := volume.SplitExport(name)
	if err != nil {
		return nbd.Export{}, err
	}
	x, err := e.Exports.Lookup(name)
	if err == nil && epoch != 0 {
		x.Backend = x.Backend.(*Volume).Writer(epoch)
	}
	return x, err
}

func (c *testCluster) stop(i int) {
	th := c.hosts[i]
	if th == nil {
		return
	}
	if th.srv != nil {
		th.srv.Close()
	}
	th.h.Close()
	c.hosts[i] = nil
}

// leader waits for a ready leader of volume name and returns its index.
func (c *testCluster) leader(name string) int {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for i, th := range c.hosts {
			if th != nil && th.vol[name] != nil && th.vol[name].g.servesLocally() {
				return i
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("no leader for %s", name)
	return -1
}

func TestReplicatedWritesAndForwarding(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.open(VolumeSpec{Name: "vol", Size: 64 << 20})
	l := c.leader("vol")
	ctx := context.Background()
	// Write through every host (two of them forward), read back everywhere.
	var wg sync.WaitGroup
	for i, th := range c.hosts {
		for j := range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := bytes.Repeat([]byte{byte(i*50 + j + 1)}, 4096)
				if err := th.vol["vol"].WriteAt(ctx, p, int64(i*50+j)*4096, 0); err != nil {
					t.Errorf("host %d write %d: %v", i, j, err)
				}
			}()
		}
	}
	wg.Wait()
	for i, th := range c.hosts {
		got := make([]byte, 150*4096)
		if err := th.vol["vol"].ReadAt(ctx, got, 0); err != nil {
			t.Fatalf("host %d read: %v", i, err)
		}
		for k := range 150 {
			if got[k*4096] != byte(k+1) || got[k*4096+4095] != byte(k+1) {
				t.Fatalf("host %d block %d = %d, want %d (leader %d)", i, k, got[k*4096], k+1, l)
			}
		}
	}
	// Every replica's file holds the data once applied.
	time.Sleep(200 * time.Millisecond)
	for i, th := range c.hosts {
		got := make([]byte, 4096)
		th.vol["vol"].g.file.ReadAt(ctx, got, 149*4096)
		if got[0] != 150 {
			t.Errorf("replica %d file block 149 = %d", i, got[0])
		}
	}
}

func TestLeaderLossKeepsWriting(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.open(VolumeSpec{Name: "vol", Size: 64 << 20})
	l := c.leader("vol")
	client := (l + 1) % 3
	ctx := context.Background()
	v := c.hosts[client].vol["vol"]
	acked := map[int]byte{}
	var mu sync.Mutex
	stopW := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ; k++ {
				select {
				case <-stopW:
					return
				default:
				}
				blk := w*1000 + k%1000
				val := byte(k%250 + 1)
				if err := v.WriteAt(ctx, bytes.Repeat([]byte{val}, 4096), int64(blk)*4096, 0); err != nil {
					t.Errorf("write: %v", err)
					return
				}
				mu.Lock()
				acked[blk] = val
				mu.Unlock()
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	c.stop(l)
	time.Sleep(2 * time.Second)
	close(stopW)
	wg.Wait()
	t.Logf("leader %d stopped; writes continued through host %d for %v", l, client, time.Since(start))
	nl := c.leader("vol")
	if nl == l {
		t.Fatal("stopped host still leader")
	}
	for blk, val := range acked {
		got := make([]byte, 1)
		if err := v.ReadAt(ctx, got, int64(blk)*4096); err != nil {
			t.Fatal(err)
		}
		if got[0] != val {
			t.Fatalf("block %d = %d, acknowledged %d", blk, got[0], val)
		}
	}
}

func TestFollowerCatchUpFromLogAndFromStream(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) {
		cfg.SnapshotThreshold = 64
		cfg.TrailingLogs = 16
		cfg.SnapshotInterval = 200 * time.Millisecond
	})
	c.open(VolumeSpec{Name: "vol", Size: 32 << 20, PreferredLeader: "n1"})
	l := c.leader("vol")
	f := (l + 1) % 3
	ctx := context.Background()
	v := c.hosts[l].vol["vol"]
	write := func(from, to int, val byte) {
		for k := from; k < to; k++ {
			if err := v.WriteAt(ctx, bytes.Repeat([]byte{val + byte(k)}, 4096), int64(k)*4096, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(0, 10, 1)
	// A follower that misses a few entries catches up from the log.
	c.stop(f)
	write(10, 20, 1)
	c.start(f)
	c.open1(f, VolumeSpec{Name: "vol", Size: 32 << 20, PreferredLeader: "n1"})
	waitFile(t, c.hosts[f].vol["vol"], 19, 1+19)

	// A follower that misses more than the log keeps is sent a snapshot
	// and pulls the volume from the leader.
	c.stop(f)
	write(0, 400, 7)
	// Let the leader checkpoint and drop its old log.
	deadline := time.Now().Add(10 * time.Second)
	for {
		first, _ := c.hosts[l].vol["vol"].g.logs.FirstIndex()
		if first > 50 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leader did not compact its log (first index %d)", first)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.start(f)
	c.open1(f, VolumeSpec{Name: "vol", Size: 32 << 20, PreferredLeader: "n1"})
	for k := 0; k < 400; k += 37 {
		waitFile(t, c.hosts[f].vol["vol"], k, byte(7+k%256))
	}
	waitFile(t, c.hosts[f].vol["vol"], 399, byte((7+399)%256))
}

// open1 opens a volume on host i only and serves it.
func (c *testCluster) open1(i int, spec VolumeSpec) {
	v, err := c.hosts[i].h.OpenVolume(spec)
	if err != nil {
		c.t.Fatal(err)
	}
	c.hosts[i].vol[spec.Name] = v
	c.serve(i)
}

// waitFile waits until block k of the replica's own file holds val.
func waitFile(t *testing.T, v *Volume, k int, val byte) {
	t.Helper()
	got := make([]byte, 4096)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if err := v.g.file.ReadAt(context.Background(), got, int64(k)*4096); err != nil {
			t.Fatal(err)
		}
		if got[0] == val && got[4095] == val {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica block %d = %d, want %d", k, got[0], val)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestGrowAndRemove grows a replicated volume through its log (every
// replica grows, a write past the old end replicates), then closes and
// removes it on every host and creates it again under the same name: the
// new volume starts empty with a fresh raft group.
func TestGrowAndRemove(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	spec := VolumeSpec{Name: "g", Size: 1 << 20, Peers: c.peers}
	c.open(spec)
	l := c.leader("g")
	ctx := context.Background()
	if err := c.hosts[(l+1)%3].vol["g"].Grow(ctx, 4<<20); !errors.Is(err, raft.ErrNotLeader) {
		t.Fatalf("Grow on a follower: %v, want ErrNotLeader", err)
	}
	if err := c.hosts[l].vol["g"].Grow(ctx, 4<<20); err != nil {
		t.Fatal(err)
	}
	// Followers grow when they apply the grow entry; an agent checks
	// requests against its own replica's size.
	waitSize := func(i int) {
		deadline := time.Now().Add(10 * time.Second)
		for c.hosts[i].vol["g"].Size() != 4<<20 {
			if time.Now().After(deadline) {
				t.Fatalf("replica %d: size %d after the grow", i, c.hosts[i].vol["g"].Size())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitSize((l + 1) % 3)
	p := bytes.Repeat([]byte{7}, 4096)
	if err := c.hosts[(l+1)%3].vol["g"].WriteAt(ctx, p, 3<<20, 0); err != nil {
		t.Fatalf("write past the old end through a follower: %v", err)
	}
	// Every replica's file gets the write (raft's applied index is no
	// proof: raft advances it when it hands entries to the FSM, before
	// they are applied).
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < 3; i++ {
		waitSize(i)
		v := c.hosts[i].vol["g"]
		got := make([]byte, 4096)
		for {
			err := v.g.file.ReadAt(ctx, got, 3<<20)
			if err == nil && bytes.Equal(got, p) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("replica %d file at 3 MiB: %v, byte %d; status %+v", i, err, got[0], v.Status())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for i, th := range c.hosts {
		if err := th.h.CloseVolume("g", true); err != nil {
			t.Fatalf("host %d: %v", i, err)
		}
		delete(th.vol, "g")
		if _, err := os.Stat(filepath.Join(c.dirs[i], "groups", "g")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("host %d: replica directory left behind: %v", i, err)
		}
	}
	c.open(spec)
	l = c.leader("g")
	got := make([]byte, 4096)
	if err := c.hosts[l].vol["g"].ReadAt(ctx, got, 0); err != nil || got[0] != 0 {
		t.Fatalf("recreated volume: %v, byte %d", err, got[0])
	}
	if s := c.hosts[l].vol["g"].Size(); s != 1<<20 {
		t.Fatalf("recreated volume size %d, want %d", s, 1<<20)
	}
}

// TestLeaderRetriesFailedBarrier: a new leader whose barrier fails (raft
// refuses it while a timed-out leadership transfer still waits for its
// TimeoutNow call) tries again, and serves once it succeeds, instead of
// refusing every request while it leads.
func TestLeaderRetriesFailedBarrier(t *testing.T) {
	const faults = 3
	var failed atomic.Int32
	c := newTestCluster(t, 3, func(cfg *Config) {
		if cfg.ID != "n2" {
			return
		}
		cfg.barrierFault = func(string) error {
			if failed.Load() < faults {
				failed.Add(1)
				return raft.ErrLeadershipTransferInProgress
			}
			return nil
		}
	})
	c.open(VolumeSpec{Name: "vol", Size: 1 << 20})
	if l := c.leader("vol"); l != 1 {
		if err := c.hosts[l].vol["vol"].TransferLeadershipTo("n2"); err != nil {
			t.Fatal(err)
		}
	}
	v := c.hosts[1].vol["vol"]
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := v.WriteAt(ctx, bytes.Repeat([]byte{7}, 4096), 0, 0); err != nil {
		t.Fatalf("write through n2: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !v.g.ready.Load() || c.leader("vol") != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("n2 leads: %v, ready: %v, barriers failed: %d", c.leader("vol") == 1, v.g.ready.Load(), failed.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := failed.Load(); n != faults {
		t.Fatalf("%d barriers failed, want %d", n, faults)
	}
}

// TestCheckpointByBytes checks that a volume checkpoints once SnapshotBytes
// were written, long before SnapshotInterval, and only then: the log is
// compacted (and its segments recycled) at a pace set by the bytes.
func TestCheckpointByBytes(t *testing.T) {
	for _, tc := range []struct {
		name       string
		bytes      int64
		checkpoint bool
	}{
		{"after 1 MiB", 1 << 20, true},
		{"never by bytes", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCluster(t, 1, func(cfg *Config) {
				cfg.SnapshotInterval = time.Hour
				cfg.TrailingLogs = 2
				cfg.SnapshotBytes = tc.bytes
			})
			c.open(VolumeSpec{Name: "vol", Size: 8 << 20})
			v := c.hosts[0].vol["vol"]
			for k := range 48 {
				if err := v.WriteAt(context.Background(), bytes.Repeat([]byte{byte(k)}, 64<<10), int64(k)*64<<10, 0); err != nil {
					t.Fatal(err)
				}
			}
			compacted := func() bool {
				first, err := v.g.logs.FirstIndex()
				if err != nil {
					t.Fatal(err)
				}
				return first > 1
			}
			if !tc.checkpoint {
				time.Sleep(2500 * time.Millisecond) // the check runs every second
				if compacted() {
					t.Fatal("the log was compacted without a checkpoint being due")
				}
				return
			}
			deadline := time.Now().Add(10 * time.Second)
			for !compacted() {
				if time.Now().After(deadline) {
					t.Fatal("3 MiB written with SnapshotBytes 1 MiB: no checkpoint in 10 s")
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

// TestFailedFollowerLeavesGroup checks that a follower whose volume file
// fails under a committed entry takes itself out of the group, as a failed
// leader does: it reports Failed, its raft stops (so it can never win an
// election it could not serve), and the other two replicas go on; after a
// restart of the leader the volume is served again by a healthy replica.
func TestFailedFollowerLeavesGroup(t *testing.T) {
	// No preferred leader: a transfer to the host about to fail would
	// make it the leader, whose own clients have no one to forward to.
	c, spec, l, f := volumeOnThree(t)
	ctx := context.Background()
	write := func(k int) error {
		v := c.hosts[c.leader("vol")].vol["vol"]
		return v.WriteAt(ctx, bytes.Repeat([]byte{byte(k)}, 4096), int64(k)*4096, 0)
	}
	if err := write(8); err != nil {
		t.Fatal(err)
	}
	// The follower applied it: replication to it is healthy, not backing
	// off after failures at startup (a host whose group opened late), so
	// that the writes below reach it at once.
	waitFile(t, c.hosts[f].vol["vol"], 8, 8)
	// The follower's file fails: every write to it now returns an error.
	fg := c.hosts[f].vol["vol"].g
	fg.file.Close()
	for k := 1; k <= 3; k++ {
		if err := write(k); err != nil {
			t.Fatalf("write %d with one follower failed: %v", k, err)
		}
	}
	// It leaves once it applies an entry: keep writing, in case
	// replication to it was backing off when the three went by (a loaded
	// machine).
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; fg.raft.State() != raft.Shutdown; i++ {
		if time.Now().After(deadline) {
			st := c.hosts[f].vol["vol"].Status()
			t.Fatalf("failed follower still in the group: raft state %v, commit %d, applied %d, last contact %v ago", fg.raft.State(), st.CommitIndex, st.AppliedIndex, st.LastContact)
		}
		if i%25 == 24 {
			if err := write(3); err != nil {
				t.Fatalf("write with one follower failed: %v", err)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := c.hosts[f].vol["vol"].Status(); st.State != "Failed" || !strings.Contains(st.Error, "replica failed") {
		t.Fatalf("failed follower's status: state %q, error %q", st.State, st.Error)
	}
	// Its host still forwards its clients' I/O to the leader.
	fv := c.hosts[f].vol["vol"]
	if err := fv.WriteAt(ctx, bytes.Repeat([]byte{9}, 4096), 9*4096, 0); err != nil {
		t.Fatalf("write through the failed replica's host: %v", err)
	}
	got := make([]byte, 4096)
	if err := c.hosts[l].vol["vol"].ReadAt(ctx, got, 9*4096); err != nil || got[0] != 9 {
		t.Fatalf("read on the leader of a write forwarded by the failed replica's host: %v, %d", err, got[0])
	}
	// The leader restarts: the healthy replicas elect one of themselves.
	c.stop(l)
	c.start(l)
	c.open1(l, spec)
	nl := c.leader("vol")
	if nl == f {
		t.Fatal("the failed replica leads")
	}
	if err := write(4); err != nil {
		t.Fatalf("write after the leader's restart: %v", err)
	}
}

// TestFailedLeaderForwards checks that a leader whose volume file fails
// leaves the group and that its host then forwards its clients' I/O to
// whichever healthy replica leads, without waiting for StallTimeout: the
// write that found the failure, and later ones, are answered.
func TestFailedLeaderForwards(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.StallTimeout = 8 * time.Second })
	spec := VolumeSpec{Name: "vol", Size: 8 << 20}
	c.open(spec)
	l := c.leader("vol")
	ctx := context.Background()
	lv := c.hosts[l].vol["vol"]
	write := func(k int) error {
		return lv.WriteAt(ctx, bytes.Repeat([]byte{byte(k)}, 4096), int64(k)*4096, 0)
	}
	if err := write(1); err != nil {
		t.Fatal(err)
	}
	lv.g.file.Close()
	// The leader fails applying this write, leaves, and sends it on to
	// the new leader.
	if err := write(2); err != nil {
		t.Fatalf("write through the failing leader's host: %v", err)
	}
	if st := lv.Status(); st.State != "Failed" {
		t.Fatalf("failed leader's status: state %q, error %q", st.State, st.Error)
	}
	nl := c.leader("vol")
	if nl == l {
		t.Fatal("the failed replica still leads")
	}
	for k := 3; k <= 5; k++ {
		if err := write(k); err != nil {
			t.Fatalf("write %d through the failed leader's host: %v", k, err)
		}
	}
	// The new leader restarts: the failed host finds the next one.
	c.stop(nl)
	c.start(nl)
	c.open1(nl, spec)
	if err := write(6); err != nil {
		t.Fatalf("write through the failed replica's host after a second leader change: %v", err)
	}
	got := make([]byte, 4096)
	for k := 1; k <= 6; k++ {
		if err := lv.ReadAt(ctx, got, int64(k)*4096); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{byte(k)}, 4096)) {
			t.Fatalf("block %d read through the failed replica's host: %v, %d", k, err, got[0])
		}
	}
}

// TestCloseFailed checks that a replica closed after a failure is still
// reported, as failed, until it is open again, with the error of a failed
// attempt at opening it; and that removing it deletes its files.
func TestCloseFailed(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	spec := VolumeSpec{Name: "vol", Size: 1 << 20}
	c.open(spec)
	ctx := context.Background()
	v := c.hosts[0].vol["vol"]
	h := c.hosts[0].h
	fail := func(v *Volume) {
		t.Helper()
		v.g.file.Close()
		// Answered at commit, before the file write fails.
		v.WriteAt(ctx, make([]byte, 4096), 0, 0)
		waitFailed(t, v)
	}
	fail(v)
	if err := h.CloseFailed("vol"); err != nil {
		t.Logf("closing: %v", err)
	}
	status := func() VolumeStatus {
		t.Helper()
		sts := h.Statuses()
		if len(sts) != 1 || sts[0].Name != "vol" {
			t.Fatalf("statuses %+v", sts)
		}
		return sts[0]
	}
	if st := status(); st.State != "Failed" || !strings.Contains(st.Error, "closed file") && !strings.Contains(st.Error, "file already closed") {
		t.Fatalf("status of the closed replica: %+v", st)
	}
	// An attempt that fails (here: a file in the way of the log's
	// directory) is reported with the failure.
	logDir := filepath.Join(c.dirs[0], "groups", "vol", "log")
	moved := logDir + ".away"
	if err := os.Rename(logDir, moved); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(logDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := h.OpenVolume(spec); err == nil {
		t.Fatal("opened with a file in the way of the log")
	}
	if st := status(); st.State != "Failed" || !strings.Contains(st.Error, "opening it again") {
		t.Fatalf("status after a failed reopening: %+v", st)
	}
	os.Remove(logDir)
	if err := os.Rename(moved, logDir); err != nil {
		t.Fatal(err)
	}
	nv, err := h.OpenVolume(spec)
	if err != nil {
		t.Fatal(err)
	}
	c.hosts[0].vol["vol"] = nv
	c.leader("vol")
	if err := nv.WriteAt(ctx, bytes.Repeat([]byte{7}, 4096), 0, 0); err != nil {
		t.Fatal(err)
	}
	if st := status(); st.State != "Leader" || st.Error != "" {
		t.Fatalf("status once open again: %+v", st)
	}
	// Closed after a failure, then removed: nothing is left.
	fail(nv)
	h.CloseFailed("vol")
	if err := h.CloseVolume("vol", true); err != nil {
		t.Fatal(err)
	}
	if sts := h.Statuses(); len(sts) != 0 {
		t.Fatalf("statuses after removal: %+v", sts)
	}
	if _, err := os.Stat(filepath.Join(c.dirs[0], "groups", "vol")); !os.IsNotExist(err) {
		t.Fatalf("replica directory after removal: %v", err)
	}
}

// volumeOnThree opens volume "vol" (8 MiB, no preferred leader) on a
// 3-host cluster and returns it with its spec, its leader and a follower.
func volumeOnThree(t *testing.T) (c *testCluster, spec VolumeSpec, l, f int) {
	t.Helper()
	c = newTestCluster(t, 3, nil)
	spec = VolumeSpec{Name: "vol", Size: 8 << 20}
	c.open(spec)
	l = c.leader("vol")
	return c, spec, l, (l + 1) % 3
}

// waitFailed waits until replica v reports a failure, and returns it.
func waitFailed(t *testing.T, v *Volume) error {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for v.Err() == nil {
		if time.Now().After(deadline) {
			t.Fatalf("replica of %s did not fail", v.Name())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return v.Err()
}

// TestApplyAfterShutdownReturns checks that a write submitted as its
// replica's raft shuts down returns: upstream raft leaves a future that
// reached its buffered apply channel unanswered, Tandem's copy returns
// raft.ErrRaftShutdown (a stuck one held the agent's switch to the
// stand-in proxy for a minute, TestLinearizableDiskFull).
func TestApplyAfterShutdownReturns(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	c.open(VolumeSpec{Name: "vol", Size: 1 << 20})
	g := c.hosts[0].vol["vol"].g
	g.leave(g.raft)
	done := make(chan error, 20)
	for range 20 { // more than the apply channel holds
		go func() {
			_, err := g.applyEntry([]byte{1})
			done <- err
		}()
	}
	for range 20 {
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("an entry applied after shutdown")
			}
		case <-time.After(30 * time.Second):
			t.Fatal("applyEntry did not return after raft shut down")
		}
	}
}
