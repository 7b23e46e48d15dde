package vmhost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/vmcoord/pidfile"
	"github.com/tandem-project/tandem/vmcoord/qemu"
)

// QEMULauncher starts VMs with package qemu.
type QEMULauncher struct {
	Options qemu.Options
	// ReconnectDelay is QEMU's NBD reconnect-delay (0: qemu's default).
	ReconnectDelay time.Duration
	// ExtraArgs are added to every QEMU command line.
	ExtraArgs []string
	// StorageReady, if set, is asked before each attempt to resume a VM
	// paused by a disk error, with the names of the VM's volumes (its
	// disks on the local agent): it returns nil once they are expected to
	// take writes again, or an error that says what they wait for
	// (qemu.Options.StorageReady, which it sets per VM).
	StorageReady func(ctx context.Context, volumes []string) error
}

// options returns the QEMU options for s: the launcher's, with
// StorageReady bound to s's volumes.
func (l QEMULauncher) options(s Spec) qemu.Options {
	o := l.Options
	if l.StorageReady == nil {
		return o
	}
	var vols []string
	for _, d := range s.Disks {
		if d.Volume != "" && d.Server == "" {
			vols = append(vols, d.Volume)
		}
	}
	if len(vols) == 0 {
		return o
	}
	ready := l.StorageReady
	o.StorageReady = func(ctx context.Context) error { return ready(ctx, vols) }
	return o
}

// log returns the launcher's logger.
func (l QEMULauncher) log() *slog.Logger {
	if l.Options.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l.Options.Logger
}

// runFile records, in a VM's run directory, the run its QEMU belongs to.
const runFile = "run.json"

// runRecord is the content of runFile.
type runRecord struct {
	Epoch    uint64 `json:"epoch"`
	Incoming bool   `json:"incoming,omitempty"`
}

// qemuSpec returns the package qemu spec of s.
func (l QEMULauncher) qemuSpec(s Spec) qemu.Spec {
	qs := qemu.Spec{Name: s.Name, VCPUs: s.VCPUs, MemoryMiB: s.MemoryMiB, Incoming: s.Incoming,
		ReconnectDelay: l.ReconnectDelay, ExtraArgs: l.ExtraArgs}
	for _, d := range s.Disks {
		qs.Disks = append(qs.Disks, qemuDisk(d, s.NBDAddr))
	}
	if s.Boot.Kind == catalog.BootKernel {
		qs.Kernel, qs.Initrd, qs.Cmdline = s.Boot.Kernel, s.Boot.Initrd, s.Boot.Cmdline
	}
	return qs
}

// qemuDisk returns d for package qemu; a volume is an export of the local
// agent at nbdAddr.
func qemuDisk(d Disk, nbdAddr string) qemu.Disk {
	qd := qemu.Disk{Server: d.Server, Export: d.Export, File: d.File, Format: d.Format, Node: d.Node}
	if d.File == "" && d.Server == "" {
		qd.Server = nbdAddr
	}
	return qd
}

// Launch implements Launcher.
func (l QEMULauncher) Launch(ctx context.Context, s Spec) (Process, error) {
	if err := pidfile.Kill(s.Dir, l.log()); err != nil { // never two QEMUs on one directory
		return nil, fmt.Errorf("vmhost: %w", err)
	}
	p, err := qemu.Start(ctx, l.qemuSpec(s), s.Dir, l.options(s))
	if err != nil {
		return nil, err
	}
	rec, _ := json.Marshal(runRecord{Epoch: s.Epoch, Incoming: s.Incoming})
	err = pidfile.Write(s.Dir, p.PID())
	if err == nil {
		err = os.WriteFile(filepath.Join(s.Dir, runFile), rec, 0o600)
	}
	if err != nil {
		p.Kill()
		return nil, fmt.Errorf("vmhost: %w", err)
	}
	return p, nil
}

// Adopt implements Launcher.
func (l QEMULauncher) Adopt(ctx context.Context, s Spec) (Process, error) {
	pid := pidfile.Live(s.Dir)
	if pid == 0 {
		return nil, nil
	}
	var rec runRecord
	b, err := os.ReadFile(filepath.Join(s.Dir, runFile))
	if err == nil {
		err = json.Unmarshal(b, &rec)
	}
	if err != nil || rec.Epoch != s.Epoch || rec.Incoming || s.Incoming {
		// Another run (or a migration destination, whose migration is
		// lost with the agent that drove it): it must not go on.
		return nil, pidfile.Kill(s.Dir, l.log())
	}
	p, err := qemu.Attach(ctx, l.qemuSpec(s), s.Dir, pid, l.options(s))
	if err != nil {
		// Not adoptable (its QMP does not answer): replace it.
		return nil, errors.Join(err, pidfile.Kill(s.Dir, l.log()))
	}
	return p, nil
}
