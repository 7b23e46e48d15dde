package vmhost

import (
	"context"
	"fmt"
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
	if err := pidfile.Write(s.Dir, p.PID()); err != nil {
		p.Kill()
		return nil, fmt.Errorf("vmhost: %w", err)
	}
	return p, nil
}
