package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/testbin"
)

// TestFullDiskReplicaReopens fills the disk of one replica, n3, whose
// data directory is a small tmpfs: n3 fails, leaves its group, and its
// clients' writes go on through the other replicas. Then the tmpfs grows,
// as an operator would make room: the agent opens the replica again by
// itself (--replica-retry), without a restart; it catches up and its file
// holds every acknowledged write. In fixed mode n3 is the volume's
// preferred leader (so it fails as the leader, and leads again after);
// in cluster mode the catalog places the leader. Needs root (mount).
func TestFullDiskReplicaReopens(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	for _, managed := range []bool{false, true} {
		t.Run(map[bool]string{false: "fixed", true: "managed"}[managed], func(t *testing.T) {
			testFullDiskReplicaReopens(t, managed)
		})
	}
}

func testFullDiskReplicaReopens(t *testing.T, managed bool) {
	const (
		size     = 256 << 20
		fillStep = 1 << 20
		base     = 224 << 20 / blockSize // the model's blocks, above the fill
	)
	var fsDir string
	cfg := testbin.ClusterConfig{
		Args:    append(fastArgs, "--replica-retry", "2s"),
		Managed: managed,
		Prepare: func(i int, dir string) {
			if i != 2 {
				return
			}
			// Room enough to create the volume; it shrinks below.
			if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1G", "tmpfs", dir).CombinedOutput(); err != nil {
				t.Skipf("mounting a tmpfs: %v: %s", err, out)
			}
			t.Cleanup(func() {
				if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
					t.Errorf("unmounting %s: %v: %s", dir, err, out)
				}
			})
			fsDir = dir
		},
	}
	if !managed {
		cfg.Volumes = []string{fmt.Sprintf("%s=%d,leader=n3", vol, size)}
	}
	c := testbin.StartCluster(t, cfg)
	if managed {
		c.WaitManaged(time.Minute)
		if _, err := c.Admin(0).CreateVolume(context.Background(), admin.CreateVolume{Name: vol, Size: size, Replicas: 3}); err != nil {
			t.Fatal(err)
		}
	}
	c.Leader(vol)
	if _, err := c.Nodes[2].WaitLog(regexp.MustCompile(`msg="volume ready" name=v`), 0, time.Minute); err != nil {
		t.Fatal(err)
	}
	// Room for what is there (the volume's log segment and spare, 64 MiB
	// each; in cluster mode the control plane's too) and 72 MiB more.
	var fs syscall.Statfs_t
	if err := syscall.Statfs(fsDir, &fs); err != nil {
		t.Fatal(err)
	}
	used := (fs.Blocks - fs.Bfree) * uint64(fs.Bsize)
	if out, err := exec.Command("mount", "-o", fmt.Sprintf("remount,size=%d", used+72<<20), fsDir).CombinedOutput(); err != nil {
		t.Fatalf("shrinking the tmpfs: %v: %s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m := newModel()
	write := m.writer(t)
	via1, via3 := dial(t, c, 0), dial(t, c, 2)
	for k := range int64(8) {
		write(via3, base+k)
	}

	// Fill the volume through n1 until n3 fails.
	failedRE := regexp.MustCompile(`replica failed; shutting its raft group down`)
	off := c.Nodes[2].LogLen()
	buf := bytes.Repeat([]byte{0xa5}, fillStep)
	failed := false
	for pos := int64(0); pos+fillStep <= base*blockSize && !failed; pos += fillStep {
		if err := via1.WriteAt(ctx, buf, pos, 0); err != nil {
			t.Fatalf("filling at %d MiB: %v", pos>>20, err)
		}
		failed = failedRE.MatchString(c.Nodes[2].LogSince(off))
	}
	if _, err := c.Nodes[2].WaitLog(failedRE, off, 30*time.Second); err != nil {
		t.Fatalf("n3's replica did not fail on its full disk: %v\n%s", err, dfOf(fsDir))
	}
	t.Logf("n3 failed:\n%s", dfOf(fsDir))

	// Its clients go on: writes through n3 reach the new leader.
	for k := range int64(8) {
		write(via3, base+8+k)
	}
	for k := range int64(4) {
		write(via1, base+k)
	}

	// Room again: n3 opens its replica again by itself and catches up.
	reopenedRE := regexp.MustCompile(`failed replica opened again`)
	if out, err := exec.Command("mount", "-o", "remount,size=1G", fsDir).CombinedOutput(); err != nil {
		t.Fatalf("growing the tmpfs: %v: %s", err, out)
	}
	if _, err := c.Nodes[2].WaitLog(reopenedRE, off, time.Minute); err != nil {
		t.Fatalf("n3 did not open its replica again: %v\n%s", err, lastLog(c, 2))
	}
	for k := range int64(4) {
		write(via3, base+16+k)
	}
	waitReplicaFile(t, c, 2, m, time.Minute)
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
		write(via1, base+20+k)
	}
	verifyThrough(t, c, m)
	if !c.Running(2) {
		t.Fatal("n3's agent exited")
	}
	if strings.Contains(c.Nodes[2].LogSince(off), "serving NBD") {
		t.Error("n3's agent restarted")
	}
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
