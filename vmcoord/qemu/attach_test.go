package qemu

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testguest"
	"github.com/tandem-project/tandem/vmcoord/pidfile"
)

// TestAttach lets go of a running guest as a crashed supervisor would (its
// QMP connection closed, QEMU left running), attaches to it again, and
// checks that the guest ran on without a reboot, that the attached
// Process answers and stops it, and notices its exit.
func TestAttach(t *testing.T) {
	c := testguest.Config{RunID: 0x51A70007, Base: 8, Ring: 100, ReportEvery: 10, CounterPages: 4}
	_, disk := tandemDisk(t, c)
	spec := guestSpec("attach", disk)
	p := start(t, spec, Options{})
	// QEMU recorded its pid itself (nobody else writes it in this package).
	if pid := pidfile.Live(p.Dir()); pid != p.PID() {
		t.Fatalf("pid file names %d, QEMU is %d", pid, p.PID())
	}
	before := waitLog(t, 20*time.Second, func(l testguest.Log) bool { return l.LastSeq >= 20 }, p)

	// The old supervisor goes away; QEMU stays.
	p.stopSupervisor()
	<-p.supervisorDone
	p.qmp.Close()

	_, log := newTestLog(t)
	a, err := Attach(testCtx(t, 20*time.Second), spec, p.Dir(), p.PID(), Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, a, StateRunning)
	l := waitLog(t, 20*time.Second, func(l testguest.Log) bool { return l.LastSeq > before.LastSeq+20 }, a)
	if l.Boots != 1 {
		t.Fatalf("the guest booted %d times", l.Boots)
	}
	if _, err := Attach(testCtx(t, time.Second), spec, p.Dir(), p.PID(), Options{}); err == nil {
		t.Fatal("a second Attach succeeded while the first holds QMP")
	}
	if err := a.Stop(testCtx(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the attached process's exit went unnoticed")
	}
	if _, err := a.Status(testCtx(t, time.Second)); !errors.Is(err, ErrExited) {
		t.Fatalf("Status after exit: %v, want ErrExited", err)
	}
	if _, err := Attach(testCtx(t, time.Second), spec, p.Dir(), p.PID(), Options{}); err == nil {
		t.Fatal("attached to an exited process")
	}
}

// TestAttachResumesPausedVM: the supervisor goes away (its agent died),
// then the storage too, for longer than the disk's reconnect-delay, so a
// disk error pauses the VM with nobody to resume it. Attached again once
// the storage is back, the new supervisor finds the VM paused by a disk
// error, which sends no event any more, and resumes it; the guest writes
// on without a reboot.
func TestAttachResumesPausedVM(t *testing.T) {
	c := testguest.Config{RunID: 0x51A70008, Base: 8, Ring: 100, ReportEvery: 10, CounterPages: 4}
	agent, disk := tandemDisk(t, c)
	spec := guestSpec("attach-paused", disk)
	spec.ReconnectDelay = time.Second
	p := start(t, spec, Options{})
	waitLog(t, 20*time.Second, func(l testguest.Log) bool { return l.LastSeq >= 20 }, p)

	p.stopSupervisor()
	<-p.supervisorDone
	events := p.QMP().Subscribe()
	agent.Kill()
	if _, err := events.Wait(testCtx(t, 30*time.Second), "BLOCK_IO_ERROR"); err != nil {
		t.Fatal(err)
	}
	events.Close()
	waitStatus(t, p, StateIOError, 10*time.Second)
	at, _ := guestLog(t, p)
	p.qmp.Close()

	restartAgent(t, agent)
	logs, log := newTestLog(t)
	a, err := Attach(testCtx(t, 20*time.Second), spec, p.Dir(), p.PID(), Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, a, StateRunning, 20*time.Second)
	l := waitLog(t, 30*time.Second, func(l testguest.Log) bool { return l.LastSeq >= at.LastSeq+20 }, a)
	if l.Boots != 1 {
		t.Fatalf("the guest booted %d times", l.Boots)
	}
	if !strings.Contains(logs.String(), "VM found paused by a disk error") {
		t.Errorf("the supervisor did not say it found the VM paused:\n%s", logs.String())
	}
	if err := a.Stop(testCtx(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
}
