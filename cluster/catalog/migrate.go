package catalog

import (
	"errors"
	"fmt"
	"time"
)

// Migration phases (docs/migration.md).
const (
	// MigrationPreparing: the destination's agent starts the incoming
	// QEMU.
	MigrationPreparing = "preparing"
	// MigrationReady: the destination QEMU listens on URI; the source
	// migrates to it.
	MigrationReady = "ready"
	// MigrationSwitched: the VM and its disks' writer belong to the
	// destination; the source hands over the device state and stops.
	MigrationSwitched = "switched"
)

// Migration is a live migration of a VM in progress.
type Migration struct {
	// From and FromEpoch are the source host and its writer epoch; To and
	// Epoch the destination's (Epoch is the index of migrate_vm).
	From      string `json:"from"`
	FromEpoch uint64 `json:"from_epoch"`
	To        string `json:"to"`
	Epoch     uint64 `json:"epoch"`
	Phase     string `json:"phase"`
	// URI is where the destination QEMU takes the migration stream
	// (tcp:HOST:PORT), once ready.
	URI string `json:"uri,omitempty"`
	// MaxBandwidth limits the migration stream, in bytes per second (0:
	// the agents' default).
	MaxBandwidth int64     `json:"max_bandwidth,omitempty"`
	Started      time.Time `json:"started"`
}

// MigrationResult is how a VM's last migration ended.
type MigrationResult struct {
	From string `json:"from"`
	To   string `json:"to"`
	// Result is completed, cancelled or failed; Error says why a
	// migration did not complete. A migration that fails after the switch
	// leaves the VM on the destination (whose agent starts it again if its
	// QEMU did not get the whole VM).
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
	// Downtime is the guest's pause (from the source's stop to the
	// destination's start); QEMUDowntime QEMU's own figure of it; Total the
	// whole migration; Bytes what QEMU sent.
	Downtime     time.Duration `json:"downtime_ns,omitempty"`
	QEMUDowntime time.Duration `json:"qemu_downtime_ns,omitempty"`
	Total        time.Duration `json:"total_ns,omitempty"`
	Bytes        int64         `json:"bytes,omitempty"`
	Passes       int64         `json:"passes,omitempty"`
	Finished     time.Time     `json:"finished"`
}

// Migration results.
const (
	ResultCompleted = "completed"
	ResultCancelled = "cancelled"
	ResultFailed    = "failed"
)

// Migration commands.
const (
	// CmdMigrateVM starts a migration of a running VM to Target.
	CmdMigrateVM = "migrate_vm"
	// CmdMigrationReady records the destination's URI.
	CmdMigrationReady = "migration_ready"
	// CmdSwitchVM hands the VM and its disks' writer to the destination.
	CmdSwitchVM = "switch_vm"
	// CmdEndMigration ends a migration: completed after the switch,
	// cancelled before it, failed at any point (before the switch nothing
	// changed hands; after it the VM stays on the destination).
	CmdEndMigration = "end_migration"
)

// ErrNoMigration: the command names a migration that is not the VM's
// current one (it ended, or another began).
var ErrNoMigration = errors.New("no such migration")

// CheckMigrateVM reports why VM name cannot be migrated to host now.
func (s *State) CheckMigrateVM(name, host string) error {
	vm, ok := s.VMs[name]
	if !ok {
		return fmt.Errorf("catalog: VM %q: %w", name, ErrNotFound)
	}
	if vm.State != VMRunning {
		return fmt.Errorf("catalog: VM %q: %w: only a running VM migrates", name, ErrStopped)
	}
	if vm.Migration != nil {
		return fmt.Errorf("catalog: VM %q: %w: migrating to %s already (cancel it first)", name, ErrExists, vm.Migration.To)
	}
	if m := vm.DiskMove; m != nil {
		return fmt.Errorf("catalog: VM %q: %w: moving disk %d to %s (wait, or cancel the disk move)", name, ErrInUse, m.Disk, m.To)
	}
	if f := fileDisk(vm); f != "" {
		return fmt.Errorf("catalog: VM %q: %w: its disk %s is a file on host %s, which the destination cannot open: move it into a volume first (tandem vm move-disk)", name, ErrInvalid, f, vm.Host)
	}
	if host == "" {
		return fmt.Errorf("catalog: VM %q: %w: migration without a destination", name, ErrInvalid)
	}
	if host == vm.Host {
		return fmt.Errorf("catalog: VM %q: %w: it runs on %s already", name, ErrInvalid, host)
	}
	if _, ok := s.Hosts[host]; !ok {
		return fmt.Errorf("catalog: VM %q: host %q: %w", name, host, ErrNotFound)
	}
	return s.checkDisks(vm)
}

