package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/testbin"
	"github.com/tandem-project/tandem/nbd/nbdclient"
)

// TestFullDiskReplicaReopens fills the disk of one replica, n3, whose
// data directory is a small tmpfs: n3 fails, leaves its group, and its
// clients' writes go on through the other replicas. Then the tmpfs grows,
// as an operator would make room: the agent opens the replica again by
// itself, without a restart, as soon as it sees the room (well before its
// --replica-retry of 10 minutes); it catches up and its file holds every
// acknowledged write. In fixed mode n3 is the volume's
// preferred leader (so it fails as the leader, and leads again after);
// in cluster mode the catalog places the leader. Needs root (mount).
func TestFullDiskReplicaReopens(t *testing.T) {
	for _, managed := range []bool{false, true} {
		t.Run(map[bool]string{false: "fixed", true: "managed"}[managed], func(t *testing.T) {
			testFullDiskReplicaReopens(t, managed)
		})
	}
}

// Full-disk tests: n3's data directory is a tmpfs, whose size leaves 72
// MiB free once the volume (fullDiskSize) is open, of which the agents keep
// fullDiskReserve for their metadata. The fill writes from fillBase (above
// the linearizability test's blocks) to modelBase (the model's blocks).
const (
	fullDiskSize    = 256 << 20
	fullDiskReserve = 32 << 20 // --disk-reserve
	fillStep        = 1 << 20
	fillBase        = 16 << 20 // above linBlocks
	modelBase       = 224 << 20 / blockSize
)

// fullDisk is a cluster whose host n3 ran out of disk under its replica of
// volume v.
type fullDisk struct {
	c          *testbin.Cluster
	fsDir      string   // n3's data directory, a tmpfs
	fsDirs     []string // every data directory on a tmpfs (fsDir among them)
	failedAt   int      // offset of n3's log before the failure
	m          *model
	write      func(conn *nbdclient.Conn, blk int64)
	via1, via3 *nbdclient.Conn
}

// startFullDisk starts cfg (see startFullDiskCluster) and fills volume v
// until n3's replica fails, writing blocks of the model through n3 before
// and after.
func startFullDisk(t *testing.T, cfg testbin.ClusterConfig) *fullDisk {
	t.Helper()
	fd := startFullDiskCluster(t, cfg)
	c := fd.c
	fd.m = newModel()
	fd.write = fd.m.writer(t)
	fd.via1, fd.via3 = dial(t, c, 0), dial(t, c, 2)
	for k := range int64(8) {
		fd.write(fd.via3, modelBase+k)
	}
	fd.fillUntilFailed(t)
	// Its clients go on: writes through n3 reach the new leader.
	for k := range int64(8) {
		fd.write(fd.via3, modelBase+8+k)
	}
	for k := range int64(4) {
		fd.write(fd.via1, modelBase+k)
	}
	return fd
}

// startFullDiskCluster starts cfg (3 hosts in fixed mode, v preferring n3
// as leader; or cfg.Hosts in cluster mode, v created with 3 replicas,
// which must include n3) with n3's data directory on a tmpfs, and shrinks
// the tmpfs once the volume is open. It skips the test unless it can
// mount a tmpfs (fails it, with TANDEM_REQUIRE_TOOLS set).
func startFullDiskCluster(t *testing.T, cfg testbin.ClusterConfig) *fullDisk {
	t.Helper()
	return startFullDisks(t, cfg, 2)
}

