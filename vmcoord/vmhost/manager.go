package vmhost

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/vmcoord/pidfile"
	"github.com/tandem-project/tandem/vmcoord/qemu"
	"github.com/tandem-project/tandem/volume"
)

// Disk is one disk of a VM to launch: a volume (an NBD export on the
// local agent) or an external source.
type Disk struct {
	// Volume is the volume's name ("" for an external disk); Export the
	// NBD export name QEMU opens (a volume's under the run's writer epoch).
	Volume string
	Export string
	// Server is an external NBD disk's server (host:port; "" for the
	// local agent); File and Format an image file's path and format.
	Server string
	File   string
	Format string
	// Node is the disk's block node name in QEMU (diskNode).
	Node string
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
	// Incoming starts QEMU as a live-migration destination, paused.
	Incoming bool
	// Dir is the run's directory: QMP socket, serial log.
	Dir string
}

// Process is one running QEMU (*qemu.Process implements it).
type Process interface {
	// Status returns QEMU's run state (query-status: running, paused,
	// io-error, ...).
	Status(ctx context.Context) (string, error)
	// Cont resumes the guest.
	Cont(ctx context.Context) error
	// Stop asks QEMU to quit and kills it if it has not exited in time.
	Stop(ctx context.Context) error
	// Done is closed when the process has exited; Err then says how.
	Done() <-chan struct{}
	Err() error
	PID() int
	QMPSocket() string
	SerialLog() string

	// Live migration, as package qemu documents it.
	Migrate(ctx context.Context, uri string, params qemu.MigrateParams) error
	MigrationStatus(ctx context.Context) (qemu.MigrationInfo, error)
	WaitMigration(ctx context.Context, states ...qemu.MigrationState) (qemu.MigrationInfo, error)
	MigrateContinue(ctx context.Context) error
	MigrateCancel(ctx context.Context) error
	MigrateIncoming(ctx context.Context, uri string) (string, error)
}

// Launcher starts QEMU processes.
type Launcher interface {
	Launch(ctx context.Context, spec Spec) (Process, error)
	// Adopt returns the QEMU a previous run of the agent left running
	// for spec (same VM, same epoch, not a migration destination), or
	// nil if there is none; it kills one that does not match.
	Adopt(ctx context.Context, spec Spec) (Process, error)
}

// Config configures a Manager.
type Config struct {
	// Host is this host's name in the catalog.
	Host string
	// Dir holds one directory per VM.
	Dir string
	// NBDAddr is the local agent's NBD address, which QEMU connects to.
	NBDAddr string
	// MigrationHost is the address a destination QEMU listens on for the
	// migration stream (this host's address the others reach).
	MigrationHost string
	Launcher      Launcher
	Log           *slog.Logger
	// Commit commits a catalog command (on the control leader, wherever
	// it is) and returns its log index.
	Commit func(ctx context.Context, cmd catalog.Command) (uint64, error)
	// Fence returns once the log of volume holds the fence of generation
	// gen for writer epoch (applied by its leader), and asks the volume's
	// leadership to move to host leader if it holds a replica ("" : stay).
	Fence func(ctx context.Context, volume string, gen, epoch uint64, leader string) error
	// ExportReady, if set, reports whether the local agent serves NBD
	// export name (a volume disk's, with its writer epoch). A QEMU started
	// before its disks' exports exist fails at once ("Requested export not
	// available"), so launch waits for them (at most exportWait) first:
	// a restarted agent opens its volumes while the catalog already
	// places VMs on it.
	ExportReady func(name string) bool
	// WriterAttached, if set, reports whether a connection that opened a
	// volume under writer epoch (a VM run's disks) is still open on the
	// local agent. QEMU's sockets close when it exits, but the agent
	// notices a moment later; a stopped VM is reported absent only once
	// its disks are detached (at most detachWait), so that a volume
	// delete right after "vm stop" does not find them attached.
	WriterAttached func(epoch uint64) bool
	// RestartDelay is the pause before a VM whose QEMU died is started
	// again (default 2 s).
	RestartDelay time.Duration
	// Migrate tunes outgoing migrations.
	Migrate qemu.MigrateParams
}

