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
	"github.com/tandem-project/tandem/admin/client"
	"github.com/tandem-project/tandem/internal/testbin"
	"github.com/tandem-project/tandem/internal/testguest"
	"github.com/tandem-project/tandem/internal/testpki"
	"github.com/tandem-project/tandem/vmcoord/qemu"
	"github.com/tandem-project/tandem/volume"
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
// guestVM is a 3-host cluster running the test guest as VM g on n1, its
// disk g-disk replicated on every host.
type guestVM struct {
	c      *testbin.Cluster
	api    *client.Client
	gc     testguest.Config
	serial []string // the guest's serial log on each host
}

// startGuestVM starts a cluster and the test guest on n1, and returns once
// the guest writes.
func startGuestVM(t *testing.T) *guestVM {
	t.Helper()
	return startGuestVMOn(t, testbin.ClusterConfig{Hosts: 3, Managed: true})
}

// startGuestVMOn is startGuestVM on a cluster of cfg (Managed).
func startGuestVMOn(t *testing.T, cfg testbin.ClusterConfig) *guestVM {
	t.Helper()
	testbin.Require(t, "qemu-system-x86_64", "nbdcopy")
	c := testbin.StartCluster(t, cfg)
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
	return launchGuest(t, c, api, gc, "g-disk")
}

// launchGuest creates VM g with disk (the test guest's image, made with
// gc), starts it on n1 and returns once the guest writes.
func launchGuest(t *testing.T, c *testbin.Cluster, api *client.Client, gc testguest.Config, disk string) *guestVM {
	t.Helper()
	ctx := context.Background()
	if _, err := api.CreateVM(ctx, admin.CreateVM{Name: "g", Disks: []string{disk}, Memory: 32 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.StartVM(ctx, "g", "n1"); err != nil {
		t.Fatal(err)
	}
	serial := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		serial[i] = filepath.Join(n.DataDir, "vms", "g", qemu.SerialLogFile)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		// QEMU's own messages (NBD reconnects, migration errors) are in
		// its log, which goes with the test's directories.
		for _, n := range c.Nodes {
			if b, err := os.ReadFile(filepath.Join(n.DataDir, "vms", "g", qemu.QEMULogFile)); err == nil {
				t.Logf("%s: QEMU's log of VM g:\n%s", n.Name, b)
			}
		}
	})
	testbin.WaitFor(t, 60*time.Second, "the guest writing on n1", func() error {
		if s, booted := serialSeq(serial[0]); !booted || s < 20 {
			return fmt.Errorf("serial log of n1: seq %d, started %v", s, booted)
		}
		return nil
	})
	return &guestVM{c: c, api: api, gc: gc, serial: serial}
}

