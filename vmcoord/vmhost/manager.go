package vmhost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/volume"
)

// Disk is one disk of a VM to launch: an NBD export on the local agent.
type Disk struct {
	// Volume is the volume's name; Export the NBD export name QEMU opens
	// (the volume under the run's writer epoch).
	Volume string
	Export string
}

// Spec is what a Launcher needs to start one QEMU process for a VM.
type Spec struct {
	Name      string
	VCPUs     int
	MemoryMiB int
	// NBDAddr is the local agent's NBD address (host:port).
	NBDAddr string
	Disks   []Disk
	Boot    catalog.Boot
	// Epoch is the writer epoch the disks are opened under.
	Epoch uint64
	// Dir is the run's directory: QMP socket, serial log.
	Dir string
}

// Process is one running QEMU.
type Process interface {
	// Status returns QEMU's run state (query-status: running, paused,
	// io-error, ...).
	Status(ctx context.Context) (string, error)
	// Stop asks QEMU to quit and kills it if it has not exited in time.
	Stop(ctx context.Context) error
	// Done is closed when the process has exited; Err then says how.
	Done() <-chan struct{}
	Err() error
	PID() int
	QMPSocket() string
	SerialLog() string
}

// Launcher starts QEMU processes.
type Launcher interface {
	Launch(ctx context.Context, spec Spec) (Process, error)
}

// Config configures a Manager.
type Config struct {
	// Host is this host's name in the catalog.
	Host string
	// Dir holds one directory per VM run.
	Dir string
	// NBDAddr is the local agent's NBD address, which QEMU connects to.
	NBDAddr  string
	Launcher Launcher
	Log      *slog.Logger
	// RestartDelay is the pause before a VM whose QEMU died is started
	// again (default 2 s).
	RestartDelay time.Duration
}

// Manager runs this host's VMs. Its methods may be called concurrently.
type Manager struct {
	cfg Config

	mu   sync.Mutex
	runs map[string]*run
	wg   sync.WaitGroup
	stop chan struct{}
	done bool
}

// New returns a Manager; it does nothing before the first Reconcile.
func New(cfg Config) *Manager {
	if cfg.RestartDelay == 0 {
		cfg.RestartDelay = 2 * time.Second
	}
	return &Manager{cfg: cfg, runs: map[string]*run{}, stop: make(chan struct{})}
}

// want is what the catalog wants of one VM on this host.
type want struct {
	spec Spec
	run  bool
}

// run is one VM's supervisor: a goroutine that keeps a QEMU process in
// line with the latest want.
type run struct {
	name   string
	notify chan struct{}

	mu      sync.Mutex
	want    want
	proc    Process
	epoch   uint64
	state   string
	started time.Time
	err     string
	exited  bool // the goroutine ended (the VM left this host)
}

// Reconcile makes this host run exactly the VMs st places here: those in
// state running whose Host is this host.
func (m *Manager) Reconcile(st *catalog.State) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done {
		return
	}
	seen := map[string]bool{}
	for _, name := range st.VMNames() {
		vm := st.VMs[name]
		if vm.Host != m.cfg.Host || vm.State != catalog.VMRunning {
			continue
		}
		seen[name] = true
		m.set(name, want{spec: m.spec(vm), run: true})
	}
	for name := range m.runs {
		if !seen[name] {
			m.set(name, want{})
		}
	}
}

// spec returns the launch spec of vm's current run.
func (m *Manager) spec(vm *catalog.VM) Spec {
	s := Spec{Name: vm.Name, VCPUs: vm.VCPUs, MemoryMiB: vm.MemoryMiB, NBDAddr: m.cfg.NBDAddr, Boot: vm.Boot, Epoch: vm.Epoch,
		Dir: filepath.Join(m.cfg.Dir, vm.Name)}
	for _, d := range vm.Disks {
		s.Disks = append(s.Disks, Disk{Volume: d, Export: volume.WriterExport(d, vm.Epoch)})
	}
	return s
}

// set records w for VM name, starting its supervisor if needed; m.mu is
// held.
func (m *Manager) set(name string, w want) {
	r := m.runs[name]
	if r == nil || r.isExited() {
		if !w.run {
			delete(m.runs, name)
			return
		}
		// want is set before the supervisor starts: it must not see an
		// empty want and end at once.
		r = &run{name: name, notify: make(chan struct{}, 1), state: admin.VMAbsent, want: w}
		m.runs[name] = r
		m.wg.Add(1)
		go m.supervise(r)
		return
	}
	r.mu.Lock()
	changed := r.want.run != w.run || !slices.Equal(r.want.spec.Disks, w.spec.Disks) || r.want.spec.Epoch != w.spec.Epoch
	r.want = w
	r.mu.Unlock()
	if changed {
		select {
		case r.notify <- struct{}{}:
		default:
		}
	}
}

