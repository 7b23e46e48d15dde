package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/testbin"
	"github.com/tandem-project/tandem/internal/testguest"
	"github.com/tandem-project/tandem/vmcoord/qemu"
)

// cli runs the tandem CLI against host i's admin API.
func cli(t *testing.T, c *testbin.Cluster, i int, args ...string) (string, error) {
	t.Helper()
	full := append(args, "--admin", c.Nodes[i].AdminAddr, "--token-file", c.TokenFile)
	cmd := exec.Command(testbin.Binary(t), full...)
	cmd.Env = testbin.CleanEnv()
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out) + string(ee.Stderr), err
	}
	return string(out), err
}

var seqRE = regexp.MustCompile(`(?m)^SEQ (\d+)\r?$`)

// serialSeq returns the last SEQ a guest printed in the serial log at
// path, and whether the log shows the guest (re)booting.
func serialSeq(path string) (seq uint64, booted bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	if m := seqRE.FindAllSubmatch(b, -1); len(m) > 0 {
		seq, _ = strconv.ParseUint(string(m[len(m)-1][1]), 10, 64)
	}
	return seq, strings.Contains(string(b), "TANDEM-GUEST START")
}

// localVMs returns the VMs agent i's runtime reports.
func localVMs(c *testbin.Cluster, i int) ([]admin.LocalVM, error) {
	var out []admin.LocalVM
	err := getJSON(c, i, "/v1/local/vms", &out)
	return out, err
}

// seqWatch samples the guest's progress (its newest SEQ over every host's
// serial log) and records when it last advanced, to measure the pauses
// the guest sees.
type seqWatch struct {
	mu      sync.Mutex
	seq     uint64
	changed time.Time
	longest time.Duration // in the current window
}

func (w *seqWatch) run(ctx context.Context, paths []string) {
	for ctx.Err() == nil {
		var top uint64
		for _, p := range paths {
			s, _ := serialSeq(p)
			top = max(top, s)
		}
		now := time.Now()
		w.mu.Lock()
		if top > w.seq {
			if !w.changed.IsZero() {
				w.longest = max(w.longest, now.Sub(w.changed))
			}
			w.seq, w.changed = top, now
		}
		w.mu.Unlock()
		time.Sleep(2 * time.Millisecond)
	}
}

// window starts a new measurement window and returns the longest gap of
// the previous one.
func (w *seqWatch) window() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	g := w.longest
	w.longest = 0
	return g
}

func (w *seqWatch) current() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seq
}

