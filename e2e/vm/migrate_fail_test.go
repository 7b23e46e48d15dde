package vm

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/testbin"
)

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// migrationEnd waits until the VM has no migration under way and returns
// it.
func (g *guestVM) migrationEnd(t *testing.T) admin.VM {
	t.Helper()
	var vm admin.VM
	testbin.WaitFor(t, 60*time.Second, "the migration's end", func() error {
		var err error
		if vm, err = g.api.VM(context.Background(), "g"); err != nil {
			return err
		}
		if vm.Migration != nil {
			return fmt.Errorf("migration in phase %s", vm.Migration.Phase)
		}
		return nil
	})
	return vm
}

// copying starts a slow migration to host to and waits until QEMU copies
// the VM's memory.
func (g *guestVM) copying(t *testing.T, to int) {
	t.Helper()
	out, err := cli(t, g.c, 2, "vm", "migrate", "g", "--to", g.c.Nodes[to].Name, "--max-bandwidth", "128K", "--no-wait")
	if err != nil {
		t.Fatalf("tandem vm migrate: %v\n%s", err, out)
	}
	testbin.WaitFor(t, 30*time.Second, "the migration copying memory", func() error {
		vm, err := g.api.VM(context.Background(), "g")
		if err != nil {
			return err
		}
		if m, p := vm.Migration, vm.Runtime.Migration; m == nil || m.Phase != "ready" || p == nil || p.Status != "active" || p.Transferred == 0 {
			return fmt.Errorf("migration %+v, progress %+v", m, p)
		}
		return nil
	})
}

// TestMigrationFailures interrupts migrations of a running guest and
// checks that each ends with exactly one QEMU running the VM, on the host
// the catalog names, writing its disk under that host's epoch, and at the
// end that no write the guest completed was lost:
//   - the agent of the VM's host restarted: it adopts the running QEMU;
//   - cancelled before the switchover: the VM stays on the source;
//   - the destination's QEMU killed while copying: the same;
//   - the source's agent killed after the switchover: the VM runs on the
//     destination, and the restarted source agent runs nothing.
func TestMigrationFailures(t *testing.T) {
	testbin.Require(t, "qemu-system-x86_64", "nbdcopy", "qemu-io")
	g := startGuestVM(t)
	ctx := context.Background()
	start, err := g.api.VM(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}

	t.Run("agent restarted: the VM runs on", func(t *testing.T) {
		lv, err := localVMs(g.c, 0)
		if err != nil || len(lv) != 1 || lv[0].PID == 0 {
			t.Fatalf("n1's VMs: %+v, %v", lv, err)
		}
		pid := lv[0].PID
		before, _ := serialSeq(g.serial[0])
		g.c.Kill(0)
		g.c.Start(0)
		testbin.WaitFor(t, 30*time.Second, "the restarted agent reporting the same QEMU", func() error {
			lv, err := localVMs(g.c, 0)
			if err != nil {
				return err
			}
			if len(lv) != 1 || lv[0].PID != pid || lv[0].State != "running" {
				return fmt.Errorf("n1's VMs: %+v, want pid %d running", lv, pid)
			}
			return nil
		})
		// The guest did not reboot (one START in its log) and writes on.
		g.writesOn(t, 0, before)
		if n := strings.Count(readFile(t, g.serial[0]), "TANDEM-GUEST START"); n != 1 {
			t.Fatalf("the guest started %d times", n)
		}
	})

	t.Run("cancel", func(t *testing.T) {
		g.copying(t, 1)
		out, err := cli(t, g.c, 0, "vm", "migrate", "g", "--cancel")
		if err != nil {
			t.Fatalf("tandem vm migrate --cancel: %v\n%s", err, out)
		}
		vm := g.migrationEnd(t)
		if r := vm.LastMigration; r == nil || r.Result != "cancelled" || vm.Host != "n1" || vm.Epoch != start.Epoch || vm.Disks[0].WriterEpoch != start.Epoch {
			t.Fatalf("after the cancel: VM on %s epoch %d, disk writer %d, last migration %+v; want n1, epoch %d", vm.Host, vm.Epoch, vm.Disks[0].WriterEpoch, r, start.Epoch)
		}
		g.runsOn(t, 0, "running")
		s, _ := serialSeq(g.serial[0])
		g.writesOn(t, 0, s)
	})

	t.Run("destination QEMU killed", func(t *testing.T) {
		g.copying(t, 1)
		lv, err := localVMs(g.c, 1)
		if err != nil || len(lv) != 1 || lv[0].PID == 0 {
			t.Fatalf("the destination's VMs: %+v, %v", lv, err)
		}
		if err := syscall.Kill(lv[0].PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		vm := g.migrationEnd(t)
		if r := vm.LastMigration; r == nil || r.Result != "failed" || vm.Host != "n1" || vm.Disks[0].WriterEpoch != start.Epoch {
			t.Fatalf("after the destination died: VM on %s, disk writer %d, last migration %+v; want n1 and writer %d", vm.Host, vm.Disks[0].WriterEpoch, r, start.Epoch)
		}
		t.Logf("the migration failed: %s", vm.LastMigration.Error)
		g.runsOn(t, 0, "running")
		s, _ := serialSeq(g.serial[0])
		g.writesOn(t, 0, s)
	})

	t.Run("source agent killed after the switchover", func(t *testing.T) {
		before, _ := serialSeq(g.serial[0])
		vm := g.migrate(t, 1)
		if r := vm.LastMigration; r == nil || r.Result != "completed" {
			t.Fatalf("migration: %+v", r)
		}
		g.c.Kill(0)
		g.writesOn(t, 1, before)
		g.c.Start(0)
		g.runsOn(t, 1, "running")
		vm, err := g.api.VM(ctx, "g")
		if err != nil || vm.Host != "n2" {
			t.Fatalf("after the source agent's restart: VM %+v, %v", vm, err)
		}
		g.refusesEpoch(t, 0, start.Epoch)
		s, _ := serialSeq(g.serial[1])
		g.writesOn(t, 1, s)
	})

	last, _ := serialSeq(g.serial[1])
	res := g.checkDisk(t, last)
	t.Logf("disk: %+v; the guest reported seq %d last", res, last)
}
