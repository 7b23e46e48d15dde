package catalog

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-project/tandem/volume"
)

// A VM disk is a Tandem volume or an external source (docs/move-disk.md):
//
//	NAME                     the Tandem volume NAME
//	raw:/abs/path            a raw image file on the VM's host
//	qcow2:/abs/path          a qcow2 image file on the VM's host
//	nbd://HOST[:PORT]/EXPORT an export of another NBD server (port 10809 by default)
//
// VM.Disks holds these strings; ParseDisk reads them.

// Disk kinds.
const (
	DiskVolume = "volume"
	DiskRaw    = "raw"
	DiskQcow2  = "qcow2"
	DiskNBD    = "nbd"
)

// DefaultNBDPort is the port of an nbd:// disk that names none.
const DefaultNBDPort = "10809"

// Disk is one parsed VM disk.
type Disk struct {
	// Kind is DiskVolume, DiskRaw, DiskQcow2 or DiskNBD.
	Kind string
	// Volume is the volume's name (DiskVolume); Path the image file's
	// absolute path (DiskRaw, DiskQcow2); Server (host:port) and Export
	// the NBD server and export name (DiskNBD).
	Volume string
	Path   string
	Server string
	Export string
}

// IsVolume reports whether d is a Tandem volume.
func (d Disk) IsVolume() bool { return d.Kind == DiskVolume }

// IsFile reports whether d is an image file on the VM's host.
func (d Disk) IsFile() bool { return d.Kind == DiskRaw || d.Kind == DiskQcow2 }

// String returns d in the form ParseDisk reads.
func (d Disk) String() string {
	switch d.Kind {
	case DiskRaw, DiskQcow2:
		return d.Kind + ":" + d.Path
	case DiskNBD:
		return "nbd://" + d.Server + "/" + d.Export
	}
	return d.Volume
}

// diskSyntax is the help ParseDisk's errors end with.
const diskSyntax = "want a volume name, raw:/abs/path, qcow2:/abs/path or nbd://host[:port]/export"

// ParseDisk parses a VM disk (see the syntax above). Every error wraps
// ErrInvalid and names the disk.
func ParseDisk(s string) (Disk, error) {
	bad := func(format string, args ...any) (Disk, error) {
		return Disk{}, fmt.Errorf("catalog: %w: disk %q: %s", ErrInvalid, s, fmt.Sprintf(format, args...))
	}
	if len(s) > MaxBootString {
		return bad("%d bytes, at most %d", len(s), MaxBootString)
	}
	if strings.ContainsFunc(s, isControl) {
		return bad("control characters are not allowed")
	}
	kind, rest, ok := strings.Cut(s, ":")
	if !ok {
		if volume.ValidateName(s) != nil {
			return bad("not a volume name (1-63 lowercase letters, digits, '.', '_' or '-'): %s", diskSyntax)
		}
		return Disk{Kind: DiskVolume, Volume: s}, nil
	}
	switch kind {
	case DiskRaw, DiskQcow2:
		if !filepath.IsAbs(rest) || filepath.Clean(rest) != rest {
			return bad("%q is not a clean absolute path of a file on the VM's host", rest)
		}
		return Disk{Kind: kind, Path: rest}, nil
	case DiskNBD:
		u, err := url.Parse(s)
		if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || !strings.HasPrefix(rest, "//") {
			return bad("want nbd://host[:port]/export")
		}
		host, port := u.Hostname(), u.Port()
		if port == "" {
			port = DefaultNBDPort
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return bad("bad port %q", port)
		}
		export := strings.TrimPrefix(u.Path, "/")
		if strings.Contains(export, "%") || len(export) > 4096 {
			return bad("bad export name %q", export)
		}
		return Disk{Kind: DiskNBD, Server: net.JoinHostPort(host, port), Export: export}, nil
	}
	return bad("unknown kind %q: %s", kind, diskSyntax)
}

// isVolumeDisk reports whether disk string d names a volume (any string
// ParseDisk would not read as an external source).
func isVolumeDisk(d string) bool { return !strings.Contains(d, ":") }

// fileDisk returns the first of vm's disks that is an image file on its
// host ("" if none).
func fileDisk(vm *VM) string {
	for _, d := range vm.Disks {
		if p, err := ParseDisk(d); err == nil && p.IsFile() {
			return d
		}
	}
	return ""
}

// Disk move phases (docs/move-disk.md).
const (
	// DiskMoveCopying: the VM's host mirrors the disk to the target
	// (QEMU's blockdev-mirror, copy-mode write-blocking). The source is
	// authoritative: cancel or failure leaves the VM on it.
	DiskMoveCopying = "copying"
	// DiskMovePivoting: the mirror was ready (every write acknowledged
	// since is on both sides) when this was recorded; the VM's host
	// pivots to the target. The target is authoritative: a VM started
	// from now on opens it, and the move can only complete (or fail if
	// the host saw its QEMU still running on the source after the mirror
	// ended).
	DiskMovePivoting = "pivoting"
)