// startFullDisks is startFullDiskCluster with the data directories of
// hosts (n3 among them) on tmpfs.
func startFullDisks(t *testing.T, cfg testbin.ClusterConfig, hosts ...int) *fullDisk {
	t.Helper()
	fd := &fullDisk{}
	cfg.Args = append(cfg.Args, "--disk-reserve", fmt.Sprint(fullDiskReserve))
	cfg.Prepare = func(i int, dir string) {
		if !slices.Contains(hosts, i) {
			return
		}
		// Room enough to create the volume; it shrinks below.
		testbin.MountTmpfs(t, dir, 1<<30)
		fd.fsDirs = append(fd.fsDirs, dir)
		if i == 2 {
			fd.fsDir = dir
		}
	}
	if !cfg.Managed {
		cfg.Volumes = []string{fmt.Sprintf("%s=%d,leader=n3", vol, fullDiskSize)}
	}
	c := testbin.StartCluster(t, cfg)
	fd.c = c
	if cfg.Managed {
		c.WaitManaged(time.Minute)
		v, err := c.Admin(0).CreateVolume(context.Background(), admin.CreateVolume{Name: vol, Size: fullDiskSize, Replicas: 3})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(v.Hosts, "n3") {
			t.Fatalf("volume placed on %v, without n3", v.Hosts)
		}
	}
	c.Leader(vol)
	for _, i := range hosts {
		if _, err := c.Nodes[i].WaitLog(regexp.MustCompile(`msg="volume ready" name=v`), 0, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	// Room for what is there (the volume's log segment and spare, 64 MiB
	// each; in cluster mode the control plane's too) and 72 MiB more.
	for _, dir := range fd.fsDirs {
		used, _ := dfBytes(t, dir)
		if out, err := exec.Command("mount", "-o", fmt.Sprintf("remount,size=%d", used+72<<20), dir).CombinedOutput(); err != nil {
			t.Fatalf("shrinking the tmpfs: %v: %s", err, out)
		}
	}
	return fd
}

// df returns the bytes used and free on n3's tmpfs.
func (fd *fullDisk) df(t *testing.T) (used, free int64) {
	t.Helper()
	return dfBytes(t, fd.fsDir)
}

// dfBytes returns the bytes used and free on dir's file system.
func dfBytes(t *testing.T, dir string) (used, free int64) {
	t.Helper()
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	return int64(fs.Blocks-fs.Bfree) * fs.Bsize, int64(fs.Bavail) * fs.Bsize
}

// fillUntilFailed writes 1 MiB blocks through n1 from fillBase up, until
// n3's replica fails at its disk reserve.
func (fd *fullDisk) fillUntilFailed(t *testing.T) {
	t.Helper()
	c := fd.c
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	failedRE := regexp.MustCompile(`replica failed; shutting its raft group down`)
	fd.failedAt = c.Nodes[2].LogLen()
	via1 := fd.via1
	if via1 == nil {
		via1 = dial(t, c, 0)
	}
	buf := bytes.Repeat([]byte{0xa5}, fillStep)
	failed := false
	for pos := int64(fillBase); pos+fillStep <= modelBase*blockSize && !failed; pos += fillStep {
		if err := via1.WriteAt(ctx, buf, pos, 0); err != nil {
			t.Fatalf("filling at %d MiB: %v", pos>>20, err)
		}
		failed = failedRE.MatchString(c.Nodes[2].LogSince(fd.failedAt))
	}
	if _, err := c.Nodes[2].WaitLog(failedRE, fd.failedAt, 30*time.Second); err != nil {
		t.Fatalf("n3's replica did not fail on its full disk: %v\n%s", err, dfOf(fd.fsDir))
	}
	t.Logf("n3 failed:\n%s", dfOf(fd.fsDir))
	// It failed at its disk reserve (fullDiskReserve), not at a full disk:
	// the metadata still has room (a write into its memory-mapped files on
	// a full disk would have killed the agent with SIGBUS).
	if _, free := fd.df(t); free < fullDiskReserve/2 {
		t.Errorf("n3 failed with %d bytes free, want about %d (--disk-reserve)", free, fullDiskReserve)
	}
	if !strings.Contains(c.Nodes[2].LogSince(fd.failedAt), "disk-reserve") {
		t.Errorf("n3's failure does not name the disk reserve:\n%s", lastLog(c, 2))
	}
}

// fillUntilRefused writes 1 MiB blocks through conn from fillBase up
// until a write fails, and returns how long that write took and its
// error (nil if the range filled without one).
func (fd *fullDisk) fillUntilRefused(t *testing.T, ctx context.Context, conn *nbdclient.Conn) (took time.Duration, err error) {
	t.Helper()
	buf := bytes.Repeat([]byte{0xa5}, fillStep)
	for pos := int64(fillBase); pos+fillStep <= modelBase*blockSize && err == nil; pos += fillStep {
		start := time.Now()
		err = conn.WriteAt(ctx, buf, pos, 0)
		took = time.Since(start)
	}
	for _, dir := range fd.fsDirs {
		t.Logf("%s:\n%s", dir, dfOf(dir))
	}
	return took, err
}

// growUntilWritable grows every tmpfs of fd to 1 GiB, as an operator
// making room would, and waits until a block written through conn (tagged
// with the next *seq) succeeds; m learns the outcome of each attempt.
func (fd *fullDisk) growUntilWritable(t *testing.T, ctx context.Context, conn *nbdclient.Conn, m *model, seq *uint64) {
	t.Helper()
	for _, dir := range fd.fsDirs {
		if out, err := exec.Command("mount", "-o", "remount,size=1G", dir).CombinedOutput(); err != nil {
			t.Fatalf("growing the tmpfs: %v: %s", err, out)
		}
	}
	grown := time.Now()
	testbin.WaitFor(t, time.Minute, "a write to succeed", func() error {
		*seq++
		tag, blk := tagOf(1, *seq), int64(modelBase+8)
		if err := writeBlock(ctx, conn, blk, tag); err != nil {
			m.unknown(blk, tag)
			return err
		}
		m.settle(blk, tag)
		return nil
	})
	t.Logf("writes succeed again %v after the disks had room", time.Since(grown).Round(time.Millisecond))
}

func testFullDiskReplicaReopens(t *testing.T, managed bool) {
	fd := startFullDisk(t, testbin.ClusterConfig{Args: append(fastArgs, "--replica-retry", "10m"), Managed: managed})
	c := fd.c

	// Room again: n3 opens its replica again by itself, at once, and
	// catches up.
	reopenedRE := regexp.MustCompile(`failed replica opened again`)
	if out, err := exec.Command("mount", "-o", "remount,size=1G", fd.fsDir).CombinedOutput(); err != nil {
		t.Fatalf("growing the tmpfs: %v: %s", err, out)
	}
	grown := time.Now()
	if _, err := c.Nodes[2].WaitLog(reopenedRE, fd.failedAt, time.Minute); err != nil {
		t.Fatalf("n3 did not open its replica again: %v\n%s", err, lastLog(c, 2))
	}
	// At most roomRetryGap (10 s) after the failure, a reconciliation
	// (1-2 s) and the opening itself: far below the 10 min backoff.
	if d := time.Since(grown); d > 30*time.Second {
		t.Errorf("n3 opened its replica again %v after the disk had room", d)
	}
	t.Logf("n3 opened its replica again %v after the disk had room", time.Since(grown).Round(time.Millisecond))
	for k := range int64(4) {
		fd.write(fd.via3, modelBase+16+k)
	}
	waitReplicaFile(t, c, 2, fd.m, time.Minute)
	if !managed {
		// n3, the preferred leader, leads again once it caught up.
		testbin.WaitFor(t, time.Minute, "n3 to lead again", func() error {
			if l := c.LeaderOf(vol); l != 2 {
				return fmt.Errorf("leader n%d", l+1)
			}
			return nil
		})
	}
	for k := range int64(4) {
		fd.write(fd.via1, modelBase+20+k)
	}
	verifyThrough(t, c, fd.m)
	if !c.Running(2) {
		t.Fatal("n3's agent exited")
	}
	if strings.Contains(c.Nodes[2].LogSince(fd.failedAt), "serving NBD") {
		t.Error("n3's agent restarted")
	}
}

// TestFailedReplicaHealed checks self-healing of a replica whose disk
// stays full under a stream of writes, on a host that stays alive: once it
// has been out of service for --heal-after (its agent's attempts at
// opening it again notwithstanding),
// the control leader moves it to another host, n4 (offered less room than
// n3, so not chosen at first). The volume then has three healthy replicas,
// every acknowledged write is on n4, and n3, which serves the volume's
// clients through a proxy, has deleted its replica.
func TestFailedReplicaHealed(t *testing.T) {
	fd := startFullDisk(t, testbin.ClusterConfig{
		Hosts:    4,
		Managed:  true,
		Args:     append(fastArgs, "--replica-retry", "2s", "--heal-after", "5s"),
		HostArgs: smallLast(4, "300M"),
	})
	c := fd.c
	api := c.Admin(0)
	// Writes go on (over the fill, outside the model), so that each time
	// n3's agent opens its replica again it fails again.
	stop := make(chan struct{})
	werr := make(chan error, 1)
	go func() {
		buf := bytes.Repeat([]byte{0x5a}, fillStep)
		for pos := int64(fillBase); ; pos = fillBase + (pos-fillBase+fillStep)%(modelBase*blockSize-fillBase) {
			select {
			case <-stop:
				werr <- nil
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			err := fd.via1.WriteAt(ctx, buf, pos, 0)
			cancel()
			if err != nil {
				werr <- fmt.Errorf("writing at %d MiB while n3 fails: %w", pos>>20, err)
				return
			}
		}
	}()
	waitReplicasOn(t, api, 2*time.Minute, "the failed replica to move to n4", "n1", "n2", "n4")
	close(stop)
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`healing: moving a failed replica off its host.* from=n3 to=n4`).MatchString(c.Nodes[0].Log() + c.Nodes[1].Log() + c.Nodes[2].Log() + c.Nodes[3].Log()) {
		t.Error("no control leader logged the healing move")
	}
	for k := range int64(4) {
		fd.write(fd.via3, modelBase+16+k)
	}
	waitReplicaFile(t, c, 3, fd.m, time.Minute)
	verifyThrough(t, c, fd.m)
	testbin.WaitFor(t, 30*time.Second, "n3 to delete its replica", func() error {
		if _, err := os.Stat(filepath.Join(fd.fsDir, "groups", vol)); !os.IsNotExist(err) {
			return fmt.Errorf("n3's replica directory: %v", err)
		}
		return nil
	})
}

// dfOf returns df's line for dir.
func dfOf(dir string) string {
	out, _ := exec.Command("df", "-h", dir).CombinedOutput()
	return string(out)
}

// lastLog returns the last lines of host i's log.
func lastLog(c *testbin.Cluster, i int) string {
	lines := strings.Split(strings.TrimRight(c.Nodes[i].RunLog(), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-30):], "\n")
}

// TestLinearizableDiskFull runs the linearizability clients (random block
// reads and writes through all three agents) while the volume's leader,
// n3, runs out of disk: it fails as the leader and leaves, its clients go
// on through the others, its agent opens the replica again (and it fails
// again while the disk stays full), then the disk grows, the replica
// catches up and leads again. porcupine then checks the history.
func TestLinearizableDiskFull(t *testing.T) {
	s := seed(t)
	fd := startFullDiskCluster(t, testbin.ClusterConfig{Args: append(fastArgs, "--replica-retry", "1s")})
	c := fd.c
	h := &history{t0: time.Now()}
	t.Logf("history time 0 is %s", h.t0.UTC().Format(time.RFC3339Nano))
	var nextVal atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for k := range 6 {
		wg.Add(1)
		go linClient(h, c, newRand(s, 100+uint64(k)), k%3, &nextVal, stop, &wg)
	}
	time.Sleep(time.Second)

	start := h.now()
	fd.fillUntilFailed(t)
	time.Sleep(3 * time.Second) // n3's agent opens the replica again, which fails again
	if out, err := exec.Command("mount", "-o", "remount,size=1G", fd.fsDir).CombinedOutput(); err != nil {
		t.Fatalf("growing the tmpfs: %v: %s", err, out)
	}
	testbin.WaitFor(t, time.Minute, "n3 to lead again", func() error {
		if l := c.LeaderOf(vol); l != 2 {
			return fmt.Errorf("leader n%d", l+1)
		}
		return nil
	})
	h.fault(start, "n3 (leader) out of disk, its replica failed and opened again until the disk grew")
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	if !regexp.MustCompile(`failed replica opened again`).MatchString(c.Nodes[2].LogSince(fd.failedAt)) {
		t.Error("n3's agent never opened its replica again")
	}
	checkLinearizable(t, h, s)
}

// TestAllDisksFull fills the disks of all three replicas (three small
// tmpfs) until no leader can emerge: writes through every agent, the one
// whose replica may have outlived the others included, then get ENOSPC
// within seconds (QEMU pauses the VM on it and retries the write when
// resumed) rather than an EIO after --stall-timeout. Once the disks have
// room again the agents open their replicas again by themselves, a leader
// emerges, writes succeed, and every acknowledged write is there. Needs
// root (mount) and qemu-io.
func TestAllDisksFull(t *testing.T) {
	testbin.Require(t, "qemu-io")
	fd := startFullDisks(t, testbin.ClusterConfig{Args: append(fastArgs, "--replica-retry", "10m")}, 0, 1, 2)
	c := fd.c
	m := newModel()
	write := m.writer(t)
	conns := []*nbdclient.Conn{dial(t, c, 0), dial(t, c, 1), dial(t, c, 2)}
	for k := range int64(6) {
		write(conns[k%3], modelBase+k)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// Fill through n1 until a write is refused.
	_, err := fd.fillUntilRefused(t, ctx, conns[0])
	wantENOSPC(t, "filling through n1", err, 0)
	seq := uint64(0)
	for i, conn := range conns {
		seq++
		tag, blk := tagOf(1, seq), modelBase+16+int64(i)
		start := time.Now()
		err := writeBlock(ctx, conn, blk, tag)
		m.unknown(blk, tag)
		wantENOSPC(t, fmt.Sprintf("writing through n%d", i+1), err, time.Since(start))
		t.Logf("n%d answered ENOSPC after %v", i+1, time.Since(start).Round(time.Millisecond))
	}
	// QEMU's own NBD client sees it as ENOSPC (the error werror=enospc
	// pauses a VM on). The write goes to the fill's range, which is not
	// checked.
	start := time.Now()
	out, _ := testbin.RunErr(time.Minute, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x11 %d 64k", fillBase), c.URI(1, vol))
	if !strings.Contains(out, "No space left on device") {
		t.Fatalf("qemu-io write through n2 after %v: %s, want ENOSPC", time.Since(start), out)
	}
	t.Logf("qemu-io through n2 after %v: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))

	// Room again: the failed replicas open again, a leader emerges.
	fd.growUntilWritable(t, ctx, conns[0], m, &seq)
	for k := range int64(6) {
		write(conns[k%3], modelBase+k)
	}
	verifyThrough(t, c, m)
	for i := range c.Nodes {
		if !c.Running(i) {
			t.Fatalf("n%d's agent exited", i+1)
		}
	}
}

// wantENOSPC fails the test unless err is an NBD ENOSPC that came within
// 20 s: 10 heartbeat timeouts (5 s) without a leader, well before the
// stall timeout (30 s), after which it would be EIO.
func wantENOSPC(t *testing.T, what string, err error, took time.Duration) {
	t.Helper()
	var ne *nbdclient.Error
	if !errors.As(err, &ne) || syscall.Errno(ne.Errno) != syscall.ENOSPC {
		t.Fatalf("%s: %v after %v, want ENOSPC", what, err, took)
	}
	if took > 20*time.Second {
		t.Errorf("%s: ENOSPC after %v", what, took)
	}
}

// TestPeerDisksFull fills the disks of two of the three replicas (n2's and
// n3's, small tmpfs) until they fail and leave the volume no quorum. n1
// has room, so its own disk gives it no reason for ENOSPC; but n2 and n3
// say that their disks are short of space, so writes through n1 get
// ENOSPC within seconds too (QEMU pauses the VM), not EIO after
// --stall-timeout (which the guest would see). In a managed cluster of
// four they gossip it, and n4, which holds no replica (offered too little
// room, it serves the volume through a proxy), answers ENOSPC as well; in
// a fixed configuration of three n1 asks them over the replication port.
// Once the disks have room again, writes succeed and every acknowledged
// write is there.
func TestPeerDisksFull(t *testing.T) {
	for _, managed := range []bool{false, true} {
		t.Run(map[bool]string{false: "fixed", true: "managed"}[managed], func(t *testing.T) {
			testPeerDisksFull(t, managed)
		})
	}
}

func testPeerDisksFull(t *testing.T, managed bool) {
	cfg := testbin.ClusterConfig{Args: append(fastArgs, "--replica-retry", "10m")}
	via := []int{0} // the hosts whose writes must get ENOSPC
	if managed {
		cfg.Hosts, cfg.Managed, cfg.HostArgs = 4, true, smallLast(4, "300M")
		via = append(via, 3)
	} else {
		cfg.Args = append(cfg.Args, "--admin-listen", "127.0.0.1:0") // for /metrics
	}
	fd := startFullDisks(t, cfg, 1, 2)
	c := fd.c
	if managed {
		if v, err := c.Admin(0).Volume(context.Background(), vol); err != nil {
			t.Fatal(err)
		} else if hosts := slices.Sorted(slices.Values(v.Hosts)); !slices.Equal(hosts, []string{"n1", "n2", "n3"}) {
			t.Fatalf("volume placed on %v, want n1, n2 and n3", hosts)
		}
	}
	m := newModel()
	write := m.writer(t)
	var conns []*nbdclient.Conn
	for i := range c.Nodes {
		conns = append(conns, dial(t, c, i))
	}
	for k := range int64(6) {
		write(conns[k%3], modelBase+k)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// Fill through n1 until a write is refused.
	took, err := fd.fillUntilRefused(t, ctx, conns[0])
	wantENOSPC(t, "filling through n1", err, took)
	t.Logf("n1 answered the fill with ENOSPC after %v", took.Round(time.Millisecond))
	seq := uint64(0)
	for _, i := range via {
		seq++
		start := time.Now()
		tag, blk := tagOf(1, seq), modelBase+16+int64(i)
		err := writeBlock(ctx, conns[i], blk, tag)
		m.unknown(blk, tag)
		wantENOSPC(t, fmt.Sprintf("writing a block through n%d", i+1), err, time.Since(start))
		t.Logf("a block through n%d: ENOSPC after %v", i+1, time.Since(start).Round(time.Millisecond))
	}

	// Each agent's /metrics says whether its disk is short.
	for i, want := range []string{"0", "1", "1"} {
		if got := metric(t, c, i, "tandem_disk_short"); got != want {
			t.Errorf("n%d: tandem_disk_short %s, want %s", i+1, got, want)
		}
	}

	// Room again: the failed replicas open again, a leader emerges.
	fd.growUntilWritable(t, ctx, conns[0], m, &seq)
	for k := range int64(8) {
		write(conns[int(k)%len(conns)], modelBase+k)
	}
	verifyThrough(t, c, m)
	for i := range 3 {
		deadline := time.Now().Add(30 * time.Second)
		for got := metric(t, c, i, "tandem_disk_short"); got != "0"; got = metric(t, c, i, "tandem_disk_short") {
			if time.Now().After(deadline) {
				t.Fatalf("n%d: tandem_disk_short %s 30 s after the disks had room, want 0", i+1, got)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// metric returns the value of the unlabelled metric name on agent i's
// /metrics ("" if absent). In fixed mode the agent must listen for the
// admin API on a port it logs.
func metric(t *testing.T, c *testbin.Cluster, i int, name string) string {
	t.Helper()
	page, err := c.Nodes[i].Metrics()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(page, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			return v
		}
	}
	return ""
}
