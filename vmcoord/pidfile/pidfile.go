// Package pidfile records the process ids of the QEMU processes an agent
// starts, one file per VM run directory, so that the next run of the
// agent finds and kills the processes a previous one left (VMs outlive
// the agent that started them). QEMU writes the file itself at start
// (-pidfile, see package qemu), so that a QEMU whose agent died while
// starting it is found too; the agent writes it again once QEMU runs.
package pidfile

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Name is the file in a VM's run directory that holds its QEMU's process
// id.
const Name = "qemu.pid"

// Write records pid in run directory dir.
func Write(dir string, pid int) error {
	if err := os.WriteFile(filepath.Join(dir, Name), []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		return fmt.Errorf("pidfile: recording QEMU's pid: %w", err)
	}
	return nil
}

// KillLeftovers kills the QEMU processes whose pid files are in the run
// directories under dir (one per VM): processes a previous run of the
// agent left. It returns once they are gone.
func KillLeftovers(dir string, log *slog.Logger) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfile: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if e.IsDir() {
			errs = append(errs, Kill(filepath.Join(dir, e.Name()), log))
		}
	}
	return errors.Join(errs...)
}

// Live returns the pid recorded in run directory run if that process is
// alive and its command line still names run (pids are reused), else 0.
func Live(run string) int {
	b, err := os.ReadFile(filepath.Join(run, Name))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 || !ours(pid, run) {
		return 0
	}
	return pid
}

// Kill kills the QEMU of run directory run, if it is alive, waits until
// it is gone and removes the pid file.
func Kill(run string, log *slog.Logger) error {
	if pid := Live(run); pid != 0 {
		log.Warn("killing a QEMU left by a previous run of the agent", "vm", filepath.Base(run), "pid", pid)
		if err := killWait(pid, run, 10*time.Second); err != nil {
			return err
		}
	}
	if err := os.Remove(filepath.Join(run, Name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("pidfile: %w", err)
	}
	return nil
}

// killWait sends SIGKILL to pid, QEMU of run directory run, and waits up
// to timeout until it has exited. It waits on a pidfd, which is readable
// once the process has exited, its files (the QMP socket among them)
// closed: its command line, which ours reads, is gone earlier, while the
// process is still tearing down, and a pid may be reused at once.
func killWait(pid int, run string, timeout time.Duration) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfile: opening QEMU %d of %s: %w", pid, run, err)
	}
	defer unix.Close(fd)
	// The pidfd names this process for good: check it is still ours.
	if !ours(pid, run) {
		return nil
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("pidfile: killing QEMU %d of %s: %w", pid, run, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(max(time.Until(deadline), 0).Milliseconds()))
		switch {
		case n > 0:
			return nil
		case err != nil && !errors.Is(err, unix.EINTR):
			return fmt.Errorf("pidfile: waiting for QEMU %d of %s: %w", pid, run, err)
		case err == nil && time.Now().After(deadline):
			return fmt.Errorf("pidfile: QEMU %d of %s survived SIGKILL for %v", pid, run, timeout)
		}
	}
}

// ours reports whether process pid is alive (not a zombie) and its
// command line mentions run.
func ours(pid int, run string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(run)) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
		return false
	}
	return true
}