// Disk move commands.
const (
	// CmdMoveDisk starts a move of VM Name's disk DiskMove.Disk to
	// DiskMove.To.
	CmdMoveDisk = "move_disk"
	// CmdDiskMovePhase advances the move DiskMove.ID to DiskMove.Phase
	// (pivoting).
	CmdDiskMovePhase = "disk_move_phase"
	// CmdEndDiskMove ends the move DiskMove.ID with DiskMove.Result:
	// completed (the VM's disk becomes the target), cancelled or failed
	// (it stays the source).
	CmdEndDiskMove = "end_disk_move"
)

// ErrNoDiskMove: the command names a disk move that is not the VM's
// current one (it ended, or another began).
var ErrNoDiskMove = errors.New("no such disk move")

// DiskMove is a move of one VM disk in progress.
type DiskMove struct {
	// ID is the catalog index of the move_disk command.
	ID uint64 `json:"id"`
	// Disk is the index of the disk in VM.Disks; From the disk (as in
	// VM.Disks), To the target (same syntax).
	Disk  int    `json:"disk"`
	From  string `json:"from"`
	To    string `json:"to"`
	Phase string `json:"phase"`
	// MaxRate limits the background copy, in bytes per second (0: none);
	// the guest's own writes are never held back by it.
	MaxRate int64     `json:"max_rate,omitempty"`
	Started time.Time `json:"started"`
}

// DiskMoveResult is how a VM's last disk move ended.
type DiskMoveResult struct {
	ID   uint64 `json:"id"`
	Disk int    `json:"disk"`
	From string `json:"from"`
	To   string `json:"to"`
	// Result is completed, cancelled or failed (ResultCompleted...);
	// Error says why a move did not complete.
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
	// Bytes is what the mirror copied; Copy how long until it was ready;
	// Pivot how long the pivot took (the catalog commit and QEMU's
	// job-complete).
	Bytes    int64         `json:"bytes,omitempty"`
	Copy     time.Duration `json:"copy_ns,omitempty"`
	Pivot    time.Duration `json:"pivot_ns,omitempty"`
	Started  time.Time     `json:"started"`
	Finished time.Time     `json:"finished"`
}

// DiskMoveCommand carries the fields of the disk move commands
// (Command.DiskMove).
type DiskMoveCommand struct {
	// ID names the move (disk_move_phase, end_disk_move).
	ID uint64 `json:"id,omitempty"`
	// Disk and To: the disk to move and its target (move_disk).
	Disk    int    `json:"disk,omitempty"`
	To      string `json:"to,omitempty"`
	MaxRate int64  `json:"max_rate,omitempty"`
	Phase   string `json:"phase,omitempty"`
	// Result is how the move ended (end_disk_move).
	Result *DiskMoveResult `json:"result,omitempty"`
}

// CheckMoveDisk reports why disk i of VM name cannot move to to now.
func (s *State) CheckMoveDisk(name string, i int, to string) error {
	vm, ok := s.VMs[name]
	if !ok {
		return fmt.Errorf("catalog: VM %q: %w", name, ErrNotFound)
	}
	if vm.State != VMRunning {
		return fmt.Errorf("catalog: VM %q: %w: a disk moves while its VM runs (start it first)", name, ErrStopped)
	}
	if vm.Migration != nil {
		return fmt.Errorf("catalog: VM %q: %w: it is migrating to %s (wait, or cancel the migration)", name, ErrInUse, vm.Migration.To)
	}
	if m := vm.DiskMove; m != nil {
		return fmt.Errorf("catalog: VM %q: %w: moving disk %d to %s already (wait, or cancel it)", name, ErrExists, m.Disk, m.To)
	}
	if i < 0 || i >= len(vm.Disks) {
		return fmt.Errorf("catalog: VM %q: %w: no disk %d (it has disks 0 to %d)", name, ErrInvalid, i, len(vm.Disks)-1)
	}
	d, err := ParseDisk(to)
	if err != nil {
		return err
	}
	if to == vm.Disks[i] || slices.Contains(vm.Disks, to) {
		return fmt.Errorf("catalog: VM %q: %w: %s is a disk of the VM already", name, ErrInvalid, to)
	}
	if d.IsVolume() {
		v, ok := s.Volumes[to]
		if !ok {
			return fmt.Errorf("catalog: VM %q: target volume %q: %w (create it first, the size of the disk)", name, to, ErrNotFound)
		}
		if v.ReadOnly {
			return fmt.Errorf("catalog: VM %q: %w: target volume %q is read-only", name, ErrInvalid, to)
		}
		if other := s.DiskOf(to); other != "" {
			return fmt.Errorf("catalog: VM %q: target volume %q: %w as a disk of VM %q", name, to, ErrInUse, other)
		}
		if from, ok := s.Volumes[vm.Disks[i]]; ok && from.Size != v.Size {
			return fmt.Errorf("catalog: VM %q: %w: target volume %q is %s, disk %s is %s: sizes must match", name, ErrInvalid,
				to, volume.FormatSize(v.Size), from.Name, volume.FormatSize(from.Size))
		}
	}
	return nil
}

