// Package catalog is the cluster's catalog: hosts, volumes and VMs (and
// later migrations), changed only by commands applied in the order of the
// control-plane Raft log, so that every agent holds the same catalog.
//
// Commands are deterministic: whatever needs a choice (placement of a new
// volume's replicas, timestamps) is decided by the proposer and carried in
// the command. Apply validates again and refuses a command that no longer
// fits (a name taken meanwhile), returning the error to the proposer.
package catalog

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/tandem-project/tandem/volume"
)

// Host is one agent of the cluster as recorded in the catalog.
type Host struct {
	Name string `json:"name"`
	// Addresses the host serves on.
	RaftAddr  string `json:"raft_addr"`
	NBDAddr   string `json:"nbd_addr"`
	AdminAddr string `json:"admin_addr,omitempty"`
	// Capacity is the host's storage for volumes, in bytes; DiskFree the
	// free bytes of its data filesystem when it last reported.
	Capacity int64 `json:"capacity"`
	DiskFree int64 `json:"disk_free"`
	// State is the host's membership state as the control leader last
	// recorded it: alive, failed or left, or HostRevoked; Since is when
	// it took that state (self-healing counts a failed host's time down
	// from it).
	State string    `json:"state"`
	Since time.Time `json:"since,omitzero"`
	// Joined is when the host first registered.
	Joined time.Time `json:"joined"`
	// Drained hosts get no new replicas, and the control leader moves
	// the replicas they hold to other hosts (drain_host).
	Drained bool `json:"drained,omitempty"`
}

// Volume is one replicated volume.
type Volume struct {
	// ID is the catalog index of the command that created the volume:
	// unique over the cluster's life, so that a replica left over from a
	// deleted volume is never mistaken for one of a new volume of the same
	// name.
	ID   uint64 `json:"id"`
	Name string `json:"name"`
	Size int64  `json:"size"`
	// Replicas are the hosts holding a replica, distinct, in placement
	// order.
	Replicas []string `json:"replicas"`
	// PreferredLeader is the replica host that should lead the volume.
	PreferredLeader string    `json:"preferred_leader"`
	ReadOnly        bool      `json:"read_only,omitempty"`
	Created         time.Time `json:"created"`
	// Changed is the catalog index of the command that last changed it.
	Changed uint64 `json:"changed"`
	// Writer is the writer epoch allowed to write the volume: the Epoch
	// of the VM run that uses it as a disk (see VM.Epoch); 0 lets anyone
	// write. Storage fencing refuses writes from any other epoch, so that
	// a VM's old run (a resumed migration source, a host thought dead)
	// cannot write once a newer run owns the disk.
	Writer uint64 `json:"writer,omitempty"`
	// WriterGen is the catalog index of the command that last set Writer
	// (start_vm, stop_vm): it orders Writer changes, including those back
	// to 0. 0 if Writer was never set.
	WriterGen uint64 `json:"writer_gen,omitempty"`
	// Move is the replica move under way, LastMove how the last one ended
	// (move.go); Planned the moves that follow Move, one after the other,
	// when it completes (a replica set move).
	Move     *Move         `json:"move,omitempty"`
	LastMove *MoveResult   `json:"last_move,omitempty"`
	Planned  []PlannedMove `json:"planned_moves,omitempty"`
	// Verify is the verification of the replicas under way, LastVerify
	// how the last one ended (verify.go).
	Verify     *Verify       `json:"verify,omitempty"`
	LastVerify *VerifyResult `json:"last_verify,omitempty"`
	// Opened lists the replica hosts that have created their replica
	// (replica.go): one of them whose replica has no state lost it.
	Opened []string `json:"opened,omitempty"`
}

// State is the whole catalog.
type State struct {
	Hosts   map[string]*Host   `json:"hosts"`
	Volumes map[string]*Volume `json:"volumes"`
	VMs     map[string]*VM     `json:"vms"`
	// Removed lists the IDs of deleted volumes (the newest 10000), so that
	// an agent removes a replica only on proof that its volume is gone,
	// never because its own catalog is behind.
	Removed []uint64 `json:"removed,omitempty"`
	// Index is the log index of the last command applied.
	Index uint64 `json:"index"`
}

// maxRemoved bounds State.Removed.
const maxRemoved = 10000