// stop stops VM g and waits until no host runs a QEMU for it.
func (g *guestVM) stop(t *testing.T) {
	t.Helper()
	if _, err := g.api.StopVM(context.Background(), "g"); err != nil {
		t.Fatal(err)
	}
	testbin.WaitFor(t, 20*time.Second, "the VM stopped", func() error {
		for i := range g.c.Nodes {
			lv, err := localVMs(g.c, i)
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
}

// checkDisk stops the VM and checks its disk: every write the guest
// completed (last, at least) is there, in order.
func (g *guestVM) checkDisk(t *testing.T, last uint64) testguest.Result {
	t.Helper()
	g.stop(t)
	diskPath := filepath.Join(t.TempDir(), "disk.raw")
	testbin.Run(t, 60*time.Second, "nbdcopy", g.c.URI(2, "g-disk"), diskPath)
	f, err := os.Open(diskPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := testguest.Check(f, g.gc)
	if err != nil {
		t.Fatalf("the guest's disk: %v", err)
	}
	if res.MaxSeq < last {
		t.Fatalf("LOST WRITES: the disk's newest write is seq %d, the guest reported %d done", res.MaxSeq, last)
	}
	return res
}

// runsOn waits until exactly host i runs the VM (a QEMU process in state
// state), and no other host has a QEMU for it.
func (g *guestVM) runsOn(t *testing.T, i int, state string) {
	t.Helper()
	testbin.WaitFor(t, 20*time.Second, "the VM on exactly one host", func() error {
		var on []string
		for j := range g.c.Nodes {
			lv, err := localVMs(g.c, j)
			if err != nil {
				return err
			}
			for _, v := range lv {
				if v.Name == "g" && v.PID != 0 {
					on = append(on, fmt.Sprintf("%s(%s)", g.c.Nodes[j].Name, v.State))
				}
			}
		}
		if want := []string{g.c.Nodes[i].Name + "(" + state + ")"}; !slices.Equal(on, want) {
			return fmt.Errorf("QEMU processes of the VM: %v, want %v", on, want)
		}
		return nil
	})
}

// writesOn waits until the guest's serial log on host i shows a seq above
// after, without a reboot there, and returns it.
func (g *guestVM) writesOn(t *testing.T, i int, after uint64) uint64 {
	t.Helper()
	var s uint64
	testbin.WaitFor(t, 20*time.Second, "the guest writing on "+g.c.Nodes[i].Name, func() error {
		var booted bool
		s, booted = serialSeq(g.serial[i])
		if booted && i != 0 {
			t.Fatalf("the guest booted again on %s", g.c.Nodes[i].Name)
		}
		if s <= after {
			return fmt.Errorf("%s's serial log shows seq %d, want more than %d", g.c.Nodes[i].Name, s, after)
		}
		return nil
	})
	return s
}

func TestLiveMigration(t *testing.T) {
	testbin.Require(t, "qemu-system-x86_64", "nbdcopy", "qemu-io")
	g := startGuestVM(t)
	c := g.c
	wctx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	var w seqWatch
	go w.run(wctx, g.serial)

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
		prev, err := g.api.VM(context.Background(), "g")
		if err != nil {
			t.Fatal(err)
		}
		vm := g.migrate(t, to)
		r := vm.LastMigration
		if vm.Host != c.Nodes[to].Name || r == nil || r.Result != "completed" || r.To != c.Nodes[to].Name {
			t.Fatalf("migration %d: VM %+v, result %+v", k+1, vm, r)
		}
		// The guest goes on on the destination, from where it was: its
		// sequence is in its RAM, and it did not boot again.
		g.writesOn(t, to, before)
		time.Sleep(100 * time.Millisecond) // let the guest run a little
		gap := w.window()
		g.runsOn(t, to, "running")
		// Split brain refused: the source's epoch no longer writes.
		g.refusesEpoch(t, at, prev.Epoch)
		t.Logf("migration %d to %s: downtime %v (QEMU %v), guest's longest pause %v, total %v, %d KiB in %d passes",
			k+1, r.To, r.Downtime.Round(time.Millisecond/10), r.QEMUDowntime, gap.Round(time.Millisecond), r.Total.Round(time.Millisecond), r.Bytes>>10, r.Passes)
		downtimes, qemuDowntimes, totals, guestGaps = append(downtimes, r.Downtime), append(qemuDowntimes, r.QEMUDowntime), append(totals, r.Total), append(guestGaps, gap)
		at = to
	}
	med := func(ds []time.Duration) time.Duration { s := slices.Clone(ds); slices.Sort(s); return s[len(s)/2] }
	t.Logf("over %d migrations: downtime median %v max %v; QEMU's median %v max %v; guest's pause median %v max %v (without a migration: median %v max %v); total median %v",
		migrations, med(downtimes), slices.Max(downtimes), med(qemuDowntimes), slices.Max(qemuDowntimes),
		med(guestGaps), slices.Max(guestGaps), med(baselines), slices.Max(baselines), med(totals))
	stopWatch()
	last, _ := serialSeq(g.serial[at])
	res := g.checkDisk(t, last)
	t.Logf("disk: %+v; the guest reported seq %d last", res, last)
}

// migrationStartRE matches the source's log line of a migration's start.
var migrationStartRE = regexp.MustCompile(`msg="migration starting".* tls=(\w+)`)

// TestLiveMigrationTLS migrates the guest back and forth between hosts
// that run with mutual TLS between them (--peer-tls-*): QEMU's migration
// stream is TLS too, each side checking the other's certificate (and
// QEMU the CA's revocation list, --peer-tls-crl), and the guest goes on
// where it was.
func TestLiveMigrationTLS(t *testing.T) {
	testbin.Require(t, "qemu-system-x86_64", "nbdcopy")
	cfg := testbin.ClusterConfig{Hosts: 3, Managed: true}
	peers := testbin.WithPeerTLS(t, &cfg)
	// With a revocation list (of a retired host), which QEMU reads too.
	crl := filepath.Join(t.TempDir(), "peer-crl.pem")
	testpki.WriteFile(t, crl, peers.CA.CRL(peers.CA.Issue("retired", "127.0.0.9")))
	hostArgs := cfg.HostArgs
	cfg.HostArgs = func(i int) []string { return append(hostArgs(i), "--peer-tls-crl", crl) }
	g := startGuestVMOn(t, cfg)
	at := 0
	for k := range 2 {
		to := 1 - at
		before, _ := serialSeq(g.serial[at])
		vm := g.migrate(t, to)
		if r := vm.LastMigration; vm.Host != g.c.Nodes[to].Name || r == nil || r.Result != "completed" {
			t.Fatalf("migration %d: VM %+v, result %+v", k+1, vm, r)
		}
		g.writesOn(t, to, before)
		g.runsOn(t, to, "running")
		starts := migrationStartRE.FindAllStringSubmatch(g.c.Nodes[at].RunLog(), -1)
		if len(starts) == 0 {
			t.Fatalf("n%d logged no migration start", at+1)
		}
		for _, m := range starts {
			if m[1] != "true" {
				t.Fatalf("n%d migrated without TLS: %s", at+1, m[0])
			}
		}
		at = to
	}
}

// migrate migrates the VM to host to through the CLI of n3 and returns
// the VM as the CLI printed it at the end.
func (g *guestVM) migrate(t *testing.T, to int, args ...string) admin.VM {
	t.Helper()
	out, err := cli(t, g.c, 2, append([]string{"vm", "migrate", "g", "--to", g.c.Nodes[to].Name, "-o", "json", "--wait-timeout", "60s"}, args...)...)
	if err != nil {
		t.Fatalf("migration to %s: %v\n%s", g.c.Nodes[to].Name, err, out)
	}
	var vm admin.VM
	if err := json.Unmarshal([]byte(out), &vm); err != nil {
		t.Fatalf("migration to %s: %v\n%s", g.c.Nodes[to].Name, err, out)
	}
	return vm
}

// refusesEpoch checks that a write under epoch old (that of the VM's run
// on host from, before a migration) through from's agent is refused, and
// leaves nothing on the disk: what a source QEMU resumed after the
// switchover would do.
func (g *guestVM) refusesEpoch(t *testing.T, from int, old uint64) {
	t.Helper()
	off := int64(g.gc.Base+g.gc.Ring+8) * 512 // beyond the guest's ring
	// The agent may have just started (export not open yet): only a
	// refusal ends the wait, an acknowledged write fails the test.
	testbin.WaitFor(t, 20*time.Second, "a refusal of epoch "+fmt.Sprint(old), func() error {
		out, err := testbin.RunErr(30*time.Second, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x5a %d 4k", off), g.c.URI(from, volume.WriterExport("g-disk", old)))
		switch {
		case err == nil && !strings.Contains(out, "error"):
			t.Fatalf("SPLIT BRAIN: a write under epoch %d through %s was accepted after the VM moved on:\n%s", old, g.c.Nodes[from].Name, out)
		case !strings.Contains(out, "Operation not permitted"):
			return fmt.Errorf("qemu-io: %v\n%s", err, out)
		}
		return nil
	})
	out := testbin.Run(t, 30*time.Second, "qemu-io", "-f", "raw", "-r", "-c", fmt.Sprintf("read -P 0 %d 4k", off), g.c.URI(from, "g-disk"))
	if strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("a refused write reached the disk:\n%s", out)
	}
}