// Manager runs this host's VMs. Its methods may be called concurrently.
type Manager struct {
	cfg Config

	mu   sync.Mutex
	runs map[string]*run
	wg   sync.WaitGroup
	stop chan struct{}
	done bool
	// swept is set once the run directories of VMs not placed here were
	// cleared of QEMUs a previous agent run left.
	swept bool
	// reconciled is the catalog index of the last state Reconcile acted on.
	reconciled uint64
}

// New returns a Manager; it does nothing before the first Reconcile.
func New(cfg Config) *Manager {
	if cfg.RestartDelay == 0 {
		cfg.RestartDelay = 2 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Manager{cfg: cfg, runs: map[string]*run{}, stop: make(chan struct{})}
}

// Roles of a VM on this host.
const (
	roleNone = iota
	// roleRun: the VM runs here.
	roleRun
	// roleSource: the VM runs here and migrates away.
	roleSource
	// roleDest: the VM migrates here.
	roleDest
)

// want is what the catalog wants of one VM on this host.
type want struct {
	role int
	spec Spec
	mig  *catalog.Migration // roleSource, roleDest
	// move is the VM's disk move (roleRun), moveSize the size of its
	// target volume (0 for an external target).
	move     *catalog.DiskMove
	moveSize int64
}

func (w want) run() bool { return w.role != roleNone }

// run is one VM's supervisor: a goroutine that keeps a QEMU process in
// line with the latest want.
type run struct {
	name   string
	notify chan struct{}

	mu       sync.Mutex
	want     want
	proc     Process
	epoch    uint64
	state    string
	started  time.Time
	err      string
	exited   bool                     // the goroutine ended (the VM left this host)
	progress *admin.MigrationProgress // of the outgoing migration
	moving   *admin.DiskMoveProgress  // of the disk move
	pivot    *pivotOverride           // see diskmove.go
}

// Reconcile makes this host run exactly the VMs st places here: those in
// state running whose Host is this host, and both ends of their
// migrations.
func (m *Manager) Reconcile(st *catalog.State) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done {
		return
	}
	me := m.cfg.Host
	seen := map[string]bool{}
	for _, name := range st.VMNames() {
		vm := st.VMs[name]
		mg := vm.Migration
		var w want
		switch {
		case mg != nil && mg.To == me:
			w = want{role: roleDest, spec: m.spec(vm, mg.Epoch), mig: mg}
			w.spec.Incoming = true
		case mg != nil && mg.From == me:
			w = want{role: roleSource, spec: m.spec(vm, mg.FromEpoch), mig: mg}
		case vm.Host == me && vm.State == catalog.VMRunning:
			w = want{role: roleRun, spec: m.spec(vm, vm.Epoch), move: vm.DiskMove}
			if mv := vm.DiskMove; mv != nil {
				if v, ok := st.Volumes[mv.To]; ok {
					w.moveSize = v.Size
				}
			}
		default:
			continue
		}
		seen[name] = true
		m.set(name, w)
	}
	for name := range m.runs {
		if !seen[name] {
			m.set(name, want{})
		}
	}
	if !m.swept {
		m.swept = true
		m.sweep(seen)
	}
	m.reconciled = st.Index
}

// Reconciled returns the catalog index of the last state Reconcile acted
// on. Local reflects every change of the catalog up to it: a VM started
// there is reported launching (or further) until its QEMU has stopped, and
// one not reported runs no QEMU here.
func (m *Manager) Reconciled() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.reconciled
}

// sweep kills the QEMUs a previous run of the agent left for VMs this
// host does not run (the others are adopted when their run starts).
// Reconcile calls it once, with a current catalog.
func (m *Manager) sweep(keep map[string]bool) {
	entries, err := os.ReadDir(m.cfg.Dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.IsDir() && !keep[e.Name()] {
			if err := pidfile.Kill(filepath.Join(m.cfg.Dir, e.Name()), m.cfg.Log); err != nil {
				m.cfg.Log.Error("killing a left-over QEMU", "err", err)
			}
		}
	}
}