func (r *run) isExited() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.exited
}

// supervise keeps r's process in line with r.want until the VM leaves
// this host (or the Manager closes, which leaves QEMU running).
func (m *Manager) supervise(r *run) {
	defer m.wg.Done()
	log := m.cfg.Log.With("vm", r.name)
	poll := time.NewTicker(time.Second)
	defer poll.Stop()
	var retryAt time.Time
	for {
		r.mu.Lock()
		w, p := r.want, r.proc
		r.mu.Unlock()
		switch {
		case p != nil && (!w.run || r.epoch != w.spec.Epoch):
			// Stopped, moved away, or restarted under a new epoch.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := p.Stop(ctx)
			cancel()
			log.Info("VM stopped", "epoch", r.epoch, "err", err)
			r.mu.Lock()
			r.proc, r.state = nil, admin.VMAbsent
			if err != nil {
				r.err = fmt.Sprintf("stopping QEMU: %v", err)
			}
			r.mu.Unlock()
			continue
		case p == nil && !w.run:
			r.mu.Lock()
			r.exited = true
			r.mu.Unlock()
			return
		case p == nil && time.Now().After(retryAt):
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			np, err := m.cfg.Launcher.Launch(ctx, w.spec)
			cancel()
			r.mu.Lock()
			if err != nil {
				r.err = fmt.Sprintf("starting QEMU: %v", err)
				retryAt = time.Now().Add(m.cfg.RestartDelay)
				log.Warn("starting the VM", "epoch", w.spec.Epoch, "err", err)
			} else {
				r.proc, r.epoch, r.started, r.err, r.state = np, w.spec.Epoch, time.Now(), "", "starting"
				log.Info("VM started", "epoch", w.spec.Epoch, "pid", np.PID())
			}
			r.mu.Unlock()
			continue
		}
		var exited <-chan struct{}
		if p != nil {
			exited = p.Done()
		}
		select {
		case <-m.stop:
			return
		case <-r.notify:
		case <-exited:
			r.mu.Lock()
			r.err = fmt.Sprintf("QEMU exited: %v", p.Err())
			r.proc, r.state = nil, admin.VMAbsent
			r.mu.Unlock()
			retryAt = time.Now().Add(m.cfg.RestartDelay)
			log.Warn("QEMU exited; the VM is started again", "epoch", r.epoch, "err", p.Err(), "after", m.cfg.RestartDelay)
		case <-poll.C:
			if p != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				s, err := p.Status(ctx)
				cancel()
				r.mu.Lock()
				if err == nil {
					r.state = s
				}
				r.mu.Unlock()
			}
		}
	}
}

// Local reports the VMs this host runs or has tried to run.
func (m *Manager) Local() []admin.LocalVM {
	m.mu.Lock()
	runs := make([]*run, 0, len(m.runs))
	for _, r := range m.runs {
		runs = append(runs, r)
	}
	m.mu.Unlock()
	out := make([]admin.LocalVM, 0, len(runs))
	for _, r := range runs {
		r.mu.Lock()
		lv := admin.LocalVM{Name: r.name, State: r.state, Error: r.err}
		if r.proc != nil {
			lv.PID, lv.Epoch, lv.QMPSocket, lv.SerialLog, lv.Started = r.proc.PID(), r.epoch, r.proc.QMPSocket(), r.proc.SerialLog(), r.started
		}
		r.mu.Unlock()
		out = append(out, lv)
	}
	slices.SortFunc(out, func(a, b admin.LocalVM) int {
		if a.Name < b.Name {
			return -1
		}
		return 1
	})
	return out
}

// ErrClosed is returned after Close.
var ErrClosed = errors.New("vmhost: manager closed")

// Close stops supervising; QEMU processes keep running (an agent restart
// must not stop its VMs). A new Manager does not adopt them yet: until it
// does, the agent must stop the VMs before it starts a Manager over a run
// directory that has live ones (see the package's TODO in doc.go).
func (m *Manager) Close() {
	m.mu.Lock()
	if m.done {
		m.mu.Unlock()
		return
	}
	m.done = true
	close(m.stop)
	m.mu.Unlock()
	m.wg.Wait()
}
