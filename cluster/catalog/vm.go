package catalog

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tandem-project/tandem/volume"
)

// A VM's desired state, as the catalog records it. What QEMU does on the
// VM's host is the runtime's report, not part of the catalog.
const (
	VMStopped = "stopped"
	VMRunning = "running"
)

// Boot kinds.
const (
	// BootDisk boots the VM from its first disk.
	BootDisk = "disk"
	// BootKernel boots a kernel (and optional initrd) given as files on
	// the VM's host, with a kernel command line.
	BootKernel = "kernel"
)

// Limits of a VM.
const (
	MinVCPUs     = 1
	MaxVCPUs     = 16
	MinMemoryMiB = 16
	MaxMemoryMiB = 65536
	// MaxDisks bounds a VM's disks.
	MaxDisks = 16
	// MaxBootString bounds the boot paths and the kernel command line,
	// in bytes.
	MaxBootString = 4096
)

// Boot says how a VM boots.
type Boot struct {
	// Kind is BootDisk or BootKernel.
	Kind string `json:"kind"`
	// Kernel and Initrd are absolute paths of files on the VM's host
	// (BootKernel; Initrd is optional); Cmdline is the kernel command
	// line.
	Kernel  string `json:"kernel,omitempty"`
	Initrd  string `json:"initrd,omitempty"`
	Cmdline string `json:"cmdline,omitempty"`
}

// VM is one virtual machine: its shape, its disks (catalog volumes) and
// where and under which writer epoch it runs.
type VM struct {
	// ID is the catalog index of the command that created the VM.
	ID   uint64 `json:"id"`
	Name string `json:"name"`
	// VCPUs is MinVCPUs to MaxVCPUs; MemoryMiB MinMemoryMiB to
	// MaxMemoryMiB.
	VCPUs     int `json:"vcpus"`
	MemoryMiB int `json:"memory_mib"`
	// Disks are the VM's disks, in the order the guest sees them: volume
	// names, or external sources (raw:/path, qcow2:/path, nbd://...; see
	// ParseDisk). Each volume is a disk of at most one VM.
	Disks []string `json:"disks"`
	Boot  Boot     `json:"boot"`
	// Host is the host the VM runs on, or last ran on; "" before its
	// first start.
	Host string `json:"host,omitempty"`
	// State is the desired state: VMStopped or VMRunning.
	State string `json:"state"`
	// Epoch is the writer epoch of the current run: the catalog index of
	// the command that started the VM (or, later, moved its writer to
	// another host). Its disks' Writer is Epoch. 0 when stopped.
	Epoch   uint64    `json:"epoch,omitempty"`
	Created time.Time `json:"created"`
	// Migration is the live migration in progress, if any;
	// LastMigration how the last one ended.
	Migration     *Migration       `json:"migration,omitempty"`
	LastMigration *MigrationResult `json:"last_migration,omitempty"`
	// DiskMove is the disk move in progress, if any; LastDiskMove how
	// the last one ended (diskmove.go).
	DiskMove     *DiskMove       `json:"disk_move,omitempty"`
	LastDiskMove *DiskMoveResult `json:"last_disk_move,omitempty"`
	// Changed is the catalog index of the command that last changed it.
	Changed uint64 `json:"changed"`
}

func (vm *VM) clone() *VM {
	c := *vm
	c.Disks = slices.Clone(vm.Disks)
	if vm.Migration != nil {
		m := *vm.Migration
		c.Migration = &m
	}
	if vm.LastMigration != nil {
		r := *vm.LastMigration
		c.LastMigration = &r
	}
	if vm.DiskMove != nil {
		m := *vm.DiskMove
		c.DiskMove = &m
	}
	if vm.LastDiskMove != nil {
		r := *vm.LastDiskMove
		c.LastDiskMove = &r
	}
	return &c
}

// VMNames returns the VMs' names, sorted.
func (s *State) VMNames() []string {
	return slices.Sorted(maps.Keys(s.VMs))
}

// DiskOf returns the name of the VM that has the volume as a disk, or
// as the target of its disk move; "" if none.
func (s *State) DiskOf(volumeName string) string {
	for _, name := range s.VMNames() {
		vm := s.VMs[name]
		if slices.Contains(vm.Disks, volumeName) || vm.DiskMove != nil && vm.DiskMove.To == volumeName {
			return name
		}
	}
	return ""
}