// diskMove returns VM c.Name's disk move c.DiskMove.ID.
func (s *State) diskMove(c Command) (*VM, *DiskMove, error) {
	vm, ok := s.VMs[c.Name]
	if !ok {
		return nil, nil, fmt.Errorf("catalog: VM %q: %w", c.Name, ErrNotFound)
	}
	if c.DiskMove == nil {
		return nil, nil, fmt.Errorf("catalog: %w: %s without its move", ErrInvalid, c.Kind)
	}
	if vm.DiskMove == nil || vm.DiskMove.ID != c.DiskMove.ID {
		return nil, nil, fmt.Errorf("catalog: VM %q: disk move %d: %w", c.Name, c.DiskMove.ID, ErrNoDiskMove)
	}
	return vm, vm.DiskMove, nil
}

// setVolumeWriter gives volume name (if it is one) the writer epoch w, set
// by the command at index.
func (s *State) setVolumeWriter(name string, w, index uint64) {
	if v, ok := s.Volumes[name]; ok {
		v.Writer, v.WriterGen, v.Changed = w, index, index
	}
}

// endDiskMove ends vm's disk move with result r (its Result and Error
// set) at index: a completed move makes the target the VM's disk and
// releases the source volume's writer; any other releases the target's.
func (s *State) endDiskMove(vm *VM, index uint64, r DiskMoveResult, at time.Time) {
	m := vm.DiskMove
	r.ID, r.Disk, r.From, r.To, r.Started, r.Finished = m.ID, m.Disk, m.From, m.To, m.Started, at
	if r.Result == ResultCompleted {
		vm.Disks[m.Disk] = m.To
		s.setVolumeWriter(m.From, 0, index)
		if v, ok := s.Volumes[m.To]; ok && vm.Host != "" && slices.Contains(v.Replicas, vm.Host) {
			v.PreferredLeader = vm.Host
		}
	} else {
		s.setVolumeWriter(m.To, 0, index)
	}
	vm.LastDiskMove, vm.DiskMove = &r, nil
	vm.Changed = index
}

// applyDiskMove applies the disk move commands.
func (s *State) applyDiskMove(index uint64, c Command) error {
	if c.Kind == CmdMoveDisk {
		if c.DiskMove == nil {
			return fmt.Errorf("catalog: %w: move_disk without its move", ErrInvalid)
		}
		if err := s.CheckMoveDisk(c.Name, c.DiskMove.Disk, c.DiskMove.To); err != nil {
			return err
		}
		if c.DiskMove.MaxRate < 0 {
			return fmt.Errorf("catalog: VM %q: %w: negative rate", c.Name, ErrInvalid)
		}
		vm := s.VMs[c.Name]
		vm.DiskMove = &DiskMove{ID: index, Disk: c.DiskMove.Disk, From: vm.Disks[c.DiskMove.Disk], To: c.DiskMove.To,
			Phase: DiskMoveCopying, MaxRate: c.DiskMove.MaxRate, Started: c.At}
		// The VM's run writes the target under its own epoch.
		s.setVolumeWriter(c.DiskMove.To, vm.Epoch, index)
		vm.Changed = index
		return nil
	}
	vm, m, err := s.diskMove(c)
	if err != nil {
		return err
	}
	switch c.Kind {
	case CmdDiskMovePhase:
		if m.Phase != DiskMoveCopying || c.DiskMove.Phase != DiskMovePivoting {
			return fmt.Errorf("catalog: VM %q: %w: disk move from phase %s to %q", c.Name, ErrInvalid, m.Phase, c.DiskMove.Phase)
		}
		m.Phase = DiskMovePivoting
		vm.Changed = index
		return nil
	case CmdEndDiskMove:
		r := c.DiskMove.Result
		if r == nil {
			return fmt.Errorf("catalog: VM %q: %w: end of a disk move without a result", c.Name, ErrInvalid)
		}
		switch {
		case r.Result == ResultCompleted && m.Phase != DiskMovePivoting:
			return fmt.Errorf("catalog: VM %q: %w: disk move completed in phase %s", c.Name, ErrInvalid, m.Phase)
		case r.Result == ResultCancelled && m.Phase != DiskMoveCopying:
			return fmt.Errorf("catalog: VM %q: %w: too late to cancel, the disk move is %s", c.Name, ErrInvalid, m.Phase)
		case r.Result != ResultCompleted && r.Result != ResultCancelled && r.Result != ResultFailed:
			return fmt.Errorf("catalog: VM %q: %w: unknown disk move result %q", c.Name, ErrInvalid, r.Result)
		}
		s.endDiskMove(vm, index, *r, c.At)
		return nil
	}
	return fmt.Errorf("catalog: %w: unknown command %q", ErrInvalid, c.Kind)
}