// HostRevoked is the state of a host that gossip sees alive but whose
// peer certificate the control leader found revoked: shut out of the
// replication port, it takes no new replicas, and self-healing moves its
// replicas away as from a failed host.
const HostRevoked = "revoked"

// IsRemoved reports whether the volume with this ID was deleted.
func (s *State) IsRemoved(id uint64) bool { return slices.Contains(s.Removed, id) }

// New returns an empty catalog.
func New() *State {
	return &State{Hosts: map[string]*Host{}, Volumes: map[string]*Volume{}, VMs: map[string]*VM{}}
}

// Clone returns a deep copy of s.
func (s *State) Clone() *State {
	c := &State{Hosts: make(map[string]*Host, len(s.Hosts)), Volumes: make(map[string]*Volume, len(s.Volumes)),
		VMs: make(map[string]*VM, len(s.VMs)), Index: s.Index, Removed: slices.Clone(s.Removed)}
	for k, h := range s.Hosts {
		hc := *h
		c.Hosts[k] = &hc
	}
	for k, v := range s.Volumes {
		vc := *v
		vc.Replicas = slices.Clone(v.Replicas)
		c.Volumes[k] = &vc
	}
	for k, vm := range s.VMs {
		c.VMs[k] = vm.clone()
	}
	return c
}

// HostNames returns the hosts' names, sorted.
func (s *State) HostNames() []string {
	return slices.Sorted(maps.Keys(s.Hosts))
}

// VolumeNames returns the volumes' names, sorted.
func (s *State) VolumeNames() []string {
	return slices.Sorted(maps.Keys(s.Volumes))
}

// Allocated returns the bytes of volume replicas placed on host.
func (s *State) Allocated(host string) int64 {
	var n int64
	for _, v := range s.Volumes {
		if slices.Contains(v.Replicas, host) {
			n += v.Size
		}
	}
	return n
}

// Command kinds.
const (
	CmdPutHost      = "put_host"
	CmdCreateVolume = "create_volume"
	CmdResizeVolume = "resize_volume"
	CmdRemoveVolume = "remove_volume"
	CmdCreateVM     = "create_vm"
	CmdStartVM      = "start_vm"
	CmdStopVM       = "stop_vm"
	CmdDeleteVM     = "delete_vm"
	// CmdDrainHost sets host Name's Drained flag to Drained.
	CmdDrainHost = "drain_host"
)

// Command is one change to the catalog, as stored in the control log.
type Command struct {
	Kind   string  `json:"kind"`
	Host   *Host   `json:"host,omitempty"`
	Volume *Volume `json:"volume,omitempty"`
	// VM is the new VM of create_vm.
	VM *VM `json:"vm,omitempty"`
	// Name and Size address an existing volume (resize, remove) or VM
	// (start, stop, delete).
	Name string `json:"name,omitempty"`
	Size int64  `json:"size,omitempty"`
	// Target is the host a VM starts on (start_vm). A future migrate_vm
	// will name its destination here and take a new writer epoch (its own
	// index) the way start_vm does; fields it needs beyond these (the
	// source's epoch to check, a phase) get their own names.
	Target string `json:"target,omitempty"`
	// Epoch names the migration a migration command is about (the
	// destination epoch); URI is the destination's (migration_ready);
	// Result how it ended (end_migration).
	Epoch  uint64           `json:"epoch,omitempty"`
	URI    string           `json:"uri,omitempty"`
	Result *MigrationResult `json:"result,omitempty"`
	// Bandwidth limits a migration (migrate_vm), in bytes per second.
	Bandwidth int64 `json:"bandwidth,omitempty"`
	// Drained is the flag drain_host sets.
	Drained bool `json:"drained,omitempty"`
	// Move carries the replica move commands' fields (move.go).
	Move *MoveCommand `json:"move,omitempty"`
	// DiskMove carries the disk move commands' fields (diskmove.go).
	DiskMove *DiskMoveCommand `json:"disk_move,omitempty"`
	// Verify carries the verification commands' fields (verify.go).
	Verify *VerifyCommand `json:"verify,omitempty"`
	// At is when the proposer issued the command.
	At time.Time `json:"at"`
}

// Encode returns the command's log entry data.
func (c Command) Encode() []byte {
	b, err := json.Marshal(c)
	if err != nil {
		panic(fmt.Sprintf("catalog: encoding command: %v", err)) // only plain data inside
	}
	return b
}