// TestLiveMigration live-migrates a running test guest between two hosts
// of a 3-host cluster 10 times, through the CLI, while it writes a
// sequence number per disk write: after every migration the VM runs on
// exactly one host, the guest's sequence (kept in its RAM) continues
// without a reboot, and at the end the disk holds every write the guest
// completed.
func TestLiveMigration(t *testing.T) {
	testbin.Require(t, "qemu-system-x86_64", "nbdcopy")
	c := testbin.StartCluster(t, testbin.ClusterConfig{Hosts: 3, Managed: true})
	c.WaitManaged(30 * time.Second)
	ctx := context.Background()
	api := c.Admin(0)
	if _, err := api.CreateVolume(ctx, admin.CreateVolume{Name: "g-disk", Size: 4 << 20, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	gc := testguest.Config{RunID: rand.Uint32(), Base: 8, Ring: 2000, ReportEvery: 1, CounterPages: 16}
	img, err := testguest.Image(gc)
	if err != nil {
		t.Fatal(err)
	}
	imgPath := filepath.Join(t.TempDir(), "guest.img")
	if err := os.WriteFile(imgPath, img, 0o600); err != nil {
		t.Fatal(err)
	}
	testbin.Run(t, 30*time.Second, "nbdcopy", imgPath, c.URI(0, "g-disk"))
	if _, err := api.CreateVM(ctx, admin.CreateVM{Name: "g", Disks: []string{"g-disk"}, Memory: 32 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.StartVM(ctx, "g", "n1"); err != nil {
		t.Fatal(err)
	}
	serial := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		serial[i] = filepath.Join(n.DataDir, "vms", "g", qemu.SerialLogFile)
	}
	testbin.WaitFor(t, 60*time.Second, "the guest writing on n1", func() error {
		if s, booted := serialSeq(serial[0]); !booted || s < 20 {
			return fmt.Errorf("serial log of n1: seq %d, started %v", s, booted)
		}
		return nil
	})
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	var w seqWatch
	go w.run(wctx, serial)

	const migrations = 10
	var downtimes, qemuDowntimes, totals, guestGaps, baselines []time.Duration
	at := 0 // index of the host the VM runs on
	for k := range migrations {
		to := 1 - at // n1 <-> n2
		// The guest's pauses without a migration, over as long a window:
		// the baseline of the pause a migration adds.
		w.window()
		time.Sleep(400 * time.Millisecond)
		baselines = append(baselines, w.window())
		before := w.current()
		out, err := cli(t, c, 2, "vm", "migrate", "g", "--to", c.Nodes[to].Name, "-o", "json", "--wait-timeout", "60s")
		if err != nil {
			t.Fatalf("migration %d to %s: %v\n%s", k+1, c.Nodes[to].Name, err, out)
		}
		var vm admin.VM
		if err := json.Unmarshal([]byte(out), &vm); err != nil {
			t.Fatalf("migration %d: %v\n%s", k+1, err, out)
		}
		r := vm.LastMigration
		if vm.Host != c.Nodes[to].Name || r == nil || r.Result != "completed" || r.To != c.Nodes[to].Name {
			t.Fatalf("migration %d: VM %+v, result %+v", k+1, vm, r)
		}
		// The guest goes on on the destination, from where it was: its
		// sequence is in its RAM, and it did not boot again.
		testbin.WaitFor(t, 20*time.Second, "the guest writing on "+c.Nodes[to].Name, func() error {
			s, booted := serialSeq(serial[to])
			if booted {
				t.Fatalf("migration %d: the guest booted again on %s", k+1, c.Nodes[to].Name)
			}
			if s <= before {
				return fmt.Errorf("the destination's serial log shows seq %d, the guest was at %d before", s, before)
			}
			return nil
		})
		time.Sleep(100 * time.Millisecond) // let the guest run a little
		gap := w.window()
		// Exactly one host runs the VM.
		testbin.WaitFor(t, 20*time.Second, "the VM on exactly one host", func() error {
			var on []string
			for i := range c.Nodes {
				lv, err := localVMs(c, i)
				if err != nil {
					return err
				}
				for _, v := range lv {
					if v.Name == "g" && v.PID != 0 {
						on = append(on, fmt.Sprintf("%s(%s)", c.Nodes[i].Name, v.State))
					}
				}
			}
			if !slices.Equal(on, []string{c.Nodes[to].Name + "(running)"}) {
				return fmt.Errorf("QEMU processes of the VM: %v", on)
			}
			return nil
		})
		t.Logf("migration %d to %s: downtime %v (QEMU %v), guest's longest pause %v, total %v, %d MiB in %d passes",
			k+1, r.To, r.Downtime.Round(time.Millisecond/10), r.QEMUDowntime, gap.Round(time.Millisecond), r.Total.Round(time.Millisecond), r.Bytes>>20, r.Passes)
		downtimes, qemuDowntimes, totals, guestGaps = append(downtimes, r.Downtime), append(qemuDowntimes, r.QEMUDowntime), append(totals, r.Total), append(guestGaps, gap)
		at = to
	}
	med := func(ds []time.Duration) time.Duration { s := slices.Clone(ds); slices.Sort(s); return s[len(s)/2] }
	t.Logf("over %d migrations: downtime median %v max %v; QEMU's median %v max %v; guest's pause median %v max %v (without a migration: median %v max %v); total median %v",
		migrations, med(downtimes), slices.Max(downtimes), med(qemuDowntimes), slices.Max(qemuDowntimes),
		med(guestGaps), slices.Max(guestGaps), med(baselines), slices.Max(baselines), med(totals))

	// Stop the VM and check the disk: every write the guest completed is
	// there, in order.
	stopWatch()
	last, _ := serialSeq(serial[at])
	if _, err := api.StopVM(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	testbin.WaitFor(t, 20*time.Second, "the VM stopped", func() error {
		for i := range c.Nodes {
			lv, err := localVMs(c, i)
			if err != nil {
				return err
			}
			for _, v := range lv {
				if v.PID != 0 {
					return fmt.Errorf("n%d still runs %s", i+1, v.Name)
				}
			}
		}
		return nil
	})
	diskPath := filepath.Join(t.TempDir(), "disk.raw")
	testbin.Run(t, 60*time.Second, "nbdcopy", c.URI(2, "g-disk"), diskPath)
	f, err := os.Open(diskPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := testguest.Check(f, gc)
	if err != nil {
		t.Fatalf("the disk after %d migrations: %v", migrations, err)
	}
	if res.MaxSeq < last {
		t.Fatalf("LOST WRITES: the disk's newest write is seq %d, the guest reported %d done", res.MaxSeq, last)
	}
	t.Logf("disk: %+v; the guest reported seq %d last", res, last)
}
