package vmhost

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/vmcoord/qemu"
)

// PIDFile is the file in a VM's run directory that holds its QEMU's
// process id, so that the next agent run finds a QEMU this one left.
const PIDFile = "qemu.pid"

// QEMULauncher starts VMs with package qemu.
type QEMULauncher struct {
	Options qemu.Options
	// ReconnectDelay is QEMU's NBD reconnect-delay (0: qemu's default).
	ReconnectDelay time.Duration
	// ExtraArgs are added to every QEMU command line.
	ExtraArgs []string
}

// Launch implements Launcher.
func (l QEMULauncher) Launch(ctx context.Context, s Spec) (Process, error) {
	qs := qemu.Spec{Name: s.Name, VCPUs: s.VCPUs, MemoryMiB: s.MemoryMiB, Incoming: s.Incoming,
		ReconnectDelay: l.ReconnectDelay, ExtraArgs: l.ExtraArgs}
	for _, d := range s.Disks {
		qs.Disks = append(qs.Disks, qemu.Disk{Server: s.NBDAddr, Export: d.Export})
	}
	if s.Boot.Kind == catalog.BootKernel {
		qs.Kernel, qs.Initrd, qs.Cmdline = s.Boot.Kernel, s.Boot.Initrd, s.Boot.Cmdline
	}
	p, err := qemu.Start(ctx, qs, s.Dir, l.Options)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(s.Dir, PIDFile), []byte(strconv.Itoa(p.PID())+"\n"), 0o600); err != nil {
		p.Kill()
		return nil, fmt.Errorf("vmhost: recording QEMU's pid: %w", err)
	}
	return p, nil
}

// KillLeftovers kills the QEMU processes whose pid files are in the run
// directories under dir (one per VM): processes a previous run of the
// agent left. A pid is killed only while its command line still names
// its run directory (pids are reused). It returns once they are gone.
func KillLeftovers(dir string, log *slog.Logger) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("vmhost: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		run := filepath.Join(dir, e.Name())
		pidPath := filepath.Join(run, PIDFile)
		b, err := os.ReadFile(pidPath)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 1 {
			continue
		}
		if ours(pid, run) {
			log.Warn("killing a QEMU left by a previous run of the agent", "vm", e.Name(), "pid", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
			deadline := time.Now().Add(10 * time.Second)
			for ours(pid, run) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if ours(pid, run) {
				errs = append(errs, fmt.Errorf("vmhost: QEMU %d of %s survived SIGKILL", pid, run))
				continue
			}
		}
		_ = os.Remove(pidPath)
	}
	return errors.Join(errs...)
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
