package vm

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
)

// TestClusterRestartResumesVM follows README's upgrade procedure under a
// running VM: every agent is stopped (SIGTERM), stays down for longer
// than QEMU's NBD reconnect-delay (5 s), so that the guest's disk I/O
// fails and QEMU pauses the VM, and is started again. The restarted agent
// of the VM's host takes the running QEMU over, finds it paused by the
// disk error (no event comes any more) and resumes it once the volume
// takes writes: the guest writes on without a reboot or an error, and its
// disk holds every write it completed.
func TestClusterRestartResumesVM(t *testing.T) {
	g := startGuestVM(t)
	c := g.c
	before, _ := serialSeq(g.serial[0])

	c.StopAll()
	time.Sleep(8 * time.Second)
	down, _ := serialSeq(g.serial[0])
	restarted := time.Now()
	c.StartAll()
	const logAt = 0 // the new run's log, from its start
	if _, err := c.Nodes[0].WaitLog(regexp.MustCompile(`msg="attached to a running QEMU"`), logAt, 30*time.Second); err != nil {
		t.Fatalf("n1 did not take its QEMU over: %v\n%s", err, c.Nodes[0].LogSince(logAt))
	}
	if _, err := c.Nodes[0].WaitLog(regexp.MustCompile(`msg="VM found paused by a disk error`), logAt, 30*time.Second); err != nil {
		t.Fatalf("n1 did not find the VM paused (the agents were down for 8 s, past the 5 s reconnect-delay): %v\n%s", err, c.Nodes[0].LogSince(logAt))
	}
	var last uint64
	testbin.WaitFor(t, time.Minute, "the guest writing again", func() error {
		if last, _ = serialSeq(g.serial[0]); last <= down+10 {
			return fmt.Errorf("serial log of n1: seq %d, %d while the agents were down", last, down)
		}
		return nil
	})
	t.Logf("the guest wrote up to seq %d before the stop, %d while the agents were down, and writes again %v after they were started (seq %d)",
		before, down, time.Since(restarted).Round(time.Millisecond), last)
	log := readFile(t, g.serial[0])
	if n := strings.Count(log, "TANDEM-GUEST START"); n != 1 || strings.Contains(log, "TANDEM-GUEST ERROR") {
		t.Fatalf("the guest rebooted or saw a disk error:\n%s", log)
	}
	res := g.checkDisk(t, last)
	t.Logf("disk: %+v", res)
}
