package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
	"github.com/tandem-project/tandem/internal/testguest"
)

// TestExportNamePassThrough starts QEMU (as a paused migration
// destination, so no guest runs) on a disk served by nbdkit's info plugin
// over a unix socket whose path has a comma: its content is the export
// name the client asked for, which QEMU reads back through the virtio-blk
// device.
func TestExportNamePassThrough(t *testing.T) {
	testbin.Require(t, "qemu-system-x86_64", "nbdkit")
	sock := filepath.Join(t.TempDir(), "nbd,kit.sock")
	nbdkit := exec.Command("nbdkit", "--foreground", "--exit-with-parent", "--unix", sock, "info", "mode=exportname")
	if err := nbdkit.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = nbdkit.Process.Kill()
		_ = nbdkit.Wait()
	})
	for i := 0; ; i++ {
		if _, err := testbin.RunErr(5*time.Second, "nbdinfo", "--size", "nbd+unix:///x?socket="+sock); err == nil {
			break
		} else if i == 200 {
			t.Fatalf("nbdkit not up: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	const export = "vol0@1234"
	p := start(t, Spec{Name: "names", MemoryMiB: 16, Incoming: true,
		Disks: []Disk{{Server: sock, Export: export, ReadOnly: true}}}, Options{})
	wantStatus(t, p, StateInMigrate)
	// qemu-io in HMP prints to QEMU's stdout, which is QEMULog.
	if err := p.QMP().Execute(testCtx(t, 10*time.Second), "human-monitor-command",
		map[string]string{"command-line": `qemu-io -d /machine/peripheral/vdisk0/virtio-backend "read -v 0 16"`}, nil); err != nil {
		t.Fatal(err)
	}
	out, err := os.ReadFile(p.QEMULog())
	if err != nil {
		t.Fatal(err)
	}
	hex := strings.TrimSpace(fmt.Sprintf("% x", export))
	if !strings.Contains(string(out), hex) {
		t.Fatalf("the disk does not read back the export name %q (%s):\n%s", export, hex, out)
	}
	if err := p.Stop(testCtx(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
}

// TestBootWriteStop boots the test guest from a tandem export, lets it make
// its writes, stops QEMU with quit and checks the disk.
func TestBootWriteStop(t *testing.T) {
	c := testguest.Config{RunID: 0x51A70001, Base: 8, Ring: 100, Writes: 300, ReportEvery: 50, CounterPages: 4}
	_, disk := tandemDisk(t, c)
	p := start(t, guestSpec("boot", disk), Options{})
	wantStatus(t, p, StateRunning)
	started := time.Now()
	l := waitLog(t, 20*time.Second, testguest.Log.Halted, p)
	if !l.Done || l.LastSeq != c.Writes || l.Boots != 1 {
		t.Fatalf("guest log %+v", l)
	}
	t.Logf("%d writes in %v", c.Writes, time.Since(started).Round(time.Millisecond))
	if got := counters(t, p, c); got.First != uint32(c.Writes) || got.Last != uint32(c.Writes) {
		t.Fatalf("counters %+v, want %d", got, c.Writes)
	}
	if err := p.Stop(testCtx(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(); err != nil {
		t.Fatalf("QEMU exit status after quit: %v", err)
	}
	if _, err := p.Status(testCtx(t, time.Second)); !errors.Is(err, ErrExited) {
		t.Fatalf("Status after exit: %v, want ErrExited", err)
	}
	res := checkDisk(t, disk, c)
	if want := (testguest.Result{Written: c.Ring, MinSeq: c.Writes - c.Ring + 1, MaxSeq: c.Writes}); res != want {
		t.Fatalf("Check = %+v, want %+v", res, want)
	}
}

// migrationGuest is the guest of the migration tests: it writes forever.
var migrationGuest = testguest.Config{Base: 8, Ring: 200, ReportEvery: 10, CounterPages: 16}

// migrateToPreSwitchover starts the guest on a tandem export, a migration
// destination on the same export, and migrates the guest until the source
// waits in pre-switchover. It returns both VMs and the guest's serial log
// at that point.
// stopped is the time of the source's STOP event (QEMU's clock).
func migrateToPreSwitchover(t *testing.T, c testguest.Config) (src, dst *Process, disk Disk, at testguest.Log, stopped time.Time) {
	t.Helper()
	_, disk = tandemDisk(t, c)
	src = start(t, guestSpec("src", disk), Options{})
	waitLog(t, 20*time.Second, func(l testguest.Log) bool { return l.LastSeq >= 50 }, src)

	dstSpec := guestSpec("dst", disk)
	dstSpec.Incoming = true
	dst = start(t, dstSpec, Options{})
	wantStatus(t, dst, StateInMigrate)
	uri, err := dst.MigrateIncoming(testCtx(t, 10*time.Second), "tcp:127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	events := src.QMP().Subscribe()
	defer events.Close()
	if err := src.Migrate(testCtx(t, 10*time.Second), uri, MigrateParams{}); err != nil {
		t.Fatal(err)
	}
	info, err := src.WaitMigration(testCtx(t, 60*time.Second), MigrationPreSwitchover)
	if err != nil {
		t.Fatal(err)
	}
	stop, err := events.Wait(testCtx(t, 10*time.Second), "STOP")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pre-switchover: %+v", info)
	wantStatus(t, src, StateFinishMigrate)
	wantStatus(t, dst, StateInMigrate)
	at, _ = guestLog(t, src)
	return src, dst, disk, at, stop.Time
}

// TestLiveMigration migrates the running guest between two QEMU processes
// on the same tandem export: the RAM the destination receives is the
// source's at pre-switchover, byte for byte; the guest goes on from there
// on the destination, and the disk holds every write of both.
func TestLiveMigration(t *testing.T) {
	c := migrationGuest
	c.RunID = 0x51A70002
	src, dst, disk, at, stopped := migrateToPreSwitchover(t, c)

	// The source is stopped: its RAM is what must arrive.
	region := counterRegion(t, src, c)
	before, err := testguest.CheckCounters(region, c)
	if err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	if err := src.MigrateContinue(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	srcInfo, err := src.WaitMigration(testCtx(t, 30*time.Second), MigrationCompleted)
	if err != nil {
		t.Fatal(err)
	}
	dstInfo, err := dst.WaitMigration(testCtx(t, 30*time.Second), MigrationCompleted)
	if err != nil {
		t.Fatal(err)
	}
	// QEMU reports the migration completed a moment before the source's
	// run state leaves finish-migrate.
	waitStatus(t, src, StatePostMigrate, 5*time.Second)
	wantStatus(t, dst, StatePaused) // late-block-activate and -S: waits for cont
	if got := counterRegion(t, dst, c); !bytes.Equal(got, region) {
		t.Fatalf("the destination's counter pages differ from the source's at pre-switchover")
	}
	resumed := dst.QMP().Subscribe()
	defer resumed.Close()
	if err := dst.Cont(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	handover := time.Since(paused)
	resume, err := resumed.Wait(testCtx(t, 10*time.Second), "RESUME")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("source: %s in %v, downtime %v (QEMU, includes pre-switchover), setup %v, %d passes, %d of %d bytes sent",
		srcInfo.State, srcInfo.TotalTime, srcInfo.Downtime, srcInfo.SetupTime, srcInfo.Passes, srcInfo.Transferred, srcInfo.Total)
	t.Logf("guest stopped %v (source STOP to destination RESUME), of which %v from migrate-continue to cont",
		resume.Time.Sub(stopped).Round(time.Millisecond), handover.Round(time.Millisecond))
	t.Logf("destination: %+v", dstInfo)

	// The guest goes on on the destination: its serial output continues the
	// source's, its counters grow.
	wantStatus(t, dst, StateRunning)
	// The guest writes on after the migration: 100 more writes, and at
	// least a whole ring (the disk check wants every slot written).
	l := waitLog(t, 20*time.Second, func(l testguest.Log) bool {
		return l.LastSeq >= at.LastSeq+100 && l.LastSeq > c.Ring
	}, src, dst)
	if l.Boots != 1 {
		t.Fatalf("guest log %+v: the guest rebooted", l)
	}
	if err := src.Stop(testCtx(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := dst.Pause(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	after := counters(t, dst, c)
	seq := seqInRAM(t, dst)
	if after.Last < uint32(l.LastSeq) || after.Last <= before.First {
		t.Fatalf("counters %+v at pre-switchover, %+v at the end", before, after)
	}
	if err := dst.Stop(testCtx(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	res := checkDisk(t, disk, c)
	if res.MaxSeq < uint64(after.First) || res.MaxSeq > seq || res.Written != c.Ring {
		t.Fatalf("Check = %+v; the guest completed %d writes and was at seq %d", res, after.First, seq)
	}
	t.Logf("disk: %+v; counters %+v before, %+v after the migration", res, before, after)
}

// TestMigrationCancel cancels a migration at pre-switchover: the
// destination gives up and exits, the source keeps its disk and goes on
// writing.
func TestMigrationCancel(t *testing.T) {
	c := migrationGuest
	c.RunID = 0x51A70003
	src, dst, disk, at, _ := migrateToPreSwitchover(t, c)
	if err := src.MigrateCancel(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	info, err := src.WaitMigration(testCtx(t, 30*time.Second), MigrationCancelled)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("source after cancel: %+v", info)
	select {
	case <-dst.Done():
		t.Logf("destination exited: %v", dst.Err())
	case <-time.After(20 * time.Second):
		t.Fatal("the destination did not exit after the cancelled migration")
	}
	if _, err := dst.WaitMigration(testCtx(t, 5*time.Second), MigrationCompleted); !errors.Is(err, ErrExited) {
		t.Fatalf("WaitMigration on the exited destination: %v, want ErrExited", err)
	}
	st, err := src.Status(testCtx(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("source state after cancel: %s", st)
	if st != StateRunning {
		if err := src.Cont(testCtx(t, 10*time.Second)); err != nil {
			t.Fatalf("cont after cancel (state %s): %v", st, err)
		}
	}
	l := waitLog(t, 20*time.Second, func(l testguest.Log) bool { return l.LastSeq >= at.LastSeq+100 }, src)
	if err := src.Pause(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	after := counters(t, src, c)
	seq := seqInRAM(t, src)
	if err := src.Stop(testCtx(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	res := checkDisk(t, disk, c)
	if res.MaxSeq < uint64(after.First) || res.MaxSeq > seq || after.Last < uint32(l.LastSeq) {
		t.Fatalf("Check = %+v; the guest completed %d writes, was at seq %d, reported %d", res, after.First, seq, l.LastSeq)
	}
}

// TestResumeAfterStorageOutage kills the tandem agent under a running
// guest: once QEMU's NBD client gives up reconnecting, the failed write
// pauses the VM (io-error); when the agent is back on the same data and
// address, the supervisor resumes the VM, which goes on writing, and no
// acknowledged write is lost. Without a StorageReady hook the supervisor
// retries cont with backoff; with one, it waits for the hook's word.
func TestResumeAfterStorageOutage(t *testing.T) {
	for i, hook := range []bool{false, true} {
		t.Run(fmt.Sprintf("StorageReady=%v", hook), func(t *testing.T) {
			c := testguest.Config{RunID: 0x51A70004 + uint32(i), Base: 8, Ring: 200, ReportEvery: 10, CounterPages: 4}
			agent, disk := tandemDisk(t, c)
			spec := guestSpec("outage", disk)
			spec.ReconnectDelay = time.Second
			logs, logger := newTestLog(t)
			opts := Options{Logger: logger}
			var agentUp atomic.Bool
			var asked atomic.Int32
			agentUp.Store(true)
			if hook {
				opts.StorageReady = func(ctx context.Context) error {
					asked.Add(1)
					if !agentUp.Load() {
						return errors.New("the agent is down")
					}
					return nil
				}
			}
			p := start(t, spec, opts)
			waitLog(t, 20*time.Second, func(l testguest.Log) bool { return l.LastSeq >= 30 }, p)

			events := p.QMP().Subscribe()
			defer events.Close()
			agentUp.Store(false)
			agent.Kill()
			down := time.Now()
			ev, err := events.Wait(testCtx(t, 30*time.Second), "BLOCK_IO_ERROR")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%v after the kill: %s %s", time.Since(down).Round(time.Millisecond), ev.Name, ev.Data)
			waitStatus(t, p, StateIOError, 10*time.Second)
			at, _ := guestLog(t, p)

			// The supervisor keeps trying while the agent is down; the VM
			// stays paused (a cont may make it run for the moment it takes
			// the retried write to fail again).
			time.Sleep(time.Second)
			waitStatus(t, p, StateIOError, 5*time.Second)
			if l, _ := guestLog(t, p); l.LastSeq != at.LastSeq {
				t.Fatalf("the guest went on writing without its disk: %+v, then %+v", at, l)
			}
			if hook {
				if asked.Load() == 0 {
					t.Fatal("the supervisor did not ask StorageReady")
				}
				if strings.Contains(logs.String(), "disk error again after cont") {
					t.Fatal("the supervisor sent cont while StorageReady said no")
				}
			}
			agent = restartAgent(t, agent)
			agentUp.Store(true)
			back := time.Now()
			if _, err := events.Wait(testCtx(t, 60*time.Second), "RESUME"); err != nil {
				t.Fatal(err)
			}
			l := waitLog(t, 30*time.Second, func(l testguest.Log) bool { return l.LastSeq >= at.LastSeq+50 }, p)
			t.Logf("writing again %v after the agent came back (%v after it died)",
				time.Since(back).Round(time.Millisecond), time.Since(down).Round(time.Millisecond))
			// The supervisor declares success once no new error came for
			// its current backoff delay (at most 2 s).
			for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), "VM resumed after a disk error"); {
				if time.Now().After(deadline) {
					t.Fatal("the supervisor did not log the resume")
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err := p.Pause(testCtx(t, 10*time.Second)); err != nil {
				t.Fatal(err)
			}
			after := counters(t, p, c)
			seq := seqInRAM(t, p)
			if err := p.Stop(testCtx(t, 20*time.Second)); err != nil {
				t.Fatal(err)
			}
			res := checkDisk(t, Disk{Server: agent.NBDAddr, Export: disk.Export}, c)
			if res.MaxSeq < uint64(after.First) || res.MaxSeq > seq || after.Last < uint32(l.LastSeq) {
				t.Fatalf("Check = %+v; the guest completed %d writes, was at seq %d, reported %d", res, after.First, seq, l.LastSeq)
			}
		})
	}
}

// TestStopKillsAHungQEMU: a QEMU that does not exit after quit (stopped
// with SIGSTOP here) is killed once StopTimeout has passed. The VM has no
// disk: QEMU runs the firmware only.
func TestStopKillsAHungQEMU(t *testing.T) {
	testbin.Require(t, "qemu-system-x86_64")
	p := start(t, Spec{Name: "hung", MemoryMiB: 16}, Options{StopTimeout: 300 * time.Millisecond})
	wantStatus(t, p, StateRunning)
	if _, err := Start(testCtx(t, 10*time.Second), Spec{Name: "twin"}, p.Dir(), Options{}); !errors.Is(err, ErrDirInUse) {
		t.Fatalf("a second QEMU in the same run directory: %v, want ErrDirInUse", err)
	}
	if err := syscall.Kill(p.PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := p.Stop(testCtx(t, 10*time.Second))
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Stop of a hung QEMU: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Stop took %v", d)
	}
	var exit *exec.ExitError
	if err := p.Wait(); !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("exit status %v, want killed by SIGKILL", err)
	}
	if p.Err() == nil {
		t.Fatal("Err is nil after exit")
	}
}