// spec returns the launch spec of vm's run under epoch. Once a disk move
// is pivoting, its target is authoritative: the VM opens it.
func (m *Manager) spec(vm *catalog.VM, epoch uint64) Spec {
	s := Spec{Name: vm.Name, VCPUs: vm.VCPUs, MemoryMiB: vm.MemoryMiB, NBDAddr: m.cfg.NBDAddr, Boot: vm.Boot, Epoch: epoch,
		Dir: filepath.Join(m.cfg.Dir, vm.Name)}
	for i, d := range vm.Disks {
		if mv := vm.DiskMove; mv != nil && mv.Disk == i && mv.Phase == catalog.DiskMovePivoting {
			d = mv.To
		}
		s.Disks = append(s.Disks, launchDisk(i, d, epoch))
	}
	return s
}

// launchDisk returns disk i of a VM, d as the catalog records it, opened
// under writer epoch.
func launchDisk(i int, d string, epoch uint64) Disk {
	out := Disk{Node: diskNode(i, d)}
	p, err := catalog.ParseDisk(d)
	if err != nil { // the catalog checked it; a volume name then
		p = catalog.Disk{Kind: catalog.DiskVolume, Volume: d}
	}
	switch p.Kind {
	case catalog.DiskRaw, catalog.DiskQcow2:
		out.File, out.Format = p.Path, p.Kind
	case catalog.DiskNBD:
		out.Server, out.Export = p.Server, p.Export
	default:
		out.Volume, out.Export = d, volume.WriterExport(d, epoch)
	}
	return out
}

// diskNode is the block node name of disk i when it is d: a function of
// both, so that whoever looks at a QEMU (an agent restarted during a disk
// move) tells which of a move's two sides a device uses.
func diskNode(i int, d string) string {
	h := fnv.New32a()
	h.Write([]byte(d))
	return fmt.Sprintf("d%d-%08x", i, h.Sum32())
}

// set records w for VM name, starting its supervisor if needed; m.mu is
// held.
func (m *Manager) set(name string, w want) {
	r := m.runs[name]
	if r == nil || r.isExited() {
		if !w.run() {
			delete(m.runs, name)
			return
		}
		// want is set before the supervisor starts: it must not see an
		// empty want and end at once. The run is reported launching from
		// now on, not absent: a stop must wait for the QEMU that its
		// supervisor may be about to start.
		r = &run{name: name, notify: make(chan struct{}, 1), state: admin.VMLaunching, want: w}
		m.runs[name] = r
		m.wg.Add(1)
		go m.supervise(r)
		return
	}
	r.mu.Lock()
	r.want = w
	r.mu.Unlock()
	r.poke()
}