// Errors returned by Apply (and by the proposer's own checks).
var (
	ErrExists    = errors.New("already exists")
	ErrNotFound  = errors.New("not found")
	ErrInvalid   = errors.New("invalid")
	ErrNoPlace   = errors.New("not enough hosts")
	ErrShrinking = errors.New("volumes never shrink")
	// ErrInUse: a volume is a disk of a VM (it cannot be removed, or be
	// a disk of another VM).
	ErrInUse = errors.New("in use")
	// ErrRunning: the VM is running (start_vm, delete_vm).
	ErrRunning = errors.New("running")
	// ErrStopped: the VM is stopped (stop_vm).
	ErrStopped = errors.New("stopped")
)

// Apply applies the command encoded in data at log index. It returns the
// command's error, if it was refused; a refused command changes nothing.
func (s *State) Apply(index uint64, data []byte) error {
	var c Command
	if err := json.Unmarshal(data, &c); err != nil {
		return fmt.Errorf("catalog: %w: undecodable command: %v", ErrInvalid, err)
	}
	err := s.apply(index, c)
	s.Index = index
	return err
}

func (s *State) apply(index uint64, c Command) error {
	switch c.Kind {
	case CmdPutHost:
		if c.Host == nil || c.Host.Name == "" {
			return fmt.Errorf("catalog: %w: host without a name", ErrInvalid)
		}
		h := *c.Host
		if old, ok := s.Hosts[h.Name]; ok {
			h.Joined, h.Drained = old.Joined, old.Drained
			if old.State == h.State && !old.Since.IsZero() {
				h.Since = old.Since
			}
		}
		if h.Since.IsZero() {
			h.Since = c.At
		}
		s.Hosts[h.Name] = &h
		return nil
	case CmdCreateVolume:
		v := c.Volume
		if v == nil {
			return fmt.Errorf("catalog: %w: create without a volume", ErrInvalid)
		}
		if err := s.CheckNewVolume(*v); err != nil {
			return err
		}
		nv := *v
		nv.Replicas = slices.Clone(v.Replicas)
		nv.ID, nv.Created, nv.Changed = index, c.At, index
		nv.Writer, nv.WriterGen = 0, 0
		nv.Opened = nil
		s.Volumes[nv.Name] = &nv
		return nil
	case CmdResizeVolume:
		v, ok := s.Volumes[c.Name]
		if !ok {
			return fmt.Errorf("catalog: volume %q: %w", c.Name, ErrNotFound)
		}
		if c.Size < v.Size {
			return fmt.Errorf("catalog: volume %q: %w (%s to %s)", c.Name, ErrShrinking, volume.FormatSize(v.Size), volume.FormatSize(c.Size))
		}
		v.Size, v.Changed = c.Size, index
		return nil
	case CmdRemoveVolume:
		v, ok := s.Volumes[c.Name]
		if !ok {
			return fmt.Errorf("catalog: volume %q: %w", c.Name, ErrNotFound)
		}
		if vm := s.DiskOf(c.Name); vm != "" {
			if m := s.VMs[vm].DiskMove; m != nil && m.To == c.Name {
				return fmt.Errorf("catalog: volume %q: %w as the target of VM %q's disk move (cancel it first)", c.Name, ErrInUse, vm)
			}
			return fmt.Errorf("catalog: volume %q: %w as a disk of VM %q (delete the VM first)", c.Name, ErrInUse, vm)
		}
		delete(s.Volumes, c.Name)
		s.Removed = append(s.Removed, v.ID)
		if len(s.Removed) > maxRemoved {
			s.Removed = slices.Clone(s.Removed[len(s.Removed)-maxRemoved:])
		}
		return nil
	case CmdCreateVM, CmdStartVM, CmdStopVM, CmdDeleteVM:
		return s.applyVM(index, c)
	case CmdMigrateVM, CmdMigrationReady, CmdSwitchVM, CmdEndMigration:
		return s.applyMigration(index, c)
	case CmdDrainHost:
		h, ok := s.Hosts[c.Name]
		if !ok {
			return fmt.Errorf("catalog: host %q: %w", c.Name, ErrNotFound)
		}
		hc := *h
		hc.Drained = c.Drained
		s.Hosts[c.Name] = &hc
		return nil
	case CmdMoveReplica, CmdMovePhase, CmdEndMove:
		return s.applyMove(index, c)
	case CmdReplicaOpened:
		return s.applyReplicaOpened(index, c)
	case CmdMoveDisk, CmdDiskMovePhase, CmdEndDiskMove:
		return s.applyDiskMove(index, c)
	case CmdVerifyVolume, CmdEndVerify:
		return s.applyVerify(index, c)
	}
	return fmt.Errorf("catalog: %w: unknown command %q", ErrInvalid, c.Kind)
}

