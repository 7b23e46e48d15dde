package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// errNotChild is the exit status of an attached process: it is not a
// child of this process, whose exit status is unknown.
var errNotChild = errors.New("qemu: an attached QEMU exited (its exit status is its parent's)")

// Attach takes over a QEMU that runs already with run directory dir and
// process id pid, started by Start in an earlier process (an agent that
// restarted): it connects to its QMP socket and supervises it as Start
// does, without changing its run state, except that a VM a disk error
// paused meanwhile is resumed once its storage is ready (the supervisor
// would have done it). spec must be the spec it was
// started with (its Name and Incoming matter). Its exit is noticed by
// polling (it is not a child of this process).
func Attach(ctx context.Context, spec Spec, dir string, pid int, opts Options) (*Process, error) {
	spec = spec.withDefaults()
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = DefaultStopTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("qemu: run directory: %w", err)
	}
	if pid <= 1 || syscall.Kill(pid, 0) != nil {
		return nil, fmt.Errorf("qemu: attaching to VM %s: no process %d", spec.Name, pid)
	}
	p := &Process{spec: spec, dir: dir, opts: opts, pid: pid, done: make(chan struct{}), supervisorDone: make(chan struct{})}
	p.log = opts.Logger.With("vm", spec.Name, "pid", pid)
	stopWatch := make(chan struct{})
	go p.watchExit(stopWatch)
	if p.qmp, err = p.dialQMP(ctx, filepath.Join(dir, QMPSocketFile)); err != nil {
		close(stopWatch)
		return nil, fmt.Errorf("qemu: attaching to VM %s (pid %d): %w", spec.Name, pid, err)
	}
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
	p.log.Info("attached to a running QEMU", "dir", dir)
	return p, nil
}

// watchExit closes p.done once process p.pid is gone (or a zombie), or
// returns when stop is closed.
func (p *Process) watchExit(stop <-chan struct{}) {
	for {
		if !alive(p.pid) {
			p.waitErr = errNotChild
			close(p.done)
			return
		}
		select {
		case <-stop:
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// alive reports whether pid runs (exists and is not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == ')' {
			return i+2 >= len(b) || b[i+2] != 'Z'
		}
	}
	return true
}
