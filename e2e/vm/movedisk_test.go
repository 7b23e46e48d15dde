package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/testbin"
	"github.com/tandem-project/tandem/internal/testguest"
)

// moveDiskSize is the test guest's disk.
const moveDiskSize = 4 << 20

// startFileGuest starts a cluster and the test guest on n1 with its disk
// a raw file on n1 (an external disk), and returns once the guest writes.
func startFileGuest(t *testing.T) (*guestVM, string) {
	t.Helper()
	return startExternalGuest(t, func(path string) string { return "raw:" + path })
}

// startExternalGuest starts a cluster and the test guest on n1 with its
// disk the external disk disk(path) of the guest's image at path, and
// returns once the guest writes.
func startExternalGuest(t *testing.T, disk func(path string) string) (*guestVM, string) {
	t.Helper()
	testbin.Require(t, "qemu-system-x86_64", "nbdcopy", "qemu-img")
	c := testbin.StartCluster(t, testbin.ClusterConfig{Hosts: 3, Managed: true})
	c.WaitManaged(30 * time.Second)
	api := c.Admin(0)
	gc := testguest.Config{RunID: rand.Uint32(), Base: 8, Ring: 2000, ReportEvery: 1, CounterPages: 16}
	img, err := testguest.Image(gc)
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "guest.img")
	if err := os.WriteFile(src, img, 0o600); err != nil {
		t.Fatal(err)
	}
	// Data beyond the guest's ring, for the mirror to copy (holes are
	// copied at once, whatever the rate limit).
	fill := make([]byte, moveDiskSize/2)
	for i := range fill {
		fill[i] = byte(i*7 + i>>9)
	}
	f, err := os.OpenFile(src, os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteAt(fill, moveDiskSize/2)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	return launchGuest(t, c, api, gc, disk(src)), src
}

// boots counts the guest's starts in the serial log at path.
func boots(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "TANDEM-GUEST START")
}

// checkImage checks the guest's ring in the image file at path: it holds
// every write up to seq at least.
func checkImage(t *testing.T, what, path string, gc testguest.Config, seq uint64) testguest.Result {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := testguest.Check(f, gc)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if res.MaxSeq < seq {
		t.Fatalf("LOST WRITES: %s's newest write is seq %d, the guest had reported %d", what, res.MaxSeq, seq)
	}
	return res
}

// moveDisk runs tandem vm move-disk through n3's CLI and returns the VM
// it printed at the end.
func (g *guestVM) moveDisk(t *testing.T, args ...string) admin.VM {
	t.Helper()
	out, err := cli(t, g.c, 2, append([]string{"vm", "move-disk", "g", "-o", "json", "--wait-timeout", "60s"}, args...)...)
	if err != nil {
		t.Fatalf("move-disk %v: %v\n%s", args, err, out)
	}
	var vm admin.VM
	if err := json.Unmarshal([]byte(out), &vm); err != nil {
		t.Fatalf("move-disk %v: %v\n%s", args, err, out)
	}
	if r := vm.LastDiskMove; r == nil || r.Result != "completed" {
		t.Fatalf("move-disk %v: last disk move %+v", args, r)
	}
	return vm
}

