package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/tandem-project/tandem/vmcoord/qmp"
)

// Defaults of Options fields left zero.
const (
	// DefaultBinary is the QEMU program, looked up in PATH.
	DefaultBinary = "qemu-system-x86_64"
	// DefaultStopTimeout is how long Stop waits after "quit".
	DefaultStopTimeout = 10 * time.Second
)

var (
	// ErrExited is returned by methods that need QEMU after it exited.
	ErrExited = errors.New("qemu: the process exited")
	// ErrDirInUse is returned by Start when a QEMU still answers on the
	// run directory's QMP socket.
	ErrDirInUse = errors.New("a QEMU process is already running in this run directory")
)

// RunState is QEMU's run state, as query-status reports it. It is an alias
// of string so that Process.Status fits interfaces that want a string.
type RunState = string

// The run states of QEMU 7.2 (qapi/run-state.json) a coordinator meets.
const (
	// StatePrelaunch: started with -S, never run yet.
	StatePrelaunch RunState = "prelaunch"
	// StateRunning: the guest runs.
	StateRunning RunState = "running"
	// StatePaused: stopped by "stop", or a migration destination that
	// completed and waits for "cont".
	StatePaused RunState = "paused"
	// StateIOError: stopped by a disk error (werror/rerror=stop); "cont"
	// retries the failed requests.
	StateIOError RunState = "io-error"
	// StateInMigrate: a migration destination before the migration
	// completed.
	StateInMigrate RunState = "inmigrate"
	// StateFinishMigrate: a migration source stopped for its last pass
	// (also while waiting in pre-switchover).
	StateFinishMigrate RunState = "finish-migrate"
	// StatePostMigrate: a migration source after the migration completed.
	StatePostMigrate RunState = "postmigrate"
	// StateShutdown: the guest shut down (with -no-shutdown).
	StateShutdown RunState = "shutdown"
	// StateSuspended: the guest suspended itself (ACPI S3).
	StateSuspended RunState = "suspended"
	// StateInternalError: QEMU hit an emulation error.
	StateInternalError RunState = "internal-error"
	// StateGuestPanicked: the guest reported a panic (pvpanic).
	StateGuestPanicked RunState = "guest-panicked"
)

// Options configure how a Process is run and supervised.
type Options struct {
	// Binary is the QEMU program (default DefaultBinary, looked up in PATH).
	Binary string
	// Env is QEMU's environment (nil: this process's).
	Env []string
	// Logger receives the supervisor's and the process's log (nil:
	// discarded).
	Logger *slog.Logger
	// StorageReady, if set, is called before each attempt to resume a VM
	// paused by a disk error: it returns nil once the VM's storage is
	// expected to serve I/O again (blocking until then, or until ctx ends),
	// or an error to wait and ask again. Nil: the supervisor just retries
	// "cont" with a backoff from 100 ms to 2 s.
	StorageReady func(ctx context.Context) error
	// StopTimeout bounds how long Stop waits for QEMU to exit after "quit"
	// before killing it (default DefaultStopTimeout).
	StopTimeout time.Duration
	// MigrationTLSDir, if set, makes migration streams TLS with mutual
	// authentication: a directory of QEMU's x509 credentials (ca-cert.pem,
	// server-cert.pem, server-key.pem, client-cert.pem, client-key.pem),
	// every host's signed by the CA in ca-cert.pem. The source checks that
	// the destination's certificate names the host of the migration URI;
	// the destination requires the source's certificate.
	MigrationTLSDir string
}

// Process is one running QEMU process for one VM. Its methods are safe for
// concurrent use.
type Process struct {
	spec Spec
	dir  string
	opts Options
	log  *slog.Logger
	cmd  *exec.Cmd // nil for an attached process (Attach)
	pid  int
	qmp  *qmp.Conn

	done    chan struct{} // closed when QEMU has exited
	waitErr error         // cmd.Wait's error; set before done closes

	stopSupervisor context.CancelFunc
	supervisorDone chan struct{}
}