// poke wakes r's supervisor.
func (r *run) poke() {
	select {
	case r.notify <- struct{}{}:
	default:
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
	var (
		retryAt  time.Time
		failures int // consecutive failed or short runs
		// The migration this run handles (by destination epoch), and how
		// to stop its goroutine.
		migEpoch  uint64
		migOut    bool // the goroutine sends the VM (else receives it)
		migCancel context.CancelFunc
		migDone   chan struct{}
		// The disk move this run drives (by ID), and how to stop it.
		moveID     uint64
		moveCancel context.CancelFunc
		moveDone   chan struct{}
		moveEnded  time.Time // when its goroutine last ended
	)
	endMigration := func() {
		if migCancel != nil {
			migCancel()
			<-migDone
			migCancel, migDone = nil, nil
		}
	}
	defer endMigration()
	stopMove := func() {
		if moveCancel != nil {
			moveCancel()
			<-moveDone
			moveCancel, moveDone = nil, nil
		}
	}
	defer stopMove()
	for {
		r.mu.Lock()
		w, p := r.want, r.proc
		r.mu.Unlock()
		if migDone != nil {
			select {
			case <-migDone: // finished by itself (migEpoch stays: not again)
				migCancel, migDone = nil, nil
			default:
			}
		}
		// An outgoing migration no longer in the catalog (cancelled,
		// ended): stop its goroutine (before the switch, it cancels QEMU's
		// migration). An incoming one is left to finish: the source ends
		// the migration in the catalog as soon as it completed, which may
		// be before this host saw the completion and resumed the guest.
		if migCancel != nil && migOut && (w.mig == nil || w.mig.Epoch != migEpoch) {
			endMigration()
		}
		if moveDone != nil {
			select {
			case <-moveDone: // finished by itself
				moveCancel, moveDone, moveEnded = nil, nil, time.Now()
			default:
			}
		}
		// A disk move no longer in the catalog (cancelled, or ended by a
		// stop): stop its goroutine, which undoes an unfinished copy.
		if moveCancel != nil && (w.move == nil || w.move.ID != moveID) {
			stopMove()
		}
		switch {
		case p != nil && (!w.run() || r.epoch != w.spec.Epoch):
			// Stopped, moved away, or restarted under a new epoch.
			endMigration()
			stopMove()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := p.Stop(ctx)
			cancel()
			if err == nil {
				m.waitDetached(log, r.epoch)
			}
			log.Info("VM stopped on this host", "epoch", r.epoch, "err", err)
			r.mu.Lock()
			r.proc, r.state, r.progress, r.moving = nil, admin.VMAbsent, nil, nil
			if err != nil {
				r.err = fmt.Sprintf("stopping QEMU: %v", err)
			}
			r.mu.Unlock()
			continue
		case p == nil && !w.run():
			r.mu.Lock()
			r.exited, r.state = true, admin.VMAbsent
			r.mu.Unlock()
			return
		case p == nil && w.role == roleDest && w.mig.Phase != catalog.MigrationPreparing:
			// The destination lost its QEMU after it said it was ready:
			// the migration failed (after the switch, the VM stays here
			// and starts afresh once the catalog says so).
			m.commitEnd(log, r.name, w.mig, catalog.ResultFailed, "the destination's QEMU exited during the migration", nil)
		case p == nil && w.role == roleSource:
			// The source lost its QEMU: the migration cannot go on.
			m.commitEnd(log, r.name, w.mig, catalog.ResultFailed, "the source's QEMU exited during the migration", nil)
		case p == nil && time.Now().After(retryAt):
			if err := m.launch(log, r, w); err != nil {
				failures++
				retryAt = time.Now().Add(m.backoff(failures))
				if w.role == roleDest {
					m.commitEnd(log, r.name, w.mig, catalog.ResultFailed, err.Error(), nil)
				}
			}
			continue
		case p != nil && w.role == roleSource && w.mig.Phase == catalog.MigrationReady && migCancel == nil && migEpoch != w.mig.Epoch:
			ctx, cancel := context.WithCancel(context.Background())
			migEpoch, migOut, migCancel, migDone = w.mig.Epoch, true, cancel, make(chan struct{})
			go func(mg catalog.Migration, disks []Disk, done chan struct{}) {
				defer r.poke()
				defer close(done)
				m.migrateOut(ctx, log, r, p, mg, disks)
			}(*w.mig, w.spec.Disks, migDone)
		case p != nil && w.role == roleRun && w.move != nil && moveCancel == nil &&
			(moveID != w.move.ID || time.Since(moveEnded) > moveRetry):
			// A move whose goroutine ended but is still in the catalog
			// after moveRetry (its end was not recorded, or QEMU was
			// started again) is looked at again: the driver starts from
			// what QEMU shows.
			ctx, cancel := context.WithCancel(context.Background())
			moveID, moveCancel, moveDone = w.move.ID, cancel, make(chan struct{})
			go func(mv catalog.DiskMove, size int64, epoch uint64, done chan struct{}) {
				defer r.poke()
				defer close(done)
				m.moveDisk(ctx, log.With("disk_move", mv.ID), r, p, mv, size, epoch)
			}(*w.move, w.moveSize, w.spec.Epoch, moveDone)
		case p != nil && w.role == roleDest && migCancel == nil && migEpoch != w.mig.Epoch:
			ctx, cancel := context.WithCancel(context.Background())
			migEpoch, migOut, migCancel, migDone = w.mig.Epoch, false, cancel, make(chan struct{})
			go func(mg catalog.Migration, done chan struct{}) {
				defer r.poke()
				defer close(done)
				m.migrateIn(ctx, log, r, p, mg)
			}(*w.mig, migDone)
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
			ran := time.Since(r.started)
			r.proc, r.state, r.progress = nil, admin.VMAbsent, nil
			r.mu.Unlock()
			// A QEMU that dies soon after it started, again and again, is
			// started again less and less often.
			if ran < crashLoop {
				failures++
			} else {
				failures = 1
			}
			retryAt = time.Now().Add(m.backoff(failures))
			log.Warn("QEMU exited", "epoch", r.epoch, "err", p.Err())
			if w.role == roleDest && w.mig.Phase == catalog.MigrationPreparing {
				m.commitEnd(log, r.name, w.mig, catalog.ResultFailed, "the destination's QEMU exited before it was ready", nil)
			}
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

// moveRetry is how long a disk move whose driver ended may stay in the
// catalog before the driver runs again.
const moveRetry = 5 * time.Second

// crashLoop is how long a QEMU must run for its exit not to count as one
// more failure in a row.
const crashLoop = 30 * time.Second

// backoff returns the pause before the next start after n failures in a
// row: RestartDelay, doubling, at most a minute.
func (m *Manager) backoff(n int) time.Duration {
	d := m.cfg.RestartDelay
	for i := 1; i < n && d < time.Minute; i++ {
		d *= 2
	}
	return min(d, time.Minute)
}

// exportWait bounds how long launch waits for a VM's exports.
const exportWait = 15 * time.Second

// waitExports waits until the local agent serves every volume disk of s
// (see Config.ExportReady), at most exportWait or until ctx ends. It
// gives up silently: QEMU then reports what is missing.
func (m *Manager) waitExports(ctx context.Context, log *slog.Logger, s Spec) {
	ready := m.cfg.ExportReady
	if ready == nil {
		return
	}
	missing := func() string {
		for _, d := range s.Disks {
			if d.Server == "" && d.File == "" && d.Export != "" && !ready(d.Export) {
				return d.Export
			}
		}
		return ""
	}
	deadline := time.Now().Add(exportWait)
	logged := false
	for x := missing(); x != ""; x = missing() {
		if !logged {
			log.Info("waiting for the local agent to serve the VM's disk", "export", x)
			logged = true
		}
		if time.Now().After(deadline) {
			log.Warn("starting the VM without its disk's export", "export", x, "waited", exportWait)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-m.stop:
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// detachWait bounds how long a stop waits for the local agent to see the
// VM's disk connections closed.
const detachWait = 10 * time.Second

// waitDetached waits until the local agent has no connection open under
// writer epoch (see Config.WriterAttached), at most detachWait.
func (m *Manager) waitDetached(log *slog.Logger, epoch uint64) {
	attached := m.cfg.WriterAttached
	if attached == nil || epoch == 0 {
		return
	}
	deadline := time.Now().Add(detachWait)
	for attached(epoch) {
		if time.Now().After(deadline) {
			log.Warn("the stopped VM's disk connections are still open", "epoch", epoch, "waited", detachWait)
			return
		}
		select {
		case <-m.stop:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// launch starts QEMU for w. A destination is started paused, listening
// for the migration stream, and records its address in the catalog.
func (m *Manager) launch(log *slog.Logger, r *run, w want) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A QEMU a previous run of the agent left for this run carries on.
	p, err := m.cfg.Launcher.Adopt(ctx, w.spec)
	if err != nil {
		log.Warn("adopting a running QEMU", "err", err)
	}
	if p != nil {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.proc, r.epoch, r.started, r.err, r.state = p, w.spec.Epoch, time.Now(), "", "adopted"
		log.Info("VM adopted: its QEMU ran on while the agent restarted", "epoch", w.spec.Epoch, "pid", p.PID())
		return nil
	}
	r.mu.Lock()
	w.spec = r.withPivot(w.spec)
	// Not absent while QEMU starts: a stop must wait for this process too.
	r.state = admin.VMLaunching
	r.mu.Unlock()
	m.waitExports(ctx, log, w.spec)
	p, err = m.cfg.Launcher.Launch(ctx, w.spec)
	if err == nil && w.role == roleDest {
		var uri string
		if uri, err = p.MigrateIncoming(ctx, "tcp:"+m.cfg.MigrationHost+":0"); err == nil {
			_, err = m.cfg.Commit(ctx, catalog.Command{Kind: catalog.CmdMigrationReady, Name: r.name, Epoch: w.mig.Epoch, URI: uri})
		}
		if err != nil {
			sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
			_ = p.Stop(sctx)
			scancel()
			err = fmt.Errorf("preparing the migration's destination: %w", err)
		} else {
			log.Info("migration destination ready", "uri", uri, "epoch", w.mig.Epoch)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.err, r.state = fmt.Sprintf("starting QEMU: %v", err), admin.VMAbsent
		log.Warn("starting the VM", "epoch", w.spec.Epoch, "err", err)
		return err
	}
	r.proc, r.epoch, r.started, r.err, r.state = p, w.spec.Epoch, time.Now(), "", "starting"
	log.Info("VM started", "epoch", w.spec.Epoch, "pid", p.PID(), "incoming", w.spec.Incoming)
	return nil
}

// commitEnd records the end of migration mg in the catalog (a refusal,
// because it ended already, is fine).
func (m *Manager) commitEnd(log *slog.Logger, name string, mg *catalog.Migration, result, why string, res *catalog.MigrationResult) {
	if res == nil {
		res = &catalog.MigrationResult{}
	}
	res.Result, res.Error = result, why
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := m.cfg.Commit(ctx, catalog.Command{Kind: catalog.CmdEndMigration, Name: name, Epoch: mg.Epoch, Result: res})
	log.Info("migration ended", "to", mg.To, "result", result, "why", why, "commit_err", err)
}

// migrateIn waits, on the destination, for the incoming migration to
// complete and resumes the guest. Completion implies the switch: the
// source continues only after the catalog switched the VM here and the
// disks were fenced (docs/migration.md).
func (m *Manager) migrateIn(ctx context.Context, log *slog.Logger, r *run, p Process, mg catalog.Migration) {
	info, err := p.WaitMigration(ctx, qemu.MigrationCompleted)
	if err != nil {
		log.Info("incoming migration did not complete", "err", err, "state", info.State)
		return
	}
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Cont(cctx); err != nil {
		log.Warn("resuming the migrated VM", "err", err)
		r.mu.Lock()
		r.err = fmt.Sprintf("resuming after the migration: %v", err)
		r.mu.Unlock()
		return
	}
	log.Info("migrated VM runs here", "epoch", mg.Epoch)
}

// migrateOut sends the VM to the destination of mg and hands it over:
// pre-switchover, switch in the catalog, fence every disk, continue,
// completion, result. Cancelled (ctx) before the switch, it cancels QEMU's
// migration and the VM runs on here.
func (m *Manager) migrateOut(ctx context.Context, log *slog.Logger, r *run, p Process, mg catalog.Migration, disks []Disk) {
	start := time.Now()
	fail := func(result string, err error) {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if cerr := p.MigrateCancel(cctx); cerr != nil {
			log.Warn("cancelling QEMU's migration", "err", cerr)
		}
		// QEMU resumes the source itself; make sure it runs.
		if st, err := p.Status(cctx); err == nil && (st == qemu.StateFinishMigrate || st == qemu.StatePaused) {
			_ = p.Cont(cctx)
		}
		r.setProgress(nil)
		if ctx.Err() == nil { // not cancelled by the catalog: record why
			m.commitEnd(log, r.name, &mg, result, err.Error(), nil)
		}
		log.Info("migration abandoned; the VM runs on here", "err", err)
	}
	params := m.cfg.Migrate
	if mg.MaxBandwidth > 0 {
		params.MaxBandwidth = mg.MaxBandwidth
	}
	if err := p.Migrate(ctx, mg.URI, params); err != nil {
		fail(catalog.ResultFailed, fmt.Errorf("starting the migration to %s: %w", mg.URI, err))
		return
	}
	// Copy RAM until QEMU pauses the guest before the switchover (an
	// event: no polling delay), reporting the progress meanwhile.
	stopProgress := make(chan struct{})
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		for {
			if info, err := p.MigrationStatus(ctx); err == nil {
				r.setProgress(progressOf(info))
			}
			select {
			case <-stopProgress:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	info, err := p.WaitMigration(ctx, qemu.MigrationPreSwitchover)
	paused := time.Now()
	close(stopProgress)
	<-progressDone
	switch {
	case ctx.Err() != nil:
		fail(catalog.ResultCancelled, ctx.Err())
		return
	case err != nil:
		fail(catalog.ResultFailed, fmt.Errorf("before the switchover: %w", err))
		return
	}
	r.setProgress(progressOf(info))
	// The switch: from here on the VM belongs to the destination.
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	gen, err := m.cfg.Commit(sctx, catalog.Command{Kind: catalog.CmdSwitchVM, Name: r.name, Epoch: mg.Epoch})
	if err != nil {
		fail(catalog.ResultFailed, fmt.Errorf("switching the VM in the catalog: %w", err))
		return
	}
	log.Info("VM switched to the destination", "to", mg.To, "epoch", mg.Epoch, "gen", gen)
	var wg sync.WaitGroup
	errs := make([]error, len(disks))
	for i, d := range disks {
		if d.Volume == "" {
			continue // an external disk: no fence
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.cfg.Fence(sctx, d.Volume, gen, mg.Epoch, mg.To)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			// The catalog decided; the fence is only late. The leader's
			// agent puts it in the log when it sees the catalog, but the
			// device state must not go before it.
			log.Error("fencing a disk at the switchover", "volume", disks[i].Volume, "err", err)
			m.commitEnd(log, r.name, &mg, catalog.ResultFailed, fmt.Sprintf("fencing %s: %v", disks[i].Volume, err), nil)
			return
		}
	}
	if err := p.MigrateContinue(sctx); err != nil {
		m.commitEnd(log, r.name, &mg, catalog.ResultFailed, fmt.Sprintf("migrate-continue: %v", err), nil)
		return
	}
	info, err = p.WaitMigration(sctx, qemu.MigrationCompleted)
	done := time.Now()
	if err != nil {
		m.commitEnd(log, r.name, &mg, catalog.ResultFailed, fmt.Sprintf("after the switchover: %v", err), nil)
		return
	}
	r.setProgress(progressOf(info))
	res := &catalog.MigrationResult{Downtime: done.Sub(paused), QEMUDowntime: info.Downtime, Total: done.Sub(start),
		Bytes: info.Transferred, Passes: info.Passes}
	m.commitEnd(log, r.name, &mg, catalog.ResultCompleted, "", res)
}

// setProgress records the outgoing migration's progress.
func (r *run) setProgress(p *admin.MigrationProgress) {
	r.mu.Lock()
	r.progress = p
	r.mu.Unlock()
}

func progressOf(info qemu.MigrationInfo) *admin.MigrationProgress {
	return &admin.MigrationProgress{Status: string(info.State), Transferred: info.Transferred, Remaining: info.Remaining,
		Total: info.Total, Passes: info.Passes, ExpectedDowntime: info.ExpectedDowntime}
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
		if r.moving != nil {
			mp := *r.moving
			lv.DiskMove = &mp
		}
		if r.proc != nil {
			lv.PID, lv.Epoch, lv.QMPSocket, lv.SerialLog, lv.Started = r.proc.PID(), r.epoch, r.proc.QMPSocket(), r.proc.SerialLog(), r.started
		}
		if r.progress != nil {
			p := *r.progress
			lv.Migration = &p
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

// Close stops supervising; QEMU processes keep running (an agent restart
// must not stop its VMs): the next agent run adopts those the catalog
// still places here under the same epoch and kills the others.
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
