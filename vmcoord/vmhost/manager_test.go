package vmhost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/vmcoord/qemu"
)

// fakeProc is a Process that runs until stopped or crashed.
type fakeProc struct {
	spec Spec
	pid  int
	done chan struct{}
	once sync.Once
	err  error
}

func (p *fakeProc) Status(context.Context) (string, error) { return "running", nil }
func (p *fakeProc) Stop(context.Context) error             { p.exit(nil); return nil }
func (p *fakeProc) Done() <-chan struct{}                  { return p.done }
func (p *fakeProc) Err() error                             { <-p.done; return p.err }
func (p *fakeProc) PID() int                               { return p.pid }
func (p *fakeProc) QMPSocket() string                      { return p.spec.Dir + "/qmp.sock" }
func (p *fakeProc) SerialLog() string                      { return p.spec.Dir + "/serial.log" }
func (p *fakeProc) exit(err error)                         { p.once.Do(func() { p.err = err; close(p.done) }) }
func (p *fakeProc) Cont(context.Context) error             { return nil }

// The fake does not migrate: the migration path is tested with real QEMU
// (e2e/vm).
var errNoMigration = errors.New("fake: no migration")

func (p *fakeProc) Migrate(context.Context, string, qemu.MigrateParams) error { return errNoMigration }
func (p *fakeProc) MigrationStatus(context.Context) (qemu.MigrationInfo, error) {
	return qemu.MigrationInfo{}, errNoMigration
}
func (p *fakeProc) WaitMigration(context.Context, ...qemu.MigrationState) (qemu.MigrationInfo, error) {
	return qemu.MigrationInfo{}, errNoMigration
}
func (p *fakeProc) MigrateContinue(context.Context) error { return errNoMigration }
func (p *fakeProc) MigrateCancel(context.Context) error   { return errNoMigration }
func (p *fakeProc) MigrateIncoming(context.Context, string) (string, error) {
	return "", errNoMigration
}

// fakeLauncher records launches; fail makes the next launches fail.
type fakeLauncher struct {
	mu    sync.Mutex
	procs []*fakeProc
	fail  error
}

func (l *fakeLauncher) Launch(_ context.Context, s Spec) (Process, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail != nil {
		return nil, l.fail
	}
	p := &fakeProc{spec: s, pid: 1000 + len(l.procs), done: make(chan struct{})}
	l.procs = append(l.procs, p)
	return p, nil
}

// launched returns the processes launched so far.
func (l *fakeLauncher) launched() []*fakeProc {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*fakeProc(nil), l.procs...)
}

func (l *fakeLauncher) Adopt(context.Context, Spec) (Process, error) { return nil, nil }

// live returns the specs of the processes not exited.
func (l *fakeLauncher) live() []Spec {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Spec
	for _, p := range l.procs {
		select {
		case <-p.done:
		default:
			out = append(out, p.spec)
		}
	}
	return out
}