// TestMoveDisk imports the disk of a running test guest from a raw file
// on its host into a Tandem volume, then exports it to a new raw file and
// from there to a qcow2 file, while the guest writes a sequence number per disk write: the guest
// never reboots, each side left behind holds every write the guest had
// reported before the move, and the final file holds every write. It
// also checks refusals and failures that must leave the VM on its disk.
func TestMoveDisk(t *testing.T) {
	g, src := startFileGuest(t)
	c := g.c
	ctx := context.Background()
	wctx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	var w seqWatch
	go w.run(wctx, g.serial[:1])

	// A VM whose disk is a file on its host cannot live-migrate.
	if out, err := cli(t, c, 2, "vm", "migrate", "g", "--to", "n2"); err == nil || !strings.Contains(out, "is a file on host n1") {
		t.Fatalf("migrating a VM with a file disk: %v\n%s", err, out)
	}

	// A bad target fails cleanly: the VM keeps its disk.
	if _, err := g.api.CreateVolume(ctx, admin.CreateVolume{Name: "small", Size: moveDiskSize / 2, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	out, err := cli(t, c, 2, "vm", "move-disk", "g", "0", "--to-volume", "small", "--wait-timeout", "60s")
	if err == nil || !strings.Contains(out, "sizes must match") || !strings.Contains(out, "the disk is still raw:"+src) {
		t.Fatalf("move to a volume of the wrong size: %v\n%s", err, out)
	}
	t.Logf("wrong size: %s", strings.TrimSpace(out))
	taken := filepath.Join(filepath.Dir(src), "taken.img")
	if err := os.WriteFile(taken, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = cli(t, c, 2, "vm", "move-disk", "g", "0", "--to-file", taken, "--wait-timeout", "60s")
	if err == nil || !strings.Contains(out, "exists") {
		t.Fatalf("move to an existing file: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(taken); string(b) != "keep me" {
		t.Fatalf("a failed move changed an existing file: %q", b)
	}
	if out, err := cli(t, c, 2, "vm", "move-disk", "g", "0", "--to-volume", "nope"); err == nil || !strings.Contains(out, "create it first") {
		t.Fatalf("move to a missing volume: %v\n%s", err, out)
	}

	// Import into a volume.
	if _, err := g.api.CreateVolume(ctx, admin.CreateVolume{Name: "g-disk", Size: moveDiskSize, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	before := w.current()
	w.window()
	start := time.Now()
	vm := g.moveDisk(t, "0", "--to-volume", "g-disk")
	took := time.Since(start)
	if d := vm.Disks[0]; d.Volume != "g-disk" || d.WriterEpoch != vm.Epoch {
		t.Fatalf("after the import: disk %+v, VM epoch %d", d, vm.Epoch)
	}
	r := vm.LastDiskMove
	after := g.writesOn(t, 0, w.current())
	gap := w.window()
	t.Logf("import: %d KiB copied in %v, pivot %v, whole command %v; the guest's longest pause %v (seq %d -> %d)",
		r.Bytes>>10, r.Copy.Round(time.Millisecond), r.Pivot.Round(time.Millisecond), took.Round(time.Millisecond), gap.Round(time.Millisecond), before, after)
	// The file left behind holds every write reported before the move.
	res := checkImage(t, "the imported file", src, g.gc, before)
	t.Logf("the old file: %+v", res)

	// Export to a new file (through its name).
	out1 := filepath.Join(t.TempDir(), "out.img")
	before = w.current()
	w.window()
	vm = g.moveDisk(t, "g-disk", "--to-file", out1)
	if d := vm.Disks[0]; d.Disk != "raw:"+out1 || d.Kind != "raw" {
		t.Fatalf("after the export: disk %+v", d)
	}
	r = vm.LastDiskMove
	after = g.writesOn(t, 0, w.current())
	gap = w.window()
	t.Logf("export: %d KiB copied in %v, pivot %v; the guest's longest pause %v (seq %d -> %d)",
		r.Bytes>>10, r.Copy.Round(time.Millisecond), r.Pivot.Round(time.Millisecond), gap.Round(time.Millisecond), before, after)
	// The volume left behind holds every write reported before the
	// export, and its writer was released.
	vol := filepath.Join(t.TempDir(), "vol.raw")
	testbin.Run(t, 60*time.Second, "nbdcopy", c.URI(2, "g-disk"), vol)
	checkImage(t, "the exported volume", vol, g.gc, before)
	if v, err := g.api.Volume(ctx, "g-disk"); err != nil || v.WriterEpoch != 0 {
		t.Fatalf("the exported volume: writer %d (%v), want 0", v.WriterEpoch, err)
	}
	if n := boots(t, g.serial[0]); n != 1 {
		t.Fatalf("the guest booted %d times", n)
	}

	// And from file to file, into qcow2.
	out2 := filepath.Join(t.TempDir(), "out.qcow2")
	w.window()
	out, err = cli(t, c, 2, "vm", "move-disk", "g", "0", "--to-file", out2, "--wait-timeout", "60s") // the human output
	if err != nil || !strings.Contains(out, "Moved disk 0 of VM g from raw:"+out1+" to qcow2:"+out2+": ") {
		t.Fatalf("move-disk to qcow2: %v\n%s", err, out)
	}
	t.Logf("%s", strings.TrimSpace(out))
	if vm, err = g.api.VM(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	if d := vm.Disks[0]; d.Disk != "qcow2:"+out2 || d.Kind != "qcow2" {
		t.Fatalf("after the export to qcow2: disk %+v", d)
	}
	g.writesOn(t, 0, w.current())
	t.Logf("raw file to qcow2: %d KiB copied in %v, pivot %v; the guest's longest pause %v", vm.LastDiskMove.Bytes>>10,
		vm.LastDiskMove.Copy.Round(time.Millisecond), vm.LastDiskMove.Pivot.Round(time.Millisecond), w.window().Round(time.Millisecond))
	// The guest's pauses without a move, over a window as long.
	time.Sleep(time.Second)
	t.Logf("the guest's longest pause without a move, over 1 s: %v", w.window().Round(time.Millisecond))

	// Stop the VM: the new file holds every write the guest reported.
	stopWatch()
	last, _ := serialSeq(g.serial[0])
	g.stop(t)
	checkImage(t, "the first exported file", out1, g.gc, before)
	raw := filepath.Join(t.TempDir(), "final.raw")
	testbin.Run(t, 60*time.Second, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", out2, raw)
	res = checkImage(t, "the exported qcow2 file", raw, g.gc, last)
	t.Logf("final file: %+v; the guest reported seq %d last", res, last)
}

// waitCopying starts a rate-limited move of the guest's disk to target
// (move-disk flags) and returns once the mirror copied something.
func (g *guestVM) waitCopying(t *testing.T, target ...string) admin.VM {
	t.Helper()
	args := append([]string{"vm", "move-disk", "g", "0", "--no-wait", "--max-rate", "256K"}, target...)
	if out, err := cli(t, g.c, 2, args...); err != nil {
		t.Fatalf("move-disk %v: %v\n%s", target, err, out)
	}
	var vm admin.VM
	testbin.WaitFor(t, 30*time.Second, "the mirror copying", func() error {
		var err error
		if vm, err = g.api.VM(context.Background(), "g"); err != nil {
			return err
		}
		if p := vm.Runtime.DiskMove; vm.DiskMove == nil || p == nil || p.Copied == 0 {
			return fmt.Errorf("disk move %+v, progress %+v", vm.DiskMove, p)
		}
		return nil
	})
	return vm
}

// waitMoveEnded waits until the VM's disk move ended and returns the VM.
func (g *guestVM) waitMoveEnded(t *testing.T, id uint64) admin.VM {
	t.Helper()
	var vm admin.VM
	testbin.WaitFor(t, 60*time.Second, "the disk move's end", func() error {
		var err error
		if vm, err = g.api.VM(context.Background(), "g"); err != nil {
			return err
		}
		if vm.DiskMove != nil || vm.LastDiskMove == nil || vm.LastDiskMove.ID != id {
			return fmt.Errorf("disk move %+v, last %+v", vm.DiskMove, vm.LastDiskMove)
		}
		return nil
	})
	return vm
}

// TestMoveDiskCancelAndCrash cancels an export mid-copy (the VM keeps its
// disk, the file the move created is removed), then kills the agent of
// the VM's host (kill -9) in the middle of an import and restarts it: the
// restarted agent finds QEMU's mirror and finishes or fails the move, the
// guest never stops running, and the disk the catalog names at the end
// holds every write the guest reported.
func TestMoveDiskCancelAndCrash(t *testing.T) {
	g, src := startFileGuest(t)
	c := g.c
	ctx := context.Background()

	// Cancel an export mid-copy.
	out1 := filepath.Join(t.TempDir(), "out.img")
	vm := g.waitCopying(t, "--to-file", out1)
	id := vm.DiskMove.ID
	if out, err := cli(t, c, 2, "vm", "move-disk", "g", "0", "--cancel"); err != nil || !strings.Contains(out, "Cancelled") {
		t.Fatalf("cancel: %v\n%s", err, out)
	}
	vm = g.waitMoveEnded(t, id)
	if r := vm.LastDiskMove; r.Result != "cancelled" || vm.Disks[0].Disk != "raw:"+src {
		t.Fatalf("after the cancel: last move %+v, disk %+v", r, vm.Disks[0])
	}
	testbin.WaitFor(t, 20*time.Second, "the cancelled move's file removed", func() error {
		if _, err := os.Stat(out1); !os.IsNotExist(err) {
			return fmt.Errorf("%s: %v", out1, err)
		}
		return nil
	})
	seq, _ := serialSeq(g.serial[0])
	g.writesOn(t, 0, seq)
	// Too late to cancel what is not moving.
	if out, err := cli(t, c, 2, "vm", "move-disk", "g", "0", "--cancel"); err == nil || !strings.Contains(out, "not moving") {
		t.Fatalf("cancel without a move: %v\n%s", err, out)
	}

	// Kill the VM host's agent in the middle of an import.
	if _, err := g.api.CreateVolume(ctx, admin.CreateVolume{Name: "g-disk", Size: moveDiskSize, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	vm = g.waitCopying(t, "--to-volume", "g-disk")
	id = vm.DiskMove.ID
	before, _ := serialSeq(g.serial[0])
	c.Kill(0)
	t.Logf("killed n1's agent mid-copy (phase %s, guest at seq %d, %d of %d bytes copied)", vm.DiskMove.Phase, before, vm.Runtime.DiskMove.Copied, vm.Runtime.DiskMove.Total)
	c.Start(0)
	vm = g.waitMoveEnded(t, id)
	r := vm.LastDiskMove
	t.Logf("after the restart: %s (%s), disk %s", r.Result, r.Error, vm.Disks[0].Disk)
	switch {
	case r.Result == "completed" && vm.Disks[0].Volume == "g-disk":
	case r.Result == "failed" && vm.Disks[0].Disk == "raw:"+src:
	default:
		t.Fatalf("after the restart: last move %+v, disk %+v", r, vm.Disks[0])
	}
	seq, _ = serialSeq(g.serial[0])
	g.writesOn(t, 0, seq)
	if n := boots(t, g.serial[0]); n != 1 {
		t.Fatalf("the guest booted %d times", n)
	}

	// Stop the VM and check the disk the catalog names.
	last, _ := serialSeq(g.serial[0])
	g.stop(t)
	path := src
	if vm.Disks[0].Volume == "g-disk" {
		path = filepath.Join(t.TempDir(), "vol.raw")
		testbin.Run(t, 60*time.Second, "nbdcopy", c.URI(2, "g-disk"), path)
	}
	res := checkImage(t, "the VM's disk", path, g.gc, last)
	t.Logf("the VM's disk (%s): %+v; the guest reported seq %d last", vm.Disks[0].Disk, res, last)
}

// TestMoveDiskFromNBD imports the disk of a running test guest that is an
// export of another NBD server (nbdkit serving the image file) into a
// volume while the guest writes, and checks the volume.
func TestMoveDiskFromNBD(t *testing.T) {
	testbin.Require(t, "nbdkit")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	var srv *exec.Cmd
	g, src := startExternalGuest(t, func(path string) string {
		srv = exec.Command("nbdkit", "-f", "-i", "127.0.0.1", "-p", port, "file", path)
		srv.Env = testbin.CleanEnv()
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
		testbin.WaitFor(t, 10*time.Second, "nbdkit listening", func() error {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				c.Close()
			}
			return err
		})
		return "nbd://" + addr + "/"
	})
	ctx := context.Background()
	if _, err := g.api.CreateVolume(ctx, admin.CreateVolume{Name: "g-disk", Size: moveDiskSize, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	before, _ := serialSeq(g.serial[0])
	vm := g.moveDisk(t, "0", "--to-volume", "g-disk")
	if d := vm.Disks[0]; d.Volume != "g-disk" {
		t.Fatalf("after the import: disk %+v", d)
	}
	r := vm.LastDiskMove
	t.Logf("import from %s: %d KiB copied in %v, pivot %v", r.From, r.Bytes>>10, r.Copy.Round(time.Millisecond), r.Pivot.Round(time.Millisecond))
	g.writesOn(t, 0, before)
	// The NBD server is no longer needed.
	srv.Process.Kill()
	srv.Wait()
	seq, _ := serialSeq(g.serial[0])
	g.writesOn(t, 0, seq)
	checkImage(t, "the old export's file", src, g.gc, before)
	if n := boots(t, g.serial[0]); n != 1 {
		t.Fatalf("the guest booted %d times", n)
	}
	last, _ := serialSeq(g.serial[0])
	res := g.checkDisk(t, last)
	t.Logf("the volume: %+v; the guest reported seq %d last", res, last)
}