// Start starts QEMU for spec with its run directory dir (created if
// needed; it holds QMPSocketFile, SerialLogFile and QEMULogFile), connects
// to its QMP socket, starts the supervisor and, unless spec.Incoming,
// starts the guest. It returns once the guest runs (Incoming: once QEMU
// waits for MigrateIncoming). It refuses a directory where a QEMU still
// answers (ErrDirInUse). ctx bounds the start only: QEMU runs until Stop,
// Kill, the guest powers off, or QEMU dies. QEMU runs in its own process
// group, so that a terminal's Ctrl-C does not reach it, and outlives this
// process unless stopped.
func Start(ctx context.Context, spec Spec, dir string, opts Options) (*Process, error) {
	args, err := spec.Args(dir)
	if err != nil {
		return nil, err
	}
	spec = spec.withDefaults()
	if opts.Binary == "" {
		opts.Binary = DefaultBinary
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = DefaultStopTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, fmt.Errorf("qemu: run directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("qemu: run directory: %w", err)
	}
	sock := filepath.Join(dir, QMPSocketFile)
	if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("qemu: %w: %s", ErrDirInUse, dir)
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("qemu: removing the old QMP socket: %w", err)
	}
	logFile, err := os.Create(filepath.Join(dir, QEMULogFile))
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	defer logFile.Close() // QEMU has its own descriptor

	p := &Process{spec: spec, dir: dir, opts: opts, done: make(chan struct{}), supervisorDone: make(chan struct{})}
	p.cmd = exec.Command(opts.Binary, args...)
	p.cmd.Env = opts.Env
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("qemu: starting %s: %w", opts.Binary, err)
	}
	p.pid = p.cmd.Process.Pid
	p.log = opts.Logger.With("vm", spec.Name, "pid", p.pid)
	p.log.Info("QEMU started", "dir", dir, "incoming", spec.Incoming)
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()

	fail := func(err error) (*Process, error) {
		p.Kill()
		return nil, fmt.Errorf("qemu: starting VM %s: %w%s", spec.Name, err, p.logTail())
	}
	if p.qmp, err = p.dialQMP(ctx, sock); err != nil {
		return fail(err)
	}
	p.log.Debug("QMP connected", "qemu", p.qmp.Version().String())
	// Supervise before the guest runs, so that no disk error goes unseen.
	svCtx, cancel := context.WithCancel(context.Background())
	p.stopSupervisor = cancel
	sub := p.qmp.Subscribe()
	go func() {
		select {
		case <-p.done:
		case <-svCtx.Done():
		}
		cancel()
	}()
	go p.supervise(svCtx, sub)
	if !spec.Incoming {
		if err := p.Cont(ctx); err != nil {
			return fail(err)
		}
	}
	return p, nil
}