func waitUntil(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// liveIs checks that exactly the given VM:epoch pairs run.
func liveIs(l *fakeLauncher, want ...string) func() error {
	return func() error {
		var got []string
		for _, s := range l.live() {
			got = append(got, fmt.Sprintf("%s:%d", s.Name, s.Epoch))
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("running %v, want %v", got, want)
		}
		return nil
	}
}

func catalogWith(vms ...*catalog.VM) *catalog.State {
	st := catalog.New()
	for _, vm := range vms {
		st.VMs[vm.Name] = vm
	}
	return st
}

func TestManagerFollowsTheCatalog(t *testing.T) {
	l := &fakeLauncher{}
	m := New(Config{Host: "n1", Dir: t.TempDir(), NBDAddr: "127.0.0.1:10809", Launcher: l, Log: slog.New(slog.DiscardHandler), RestartDelay: 10 * time.Millisecond})
	defer m.Close()
	vm := func(host, state string, epoch uint64) *catalog.VM {
		return &catalog.VM{Name: "vm1", VCPUs: 1, MemoryMiB: 64, Disks: []string{"d1", "d2"}, Host: host, State: state, Epoch: epoch}
	}
	// Not ours, or not running: nothing runs.
	m.Reconcile(catalogWith(vm("n2", catalog.VMRunning, 5)))
	m.Reconcile(catalogWith(vm("n1", catalog.VMStopped, 0)))
	waitUntil(t, "nothing runs", liveIs(l))

	m.Reconcile(catalogWith(vm("n1", catalog.VMRunning, 7)))
	waitUntil(t, "vm1 runs under epoch 7", liveIs(l, "vm1:7"))
	s := l.live()[0]
	if len(s.Disks) != 2 || s.Disks[0].Export != "d1@7" || s.Disks[1].Export != "d2@7" || s.NBDAddr != "127.0.0.1:10809" {
		t.Fatalf("launched with %+v", s)
	}
	// The same state again changes nothing.
	m.Reconcile(catalogWith(vm("n1", catalog.VMRunning, 7)))
	time.Sleep(20 * time.Millisecond)
	if n := len(l.launched()); n != 1 {
		t.Fatalf("%d launches, want 1", n)
	}
	waitUntil(t, "reported running", func() error {
		lv := m.Local()
		if len(lv) != 1 || lv[0].Epoch != 7 || lv[0].PID != 1000 {
			return fmt.Errorf("local %+v", lv)
		}
		return nil
	})

	// A crash: started again after the delay.
	l.launched()[0].exit(errors.New("killed"))
	waitUntil(t, "vm1 restarted", func() error {
		if n := len(l.launched()); n != 2 {
			return fmt.Errorf("%d launches", n)
		}
		return liveIs(l, "vm1:7")()
	})

	// A new epoch (stopped and started again meanwhile): the old process
	// stops before the new one starts.
	m.Reconcile(catalogWith(vm("n1", catalog.VMRunning, 9)))
	waitUntil(t, "vm1 runs under epoch 9 only", liveIs(l, "vm1:9"))

	// Moved away: stopped, and forgotten.
	m.Reconcile(catalogWith(vm("n2", catalog.VMRunning, 11)))
	waitUntil(t, "nothing runs", liveIs(l))
	waitUntil(t, "forgotten", func() error {
		m.Reconcile(catalogWith(vm("n2", catalog.VMRunning, 11)))
		if lv := m.Local(); len(lv) != 0 {
			return fmt.Errorf("local %+v", lv)
		}
		return nil
	})
}

func TestManagerReportsLaunchFailures(t *testing.T) {
	l := &fakeLauncher{fail: errors.New("no qemu here")}
	m := New(Config{Host: "n1", Dir: t.TempDir(), Launcher: l, Log: slog.New(slog.DiscardHandler), RestartDelay: 10 * time.Millisecond})
	defer m.Close()
	m.Reconcile(catalogWith(&catalog.VM{Name: "vm1", Disks: []string{"d1"}, Host: "n1", State: catalog.VMRunning, Epoch: 3}))
	waitUntil(t, "the failure reported", func() error {
		lv := m.Local()
		if len(lv) != 1 || lv[0].State != admin.VMAbsent || lv[0].Error != "starting QEMU: no qemu here" {
			return fmt.Errorf("local %+v", lv)
		}
		return nil
	})
	l.mu.Lock()
	l.fail = nil
	l.mu.Unlock()
	waitUntil(t, "started once QEMU can start", liveIs(l, "vm1:3"))
}

func TestBackoff(t *testing.T) {
	m := New(Config{RestartDelay: 2 * time.Second})
	for n, want := range map[int]time.Duration{1: 2 * time.Second, 2: 4 * time.Second, 3: 8 * time.Second, 6: time.Minute, 100: time.Minute} {
		if got := m.backoff(n); got != want {
			t.Errorf("backoff(%d) = %v, want %v", n, got, want)
		}
	}
}

// TestManagerWaitsForExports checks that a VM is launched only once the
// local agent serves its disks' exports (a restarted agent opens its
// volumes while the catalog already places VMs on it), and reports
// "launching" meanwhile.
func TestManagerWaitsForExports(t *testing.T) {
	l := &fakeLauncher{}
	var mu sync.Mutex
	served := map[string]bool{"d1@3": true}
	ready := func(name string) bool { mu.Lock(); defer mu.Unlock(); return served[name] }
	m := New(Config{Host: "n1", Dir: t.TempDir(), Launcher: l, Log: slog.New(slog.DiscardHandler), ExportReady: ready})
	defer m.Close()
	m.Reconcile(catalogWith(&catalog.VM{Name: "vm1", Disks: []string{"d1", "d2"}, Host: "n1", State: catalog.VMRunning, Epoch: 3}))
	waitUntil(t, "launching", func() error {
		if lv := m.Local(); len(lv) != 1 || lv[0].State != admin.VMLaunching {
			return fmt.Errorf("local %+v", lv)
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond)
	if n := len(l.launched()); n != 0 {
		t.Fatalf("launched %d times before d2@3 was served", n)
	}
	mu.Lock()
	served["d2@3"] = true
	mu.Unlock()
	waitUntil(t, "started once its exports are served", liveIs(l, "vm1:3"))
}

// TestManagerStopWaitsForDetach checks that a stopped VM is reported gone
// only once the local agent has closed its disks' connections (QEMU's
// sockets close when it exits; the agent notices a moment later).
func TestManagerStopWaitsForDetach(t *testing.T) {
	l := &fakeLauncher{}
	var mu sync.Mutex
	open := map[uint64]bool{}
	attached := func(epoch uint64) bool { mu.Lock(); defer mu.Unlock(); return open[epoch] }
	m := New(Config{Host: "n1", Dir: t.TempDir(), Launcher: l, Log: slog.New(slog.DiscardHandler), WriterAttached: attached})
	defer m.Close()
	vm := &catalog.VM{Name: "vm1", Disks: []string{"d1"}, Host: "n1", State: catalog.VMRunning, Epoch: 3}
	m.Reconcile(catalogWith(vm))
	waitUntil(t, "running", liveIs(l, "vm1:3"))
	mu.Lock()
	open[3], open[2] = true, true // epoch 2: another run's connection
	mu.Unlock()

	stopped := *vm
	stopped.State, stopped.Epoch = catalog.VMStopped, 0
	m.Reconcile(catalogWith(&stopped))
	waitUntil(t, "QEMU stopped", liveIs(l))
	time.Sleep(100 * time.Millisecond)
	if lv := m.Local(); len(lv) != 1 || lv[0].State == admin.VMAbsent || lv[0].Epoch != 3 {
		t.Fatalf("with its disk still attached the VM is reported %+v", lv)
	}
	mu.Lock()
	open[3] = false
	mu.Unlock()
	waitUntil(t, "reported gone once detached", func() error {
		for _, lv := range m.Local() {
			if lv.State != admin.VMAbsent {
				return fmt.Errorf("local %+v", lv)
			}
		}
		return nil
	})
}

// TestManagerReportsStartAtOnce: once Reconcile has returned, a VM started
// on this host is reported launching (not absent, which a stop waiting for
// QEMU to be gone would take for done), and Reconciled says how far the
// catalog was acted on.
func TestManagerReportsStartAtOnce(t *testing.T) {
	l := &fakeLauncher{}
	ready := func(string) bool { return false } // the launch waits for its export
	m := New(Config{Host: "n1", Dir: t.TempDir(), Launcher: l, Log: slog.New(slog.DiscardHandler), ExportReady: ready})
	defer m.Close()
	vm := &catalog.VM{Name: "vm1", Disks: []string{"d1"}, Host: "n1", State: catalog.VMRunning, Epoch: 3}
	st := catalogWith(vm)
	st.Index = 41
	m.Reconcile(st)
	if lv := m.Local(); len(lv) != 1 || lv[0].State != admin.VMLaunching {
		t.Fatalf("right after the start: %+v", lv)
	}
	if got := m.Reconciled(); got != 41 {
		t.Fatalf("Reconciled %d, want 41", got)
	}
	stopped := *vm
	stopped.State, stopped.Epoch = catalog.VMStopped, 0
	st = catalogWith(&stopped)
	st.Index = 42
	m.Reconcile(st)
	if got := m.Reconciled(); got != 42 {
		t.Fatalf("Reconciled %d, want 42", got)
	}
	waitUntil(t, "absent once its launch gave up", func() error {
		for _, lv := range m.Local() {
			if lv.State != admin.VMAbsent {
				return fmt.Errorf("local %+v", lv)
			}
		}
		return nil
	})
}
