package vm

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
)

// TestVMPausesOnFullDisks runs the test guest on a 3-host cluster whose
// data directories are tmpfs, then fills every host's tmpfs with a file
// of another process, to below the agents' disk reserve. The guest's
// writes can no longer be applied: the disk's replicas fail at their
// reserve, no leader emerges, and the agents answer the guest's next
// write ENOSPC, on which QEMU (werror=stop) pauses the VM, within seconds
// rather than after --stall-timeout; the guest sees no error. While the
// disks stay full the supervisor leaves the VM paused (the agent's
// StorageReady says the replicas are short of space). Once the files are
// gone, the agents open the replicas again by themselves, the supervisor
// resumes the VM, the guest writes on without a reboot, and its disk holds
// every write it completed. Needs root (mount).
func TestVMPausesOnFullDisks(t *testing.T) {
	const reserve = 32 << 20
	testbin.Require(t, "qemu-system-x86_64", "nbdcopy", "fallocate")
	var dirs []string
	g := startGuestVMOn(t, testbin.ClusterConfig{Hosts: 3, Managed: true,
		Args: []string{"--disk-reserve", fmt.Sprint(reserve), "--replica-retry", "10m"},
		Prepare: func(i int, dir string) {
			testbin.MountTmpfs(t, dir, 1<<30)
			dirs = append(dirs, dir)
		}})
	c := g.c
	logAt := c.Nodes[0].LogLen()

	// Another process fills every disk to 1 MiB into the reserve.
	for _, dir := range dirs {
		var fs syscall.Statfs_t
		if err := syscall.Statfs(dir, &fs); err != nil {
			t.Fatal(err)
		}
		fill := int64(fs.Bavail)*fs.Bsize - reserve + 1<<20
		testbin.Run(t, 30*time.Second, "fallocate", "-l", fmt.Sprint(fill), filepath.Join(dir, "filler"))
	}
	filled := time.Now()
	pausedRE := regexp.MustCompile(`msg="disk I/O error".*nospace=true`)
	if _, err := c.Nodes[0].WaitLog(pausedRE, logAt, time.Minute); err != nil {
		t.Fatalf("QEMU did not pause the VM on ENOSPC: %v\n%s", err, c.Nodes[0].LogSince(logAt))
	}
	// Ten heartbeat timeouts (6.5 s) without a leader, plus the write
	// the replicas failed on: far below the stall timeout (60 s).
	if d := time.Since(filled); d > 30*time.Second {
		t.Errorf("the VM paused on ENOSPC %v after the disks filled", d)
	}
	t.Logf("the VM paused on ENOSPC %v after the disks filled", time.Since(filled).Round(time.Millisecond))
	paused, _ := serialSeq(g.serial[0])

	// While the disks stay full the supervisor does not resume the VM:
	// the agent tells it the volume's replicas are short of space.
	notReadyRE := regexp.MustCompile(`msg="storage not ready; VM stays paused".*short of space`)
	if _, err := c.Nodes[0].WaitLog(notReadyRE, logAt, 30*time.Second); err != nil {
		t.Fatalf("the supervisor did not wait for the storage: %v\n%s", err, c.Nodes[0].LogSince(logAt))
	}
	time.Sleep(5 * time.Second)
	if l := c.Nodes[0].LogSince(logAt); strings.Contains(l, "VM resumed after a disk error") {
		t.Fatalf("the VM was resumed while the disks were full:\n%s", l)
	}

	// Room again: the guest writes on.
	for _, dir := range dirs {
		if err := os.Remove(filepath.Join(dir, "filler")); err != nil {
			t.Fatal(err)
		}
	}
	roomAt := time.Now()
	last := paused
	testbin.WaitFor(t, time.Minute, "the guest writing again", func() error {
		if last, _ = serialSeq(g.serial[0]); last <= paused+10 {
			return fmt.Errorf("serial log of n1: seq %d, %d when paused", last, paused)
		}
		return nil
	})
	t.Logf("the guest writes again %v after the disks had room (seq %d when paused, %d now)",
		time.Since(roomAt).Round(time.Millisecond), paused, last)
	// It says so once the retried writes went through (within its last
	// delay, at most 2 s).
	if _, err := c.Nodes[0].WaitLog(regexp.MustCompile(`msg="VM resumed after a disk error"`), logAt, 10*time.Second); err != nil {
		t.Errorf("the supervisor did not say it resumed the VM: %v\n%s", err, c.Nodes[0].LogSince(logAt))
	}
	log := readFile(t, g.serial[0])
	if n := strings.Count(log, "TANDEM-GUEST START"); n != 1 || strings.Contains(log, "TANDEM-GUEST ERROR") {
		t.Fatalf("the guest rebooted or saw a disk error:\n%s", log)
	}
	res := g.checkDisk(t, last)
	t.Logf("disk: %+v", res)
}