// dialQMP connects to QEMU's QMP socket, retrying until QEMU created it.
func (p *Process) dialQMP(ctx context.Context, sock string) (*qmp.Conn, error) {
	for {
		c, err := qmp.Dial(ctx, "unix", sock)
		if err == nil {
			return c, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("QEMU exited before QMP was up: %v", p.waitErr)
		case <-ctx.Done():
			return nil, fmt.Errorf("connecting to QMP: %w (last: %v)", ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// logTail returns the end of QEMU's log, for errors.
func (p *Process) logTail() string {
	f, err := os.Open(filepath.Join(p.dir, QEMULogFile))
	if err != nil {
		return ""
	}
	defer f.Close()
	const max = 2048
	if st, err := f.Stat(); err == nil && st.Size() > max {
		_, _ = f.Seek(-max, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return ""
	}
	return "; QEMU says: " + string(b)
}

// QMP returns the QMP connection, for commands this package does not wrap.
func (p *Process) QMP() *qmp.Conn { return p.qmp }

// Spec returns the VM's spec, with defaults filled in.
func (p *Process) Spec() Spec { return p.spec }

// PID returns QEMU's process id.
func (p *Process) PID() int { return p.pid }

// Dir returns the VM's run directory (absolute).
func (p *Process) Dir() string { return p.dir }

// QMPSocket returns the path of QEMU's QMP socket. Process holds one
// connection to it; QEMU serves one client at a time per socket.
func (p *Process) QMPSocket() string { return filepath.Join(p.dir, QMPSocketFile) }

// SerialLog returns the path of the file receiving the guest's serial
// port.
func (p *Process) SerialLog() string { return filepath.Join(p.dir, SerialLogFile) }

// QEMULog returns the path of the file receiving QEMU's stdout and stderr.
func (p *Process) QEMULog() string { return filepath.Join(p.dir, QEMULogFile) }

// Done returns a channel closed once QEMU has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits for QEMU to exit and returns its exit status: nil for exit
// code 0, an *exec.ExitError otherwise (killed, or failed).
func (p *Process) Wait() error {
	<-p.done
	<-p.supervisorDone
	return p.waitErr
}

// Err returns nil while QEMU runs, then its exit status as Wait does.
func (p *Process) Err() error {
	select {
	case <-p.done:
		return p.waitErr
	default:
		return nil
	}
}

// exited returns err marked with ErrExited if QEMU has exited. A QMP
// connection that QEMU closed means QEMU is exiting: wait a little for it.
func (p *Process) exited(err error) error {
	if errors.Is(err, qmp.ErrDisconnected) {
		t := time.NewTimer(time.Second)
		defer t.Stop()
		select {
		case <-p.done:
		case <-t.C:
		}
	}
	select {
	case <-p.done:
		return fmt.Errorf("%w (%v): %w", ErrExited, p.waitErr, err)
	default:
		return err
	}
}

// execute runs a QMP command, naming the VM in errors.
func (p *Process) execute(ctx context.Context, command string, args, result any) error {
	if err := p.qmp.Execute(ctx, command, args, result); err != nil {
		return p.exited(fmt.Errorf("qemu: VM %s: %w", p.spec.Name, err))
	}
	return nil
}

// Status returns QEMU's run state (query-status).
func (p *Process) Status(ctx context.Context) (RunState, error) {
	var st struct {
		Status RunState `json:"status"`
	}
	if err := p.execute(ctx, "query-status", nil, &st); err != nil {
		return "", err
	}
	return st.Status, nil
}

// Cont resumes the guest ("cont"): a paused VM runs, a VM paused by a
// disk error retries its failed requests, a migration destination that
// completed runs and (with late-block-activate) takes over its disks.
func (p *Process) Cont(ctx context.Context) error {
	return p.execute(ctx, "cont", nil, nil)
}

// Pause stops the guest's CPUs ("stop").
func (p *Process) Pause(ctx context.Context) error {
	return p.execute(ctx, "stop", nil, nil)
}

// Stop asks QEMU to exit ("quit") and waits for it; if QEMU has not exited
// within Options.StopTimeout (or when ctx ends), it kills it and returns an
// error saying so. QEMU's "quit" does not flush the guest's caches: the
// guest should be shut down or paused first if that matters. Stopping an
// exited process returns nil.
func (p *Process) Stop(ctx context.Context) error {
	select {
	case <-p.done:
		<-p.supervisorDone
		return nil
	default:
	}
	ctx, cancel := context.WithTimeout(ctx, p.opts.StopTimeout)
	defer cancel()
	err := p.qmp.Execute(ctx, "quit", nil, nil)
	if err != nil && !errors.Is(err, qmp.ErrDisconnected) {
		p.log.Warn("quit failed", "err", err)
	}
	select {
	case <-p.done:
		<-p.supervisorDone
		p.log.Info("QEMU stopped")
		return nil
	case <-ctx.Done():
		p.Kill()
		return fmt.Errorf("qemu: VM %s did not exit after quit (%v); killed it", p.spec.Name, ctx.Err())
	}
}

// Kill kills QEMU with SIGKILL and waits for it to exit.
func (p *Process) Kill() {
	select {
	case <-p.done:
	default:
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
		<-p.done
		p.log.Info("QEMU killed")
	}
	if p.stopSupervisor != nil {
		p.stopSupervisor()
		<-p.supervisorDone
	}
	if p.qmp != nil {
		p.qmp.Close()
	}
}