// CheckNewVolume reports why v cannot be created now, if it cannot.
func (s *State) CheckNewVolume(v Volume) error {
	if err := volume.ValidateName(v.Name); err != nil {
		return fmt.Errorf("catalog: %w: %v", ErrInvalid, err)
	}
	if _, ok := s.Volumes[v.Name]; ok {
		return fmt.Errorf("catalog: volume %q: %w", v.Name, ErrExists)
	}
	if v.Size <= 0 {
		return fmt.Errorf("catalog: volume %q: %w: size must be positive", v.Name, ErrInvalid)
	}
	if len(v.Replicas) < 1 || len(v.Replicas) > 5 {
		return fmt.Errorf("catalog: volume %q: %w: %d replicas, want 1 to 5", v.Name, ErrInvalid, len(v.Replicas))
	}
	seen := map[string]bool{}
	for _, h := range v.Replicas {
		if _, ok := s.Hosts[h]; !ok {
			return fmt.Errorf("catalog: volume %q: replica host %q: %w", v.Name, h, ErrNotFound)
		}
		if seen[h] {
			return fmt.Errorf("catalog: volume %q: %w: host %q holds two replicas", v.Name, ErrInvalid, h)
		}
		seen[h] = true
	}
	if v.PreferredLeader != "" && !seen[v.PreferredLeader] {
		return fmt.Errorf("catalog: volume %q: %w: preferred leader %q holds no replica", v.Name, ErrInvalid, v.PreferredLeader)
	}
	return nil
}

// Candidate is a host placement may choose, with what it knows about it.
type Candidate struct {
	Name string
	// Free is the host's free bytes for volumes (capacity minus what is
	// placed on it).
	Free int64
	// Alive is false for hosts that membership declared failed.
	Alive bool
}

// Place chooses replicas distinct hosts for a volume of size bytes: alive
// hosts with the most free space first (ties by name), and as preferred
// leader the chosen host that leads the fewest volumes, so that leaders
// spread over the cluster.
func (s *State) Place(size int64, replicas int, candidates []Candidate) (hosts []string, leader string, err error) {
	var ok []Candidate
	for _, c := range candidates {
		if c.Alive && c.Free >= size {
			ok = append(ok, c)
		}
	}
	if len(ok) < replicas {
		return nil, "", fmt.Errorf("catalog: %w: %d replicas of %s need %d alive hosts with room, %d have it", ErrNoPlace, replicas, volume.FormatSize(size), replicas, len(ok))
	}
	sort.SliceStable(ok, func(i, j int) bool {
		if ok[i].Free != ok[j].Free {
			return ok[i].Free > ok[j].Free
		}
		return ok[i].Name < ok[j].Name
	})
	for _, c := range ok[:replicas] {
		hosts = append(hosts, c.Name)
	}
	leads := map[string]int{}
	for _, v := range s.Volumes {
		leads[v.PreferredLeader]++
	}
	leader = hosts[0]
	for _, h := range hosts[1:] {
		if leads[h] < leads[leader] {
			leader = h
		}
	}
	return hosts, leader, nil
}

// Snapshot returns the catalog encoded for a raft snapshot.
func (s *State) Snapshot() ([]byte, error) { return json.Marshal(s) }

// Restore returns the catalog encoded by Snapshot.
func Restore(b []byte) (*State, error) {
	s := New()
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("catalog: restoring: %w", err)
	}
	if s.Hosts == nil {
		s.Hosts = map[string]*Host{}
	}
	if s.Volumes == nil {
		s.Volumes = map[string]*Volume{}
	}
	if s.VMs == nil {
		s.VMs = map[string]*VM{}
	}
	return s, nil
}