// ValidateVMName checks a VM name: the rules of volume names, 1 to 63
// characters of lowercase letters, digits, '.', '_' and '-', starting with
// a letter or digit.
func ValidateVMName(name string) error {
	if volume.ValidateName(name) != nil {
		return fmt.Errorf("invalid VM name %q: use 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

// Validate reports what is wrong with b, if anything.
func (b Boot) Validate() error {
	switch b.Kind {
	case BootDisk:
		if b.Kernel != "" || b.Initrd != "" || b.Cmdline != "" {
			return fmt.Errorf("boot from disk takes no kernel, initrd or cmdline (boot kind %q does)", BootKernel)
		}
		return nil
	case BootKernel:
		if b.Kernel == "" {
			return fmt.Errorf("boot kind %q needs a kernel: the path of a kernel image on the VM's host", BootKernel)
		}
		if err := checkBootPath("kernel", b.Kernel); err != nil {
			return err
		}
		if b.Initrd != "" {
			if err := checkBootPath("initrd", b.Initrd); err != nil {
				return err
			}
		}
		if len(b.Cmdline) > MaxBootString {
			return fmt.Errorf("cmdline: %d bytes, at most %d", len(b.Cmdline), MaxBootString)
		}
		if strings.ContainsFunc(b.Cmdline, isControl) {
			return fmt.Errorf("cmdline %q: control characters (newline, tab, NUL...) are not allowed", b.Cmdline)
		}
		return nil
	}
	return fmt.Errorf("boot kind %q: want %q or %q", b.Kind, BootDisk, BootKernel)
}

func checkBootPath(what, p string) error {
	switch {
	case len(p) > MaxBootString:
		return fmt.Errorf("%s: a path of %d bytes, at most %d", what, len(p), MaxBootString)
	case strings.ContainsFunc(p, isControl):
		return fmt.Errorf("%s %q: control characters are not allowed in a path", what, p)
	case !filepath.IsAbs(p):
		return fmt.Errorf("%s %q: want an absolute path of a file on the VM's host", what, p)
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// CheckNewVM reports why vm cannot be created now, if it cannot: a bad
// name, shape, disk or boot (ErrInvalid), a name taken (ErrExists), a
// volume disk that does not exist (ErrNotFound) or is a disk of another
// VM (ErrInUse).
// The VM's ID, Host, State, Epoch, Created and Changed are ignored.
func (s *State) CheckNewVM(vm VM) error {
	if err := ValidateVMName(vm.Name); err != nil {
		return fmt.Errorf("catalog: %w: %v", ErrInvalid, err)
	}
	if _, ok := s.VMs[vm.Name]; ok {
		return fmt.Errorf("catalog: VM %q: %w", vm.Name, ErrExists)
	}
	if vm.VCPUs < MinVCPUs || vm.VCPUs > MaxVCPUs {
		return fmt.Errorf("catalog: VM %q: %w: vcpus %d, want %d to %d", vm.Name, ErrInvalid, vm.VCPUs, MinVCPUs, MaxVCPUs)
	}
	if vm.MemoryMiB < MinMemoryMiB || vm.MemoryMiB > MaxMemoryMiB {
		return fmt.Errorf("catalog: VM %q: %w: memory %s, want %s to %s", vm.Name, ErrInvalid,
			volume.FormatSize(int64(vm.MemoryMiB)<<20), volume.FormatSize(MinMemoryMiB<<20), volume.FormatSize(MaxMemoryMiB<<20))
	}
	if len(vm.Disks) < 1 || len(vm.Disks) > MaxDisks {
		return fmt.Errorf("catalog: VM %q: %w: %d disks, want 1 to %d", vm.Name, ErrInvalid, len(vm.Disks), MaxDisks)
	}
	for i, d := range vm.Disks {
		if slices.Contains(vm.Disks[:i], d) {
			return fmt.Errorf("catalog: VM %q: %w: disk %q is listed twice", vm.Name, ErrInvalid, d)
		}
		p, err := ParseDisk(d)
		if err != nil {
			return fmt.Errorf("catalog: VM %q: %w", vm.Name, err)
		}
		if !p.IsVolume() {
			continue
		}
		if _, ok := s.Volumes[d]; !ok {
			return fmt.Errorf("catalog: VM %q: disk %q: %w: no such volume", vm.Name, d, ErrNotFound)
		}
		if other := s.DiskOf(d); other != "" {
			return fmt.Errorf("catalog: VM %q: disk %q: %w as a disk of VM %q", vm.Name, d, ErrInUse, other)
		}
	}
	if err := vm.Boot.Validate(); err != nil {
		return fmt.Errorf("catalog: VM %q: %w: %v", vm.Name, ErrInvalid, err)
	}
	return nil
}

// CheckStartVM reports why VM name cannot be started on host now, if it
// cannot: no such VM or host (ErrNotFound), or the VM runs already
// (ErrRunning).
func (s *State) CheckStartVM(name, host string) error {
	vm, ok := s.VMs[name]
	if !ok {
		return fmt.Errorf("catalog: VM %q: %w", name, ErrNotFound)
	}
	if vm.State == VMRunning {
		return fmt.Errorf("catalog: VM %q: already %w on %s (epoch %d)", name, ErrRunning, vm.Host, vm.Epoch)
	}
	if host == "" {
		return fmt.Errorf("catalog: VM %q: %w: start without a host", name, ErrInvalid)
	}
	if _, ok := s.Hosts[host]; !ok {
		return fmt.Errorf("catalog: VM %q: host %q: %w", name, host, ErrNotFound)
	}
	if f := fileDisk(vm); f != "" && vm.Host != "" && host != vm.Host {
		return fmt.Errorf("catalog: VM %q: %w: its disk %s is a file on host %s: start it there (or move the disk into a volume first)", name, ErrInvalid, f, vm.Host)
	}
	return s.checkDisks(vm)
}

// checkDisks checks the invariant that a VM's volume disks exist
// (remove_volume refuses to remove a VM's disk).
func (s *State) checkDisks(vm *VM) error {
	for _, d := range vm.Disks {
		if !isVolumeDisk(d) {
			continue
		}
		if _, ok := s.Volumes[d]; !ok {
			return fmt.Errorf("catalog: VM %q: disk %q: %w: no such volume", vm.Name, d, ErrNotFound)
		}
	}
	return nil
}

// setWriter gives vm's disks the writer epoch w, set by the command at
// index.
func (s *State) setWriter(vm *VM, w, index uint64) {
	for _, d := range vm.Disks {
		s.setVolumeWriter(d, w, index)
	}
}

// leadFrom makes host the preferred leader of each of vm's disks it holds
// a replica of: a running VM's writes are then served on its own host.
func (s *State) leadFrom(vm *VM, host string) {
	for _, d := range vm.Disks {
		if v, ok := s.Volumes[d]; ok && slices.Contains(v.Replicas, host) {
			v.PreferredLeader = host
		}
	}
}

// applyVM applies the VM commands.
func (s *State) applyVM(index uint64, c Command) error {
	switch c.Kind {
	case CmdCreateVM:
		if c.VM == nil {
			return fmt.Errorf("catalog: %w: create without a VM", ErrInvalid)
		}
		if err := s.CheckNewVM(*c.VM); err != nil {
			return err
		}
		vm := c.VM.clone()
		vm.ID, vm.Created, vm.Changed = index, c.At, index
		vm.Host, vm.State, vm.Epoch = "", VMStopped, 0
		s.VMs[vm.Name] = vm
		return nil
	case CmdStartVM:
		if err := s.CheckStartVM(c.Name, c.Target); err != nil {
			return err
		}
		vm := s.VMs[c.Name]
		vm.State, vm.Host, vm.Epoch, vm.Changed = VMRunning, c.Target, index, index
		s.setWriter(vm, index, index)
		s.leadFrom(vm, c.Target)
		return nil
	case CmdStopVM:
		vm, ok := s.VMs[c.Name]
		if !ok {
			return fmt.Errorf("catalog: VM %q: %w", c.Name, ErrNotFound)
		}
		if vm.State != VMRunning {
			return fmt.Errorf("catalog: VM %q: already %w", c.Name, ErrStopped)
		}
		if err := s.checkDisks(vm); err != nil {
			return err
		}
		vm.State, vm.Epoch, vm.Changed = VMStopped, 0, index
		if m := vm.Migration; m != nil {
			// Stopping ends a migration: both QEMUs stop.
			vm.LastMigration = &MigrationResult{From: m.From, To: m.To, Result: ResultCancelled, Error: "the VM was stopped", Finished: c.At}
			vm.Migration = nil
		}
		if m := vm.DiskMove; m != nil {
			// Stopping ends a disk move: before the pivot the source
			// holds every write, from the pivot on the target does.
			r := DiskMoveResult{Result: ResultCancelled, Error: "the VM was stopped"}
			if m.Phase == DiskMovePivoting {
				r = DiskMoveResult{Result: ResultCompleted, Error: "the VM was stopped during the pivot: its disk is the target"}
			}
			s.endDiskMove(vm, index, r, c.At)
		}
		s.setWriter(vm, 0, index)
		return nil
	case CmdDeleteVM:
		vm, ok := s.VMs[c.Name]
		if !ok {
			return fmt.Errorf("catalog: VM %q: %w", c.Name, ErrNotFound)
		}
		if vm.State == VMRunning {
			return fmt.Errorf("catalog: VM %q: %w on %s (stop it first)", c.Name, ErrRunning, vm.Host)
		}
		delete(s.VMs, c.Name)
		return nil
	}
	return fmt.Errorf("catalog: %w: unknown command %q", ErrInvalid, c.Kind)
}