// migration returns VM c.Name's migration of epoch c.Epoch.
func (s *State) migration(c Command) (*VM, *Migration, error) {
	vm, ok := s.VMs[c.Name]
	if !ok {
		return nil, nil, fmt.Errorf("catalog: VM %q: %w", c.Name, ErrNotFound)
	}
	if vm.Migration == nil || vm.Migration.Epoch != c.Epoch {
		return nil, nil, fmt.Errorf("catalog: VM %q: migration of epoch %d: %w", c.Name, c.Epoch, ErrNoMigration)
	}
	return vm, vm.Migration, nil
}

// applyMigration applies the migration commands.
func (s *State) applyMigration(index uint64, c Command) error {
	if c.Kind == CmdMigrateVM {
		if err := s.CheckMigrateVM(c.Name, c.Target); err != nil {
			return err
		}
		vm := s.VMs[c.Name]
		if c.Bandwidth < 0 {
			return fmt.Errorf("catalog: VM %q: %w: negative bandwidth", c.Name, ErrInvalid)
		}
		vm.Migration = &Migration{From: vm.Host, FromEpoch: vm.Epoch, To: c.Target, Epoch: index, Phase: MigrationPreparing, Started: c.At,
			MaxBandwidth: c.Bandwidth}
		vm.Changed = index
		return nil
	}
	vm, m, err := s.migration(c)
	if err != nil {
		return err
	}
	switch c.Kind {
	case CmdMigrationReady:
		if m.Phase != MigrationPreparing || c.URI == "" {
			return fmt.Errorf("catalog: VM %q: %w: ready in phase %s with URI %q", c.Name, ErrInvalid, m.Phase, c.URI)
		}
		m.Phase, m.URI = MigrationReady, c.URI
	case CmdSwitchVM:
		if m.Phase != MigrationReady {
			return fmt.Errorf("catalog: VM %q: %w: switch in phase %s", c.Name, ErrInvalid, m.Phase)
		}
		if err := s.checkDisks(vm); err != nil {
			return err
		}
		m.Phase = MigrationSwitched
		vm.Host, vm.Epoch = m.To, m.Epoch
		s.setWriter(vm, m.Epoch, index)
		s.leadFrom(vm, m.To)
	case CmdEndMigration:
		r := c.Result
		if r == nil {
			return fmt.Errorf("catalog: VM %q: %w: end of migration without a result", c.Name, ErrInvalid)
		}
		switch {
		case r.Result == ResultCompleted && m.Phase != MigrationSwitched:
			return fmt.Errorf("catalog: VM %q: %w: completed in phase %s", c.Name, ErrInvalid, m.Phase)
		case r.Result == ResultCancelled && m.Phase == MigrationSwitched:
			return fmt.Errorf("catalog: VM %q: %w: too late to cancel, the VM was switched to %s", c.Name, ErrInvalid, m.To)
		case r.Result != ResultCompleted && r.Result != ResultCancelled && r.Result != ResultFailed:
			return fmt.Errorf("catalog: VM %q: %w: unknown migration result %q", c.Name, ErrInvalid, r.Result)
		}
		res := *r
		res.From, res.To, res.Finished = m.From, m.To, c.At
		vm.LastMigration, vm.Migration = &res, nil
	default:
		return fmt.Errorf("catalog: %w: unknown command %q", ErrInvalid, c.Kind)
	}
	vm.Changed = index
	return nil
}
