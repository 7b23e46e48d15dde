package admin

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/tandem-project/tandem/volume"
)

// The JSON bodies of the cluster API (/v1/), shared by the agents' handler
// and the CLI's client. docs/admin-api.yaml describes them as OpenAPI.

// TokenHeader is the header that carries the admin token, as
// "Authorization: Bearer TOKEN".
const TokenHeader = "Authorization"

// ClusterStatus is the body of GET /v1/cluster.
type ClusterStatus struct {
	// Host is the agent that answered (the control leader, when the
	// request was forwarded); Via is the agent that received it.
	Host    string `json:"host"`
	Via     string `json:"via,omitempty"`
	Version string `json:"version"`
	// ControlLeader is the host leading the control-plane Raft group;
	// ControlVoters its voting members; ControlTerm and ControlIndex its
	// term and last applied index.
	ControlLeader string   `json:"control_leader"`
	ControlVoters []string `json:"control_voters"`
	ControlTerm   uint64   `json:"control_term"`
	ControlIndex  uint64   `json:"control_index"`
	// Hosts counts the hosts in the catalog, HostsAlive those that
	// membership sees alive.
	Hosts      int `json:"hosts"`
	HostsAlive int `json:"hosts_alive"`
	Volumes    int `json:"volumes"`
}

// Host states, as membership reports them, and revoked: alive to
// membership, but shut out of the replication port for a revoked peer
// certificate (catalog.HostRevoked).
const (
	HostAlive   = "alive"
	HostFailed  = "failed"
	HostLeft    = "left"
	HostRevoked = "revoked"
)

// Host is one element of GET /v1/hosts.
type Host struct {
	Name string `json:"name"`
	// State is alive, failed, left or revoked; Since is when the control leader
	// recorded that state (absent while unknown).
	State     string    `json:"state"`
	Since     time.Time `json:"since,omitzero"`
	RaftAddr  string    `json:"raft_addr"`
	NBDAddr   string    `json:"nbd_addr"`
	AdminAddr string    `json:"admin_addr"`
	// Capacity is the bytes the host offers for volume replicas; Allocated
	// the bytes of the replicas placed on it; DiskFree the free bytes of
	// its data directory's filesystem as it last reported.
	Capacity  int64 `json:"capacity"`
	Allocated int64 `json:"allocated"`
	DiskFree  int64 `json:"disk_free"`
	// Replicas counts the volume replicas the host holds; Leads the
	// volumes it is the preferred leader of.
	Replicas int `json:"replicas"`
	Leads    int `json:"leads"`
	// Control is the host's role in the control-plane group: leader,
	// voter or nonvoter ("" if not a member yet).
	Control string    `json:"control"`
	Joined  time.Time `json:"joined"`
	// Drained hosts take no new replicas; the control leader moves the
	// ones they hold to other hosts (POST /v1/hosts/{name}/drain).
	Drained bool `json:"drained,omitempty"`
	// Version is the build its agent runs, as the agent gossips it
	// (absent while the answering agent does not see the host).
	Version string `json:"version,omitempty"`
}

// Volume states.
const (
	VolumeReady = "ready"
	// VolumeDegraded: a replica is unreachable or failed, the volume still
	// has a quorum.
	VolumeDegraded = "degraded"
	// VolumeUnavailable: no replica reports a leader.
	VolumeUnavailable = "unavailable"
)

// Volume is one element of GET /v1/volumes and the body of
// GET /v1/volumes/{name} and of a successful create or resize.
type Volume struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	// Hosts are the replicas' hosts in placement order.
	Hosts           []string `json:"hosts"`
	PreferredLeader string   `json:"preferred_leader"`
	// Leader is the replica host that leads the volume now ("" if none
	// is known).
	Leader string `json:"leader"`
	// State is ready, degraded or unavailable.
	State string `json:"state"`
	// Attached counts the NBD connections to the volume on every agent.
	Attached int `json:"attached"`
	// URI is an NBD URI of the volume on its leader's agent (any agent
	// serves it).
	URI     string    `json:"uri"`
	Created time.Time `json:"created"`
	// Replicas is each replica's status.
	Replicas []Replica `json:"replicas"`
	// VM is the VM that has the volume as a disk ("" if none).
	VM string `json:"vm,omitempty"`
	// WriterEpoch is the writer epoch allowed to write the volume (the
	// epoch of its VM's current run; 0: any writer); WriterGen the catalog
	// index of the command that last set it (0: never set).
	WriterEpoch uint64 `json:"writer_epoch"`
	WriterGen   uint64 `json:"writer_gen"`
	// Move is the replica move under way, if any; LastMove how the last
	// one ended (move.go); PlannedMoves those that follow Move when it
	// completes (a replica set move).
	Move         *VolumeMove   `json:"move,omitempty"`
	LastMove     *MoveResult   `json:"last_move,omitempty"`
	PlannedMoves []PlannedMove `json:"planned_moves,omitempty"`
	// Verify is the verification of the replicas under way, if any;
	// LastVerify how the last one ended (verify.go).
	Verify     *VolumeVerify `json:"verify,omitempty"`
	LastVerify *VerifyResult `json:"last_verify,omitempty"`
}

// Replica is one replica's status, as its host reports it.
type Replica struct {
	Host string `json:"host"`
	// State is the replica's raft state (Leader, Follower, Candidate,
	// Shutdown), Failed, or Unreachable when its host did not answer.
	State        string `json:"state"`
	Term         uint64 `json:"term"`
	LastIndex    uint64 `json:"last_index"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
	// Lag is how many entries this replica has applied fewer than the
	// leader has committed.
	Lag uint64 `json:"lag"`
	// LastContact is how long ago a follower last heard from its leader.
	LastContact time.Duration `json:"last_contact_ns"`
	Error       string        `json:"error,omitempty"`
	// FailedSince is, for a replica out of service after a failure of
	// its disk, when its agent first saw the failure (LocalVolume).
	FailedSince time.Time `json:"failed_since,omitzero"`
}

// CreateVolume is the body of POST /v1/volumes.
type CreateVolume struct {
	Name string `json:"name"`
	// Size is the volume size: a number of bytes or a string such as
	// "1G", "512MiB".
	Size Size `json:"size"`
	// Replicas is the replica count, 1 to 5 (0: 3, or every host if
	// fewer).
	Replicas int `json:"replicas,omitempty"`
}

// ResizeVolume is the body of PATCH /v1/volumes/{name} (grow only).
type ResizeVolume struct {
	Size Size `json:"size"`
}

// Size is a byte count that decodes from a JSON number or a size string
// ("1G", "512MiB", see volume.ParseSize) and encodes as a number.
type Size int64

// UnmarshalJSON implements json.Unmarshaler.
func (s *Size) UnmarshalJSON(b []byte) error {
	var n int64
	if err := json.Unmarshal(b, &n); err == nil {
		*s = Size(n)
		return nil
	}
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		return fmt.Errorf("size: want a number of bytes or a string such as \"1G\", got %s", b)
	}
	n, err := volume.ParseSize(str)
	if err != nil {
		return err
	}
	*s = Size(n)
	return nil
}

// VM states: the desired state the catalog records.
const (
	VMStopped = "stopped"
	VMRunning = "running"
)

// VM runtime states besides QEMU's own run states (running, paused,
// io-error, shutdown, inmigrate, postmigrate, ...; see QMP query-status).
const (
	// VMAbsent: the VM's host runs no QEMU process for it (or the VM has
	// no host yet).
	VMAbsent = "absent"
	// VMUnknown: the VM's host did not answer (its Error says why).
	VMUnknown = "unknown"
	// VMLaunching: the VM's host is starting QEMU for it.
	VMLaunching = "launching"
)

// Boot kinds.
const (
	// BootDisk boots from the VM's first disk.
	BootDisk = "disk"
	// BootKernel boots a kernel file of the VM's host, with an optional
	// initrd and a kernel command line.
	BootKernel = "kernel"
)

// Boot says how a VM boots.
type Boot struct {
	// Kind is disk or kernel.
	Kind string `json:"kind"`
	// Kernel and Initrd are absolute paths of files on the VM's host
	// (kind kernel; Initrd optional); Cmdline is the kernel command line.
	Kernel  string `json:"kernel,omitempty"`
	Initrd  string `json:"initrd,omitempty"`
	Cmdline string `json:"cmdline,omitempty"`
}

// VM is one element of GET /v1/vms and the body of GET /v1/vms/{name}
// and of a successful create, start or stop: the catalog's record of the
// VM and the runtime report of its host's agent.
type VM struct {
	Name string `json:"name"`
	// ID is the catalog index of the command that created the VM.
	ID        uint64 `json:"id"`
	VCPUs     int    `json:"vcpus"`
	MemoryMiB int    `json:"memory_mib"`
	// Disks are the VM's volumes in the order the guest sees them, with
	// their writer fencing fields.
	Disks []VMDisk `json:"disks"`
	Boot  Boot     `json:"boot"`
	// State is the desired state: stopped or running.
	State string `json:"state"`
	// Host is the host the VM runs on or last ran on ("" before its first
	// start).
	Host string `json:"host"`
	// Epoch is the writer epoch of the current run: the catalog index of
	// the command that started it; 0 when stopped.
	Epoch   uint64    `json:"epoch"`
	Created time.Time `json:"created"`
	// Changed is the catalog index of the command that last changed it.
	Changed uint64 `json:"changed"`
	// Runtime is what the agent of the VM's host reports about its QEMU
	// process.
	Runtime LocalVM `json:"runtime"`
	// Migration is the live migration under way, if any; LastMigration
	// how the last one ended.
	Migration     *Migration       `json:"migration,omitempty"`
	LastMigration *MigrationResult `json:"last_migration,omitempty"`
	// DiskMove is the disk move under way, if any; LastDiskMove how the
	// last one ended (docs/move-disk.md).
	DiskMove     *DiskMove       `json:"disk_move,omitempty"`
	LastDiskMove *DiskMoveResult `json:"last_disk_move,omitempty"`
}

// VMDisk is one disk of a VM: a Tandem volume, or an external source
// (a raw or qcow2 file on the VM's host, another NBD server's export).
type VMDisk struct {
	// Disk is the disk as the VM records it: a volume name, raw:/path,
	// qcow2:/path or nbd://host:port/export.
	Disk string `json:"disk"`
	// Kind is volume, raw, qcow2 or nbd.
	Kind string `json:"kind"`
	// Volume is the volume's name ("" for an external disk).
	Volume string `json:"volume,omitempty"`
	// WriterEpoch and WriterGen are the volume's: see Volume.
	WriterEpoch uint64 `json:"writer_epoch"`
	WriterGen   uint64 `json:"writer_gen"`
}

// LocalVM is a VM as the agent of its host sees it: one element of
// GET /v1/local/vms (the VMs that agent's runtime knows) and the runtime
// object of a VM body.
type LocalVM struct {
	Name string `json:"name"`
	// State is QEMU's run state (running, paused, io-error, ...),
	// launching while its host starts QEMU, absent when no QEMU process
	// runs the VM there, or unknown when its host did not answer.
	State string `json:"state"`
	// PID is the QEMU process's.
	PID int `json:"pid,omitempty"`
	// Epoch is the writer epoch the process writes the VM's disks under.
	Epoch uint64 `json:"epoch,omitempty"`
	// QMPSocket and SerialLog are paths on the host: QEMU's QMP socket
	// and the file that receives the guest's serial console.
	QMPSocket string `json:"qmp_socket,omitempty"`
	SerialLog string `json:"serial_log,omitempty"`
	// Started is when the process started.
	Started time.Time `json:"started,omitzero"`
	// Error is the last error starting, running or stopping the VM.
	Error string `json:"error,omitempty"`
	// Migration is the progress of the live migration this host sends
	// (the source's report), if one is under way.
	Migration *MigrationProgress `json:"migration,omitempty"`
	// DiskMove is the progress of the VM's disk move, if one is under
	// way.
	DiskMove *DiskMoveProgress `json:"disk_move,omitempty"`
}

// DiskMoveProgress is what QEMU reports of a disk move's mirror job.
type DiskMoveProgress struct {
	// Status is the mirror job's (running, ready, waiting, concluded...)
	// or the agent's step before it runs (preparing).
	Status string `json:"status"`
	// Copied and Total are bytes: Total is the disk's size plus what the
	// guest wrote during the copy.
	Copied int64 `json:"copied"`
	Total  int64 `json:"total"`
}

// DiskMove is a VM's disk move in progress, as the catalog records it
// (docs/move-disk.md).
type DiskMove struct {
	// ID is the catalog index of the command that started it.
	ID uint64 `json:"id"`
	// Disk is the disk's index in the VM's disks; From the disk, To the
	// target (volume name, raw:/path, qcow2:/path or nbd://...).
	Disk int    `json:"disk"`
	From string `json:"from"`
	To   string `json:"to"`
	// Phase is copying (the source is authoritative) or pivoting (the
	// target is).
	Phase string `json:"phase"`
	// MaxRate limits the background copy, in bytes per second (0: none).
	MaxRate int64     `json:"max_rate,omitempty"`
	Started time.Time `json:"started"`
}

// DiskMoveResult is how a VM's last disk move ended.
type DiskMoveResult struct {
	ID   uint64 `json:"id"`
	Disk int    `json:"disk"`
	From string `json:"from"`
	To   string `json:"to"`
	// Result is completed (the disk is To), cancelled or failed (it is
	// From).
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
	// Bytes is what the mirror copied, Copy how long until it was ready,
	// Pivot how long the pivot took.
	Bytes    int64         `json:"bytes"`
	Copy     time.Duration `json:"copy_ns"`
	Pivot    time.Duration `json:"pivot_ns"`
	Started  time.Time     `json:"started"`
	Finished time.Time     `json:"finished"`
}

// MoveDisk is the body of POST /v1/vms/{name}/disks/{n}/move.
type MoveDisk struct {
	// To is the target: an existing volume of the disk's exact size that
	// is no VM's disk (import), raw:/abs/path or qcow2:/abs/path (a new
	// file the VM's host creates; export) or nbd://host[:port]/export.
	To string `json:"to"`
	// MaxRate limits the background copy in bytes per second (absent: no
	// limit; the guest's own writes are never held back).
	MaxRate Size `json:"max_rate,omitempty"`
}

// MigrationProgress is what QEMU reports of a live migration it sends
// (query-migrate).
type MigrationProgress struct {
	// Status is QEMU's: setup, active, pre-switchover, device, completed,
	// failed, cancelled...
	Status string `json:"status"`
	// Transferred, Remaining and Total are RAM bytes; Passes counts the
	// passes over dirty memory (dirty-sync-count).
	Transferred int64 `json:"transferred"`
	Remaining   int64 `json:"remaining"`
	Total       int64 `json:"total"`
	Passes      int64 `json:"passes"`
	// ExpectedDowntime is QEMU's estimate of the pause at the switchover.
	ExpectedDowntime time.Duration `json:"expected_downtime_ns"`
}

// Migration is a VM's live migration in progress, as the catalog records
// it (see docs/migration.md).
type Migration struct {
	From string `json:"from"`
	To   string `json:"to"`
	// Epoch is the destination's writer epoch.
	Epoch uint64 `json:"epoch"`
	// Phase is preparing (the destination starts QEMU), ready (the
	// source sends the VM) or switched (the VM and its disks belong to
	// the destination).
	Phase   string    `json:"phase"`
	Started time.Time `json:"started"`
	// MaxBandwidth is the migration's limit in bytes per second (0: none).
	MaxBandwidth int64 `json:"max_bandwidth,omitempty"`
}

// MigrationResult is how a VM's last live migration ended.
type MigrationResult struct {
	From string `json:"from"`
	To   string `json:"to"`
	// Result is completed, cancelled or failed.
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
	// Downtime is the guest's pause as the source's agent measured it
	// (from the source's stop to the destination's start), QEMUDowntime
	// QEMU's own figure; Total the whole migration; Bytes what QEMU sent
	// in Passes passes.
	Downtime     time.Duration `json:"downtime_ns"`
	QEMUDowntime time.Duration `json:"qemu_downtime_ns"`
	Total        time.Duration `json:"total_ns"`
	Bytes        int64         `json:"bytes"`
	Passes       int64         `json:"passes"`
	Finished     time.Time     `json:"finished"`
}

// MigrateVM is the body of POST /v1/vms/{name}/migrate.
type MigrateVM struct {
	// To is the destination host; it must be alive.
	To string `json:"to"`
	// MaxBandwidth limits the migration stream, in bytes per second: a
	// number or a size string such as "100M" (0 or absent: no limit
	// beyond the link's).
	MaxBandwidth Size `json:"max_bandwidth,omitempty"`
}

// CreateVM is the body of POST /v1/vms.
type CreateVM struct {
	Name string `json:"name"`
	// VCPUs is 1 to 16 (0 or absent: 1).
	VCPUs int `json:"vcpus,omitempty"`
	// Memory is the guest's memory: a number of bytes or a size string
	// such as "256M" or "1GiB", a whole number of MiB from 16M to 64G
	// (0 or absent: 256M).
	Memory Size `json:"memory,omitempty"`
	// Disks are 1 to 16 disks: existing volumes, none of them a disk of
	// another VM, or external sources: raw:/abs/path or qcow2:/abs/path
	// (an image file on the VM's host) or nbd://host[:port]/export.
	Disks []string `json:"disks"`
	// Boot is how the VM boots (absent: from its first disk; a kind left
	// empty is kernel when a kernel is given, else disk).
	Boot Boot `json:"boot,omitzero"`
}

// StartVM is the optional body of POST /v1/vms/{name}/start.
type StartVM struct {
	// Host is the host to start the VM on. Default: the host it last ran
	// on, else the preferred leader of its first disk, else the agent
	// that answers (the control leader). It must be alive.
	Host string `json:"host,omitempty"`
}

// VolumeWriter is what the catalog records about a volume's writer: the
// VM that has it as a disk ("" if none) and its writer fields (see
// Volume).
type VolumeWriter struct {
	VM          string
	WriterEpoch uint64
	WriterGen   uint64
}

// The agents' internal requests (not part of the operators' API: they
// are made by agents, with the cluster's admin token).

// MigrationStep is the body of POST /v1/internal/migration: a step of a
// live migration an agent records in the catalog (docs/migration.md).
type MigrationStep struct {
	VM string `json:"vm"`
	// Kind is migration_ready, switch_vm or end_migration; Epoch the
	// migration's (destination) epoch.
	Kind  string `json:"kind"`
	Epoch uint64 `json:"epoch"`
	// URI is the destination's (migration_ready); Result how the
	// migration ended (end_migration).
	URI    string           `json:"uri,omitempty"`
	Result *MigrationResult `json:"result,omitempty"`
	// DiskMove carries the disk move steps' fields (kinds
	// disk_move_phase, end_disk_move; VM and Kind as above).
	DiskMove *DiskMoveStep `json:"disk_move,omitempty"`
}

// DiskMoveStep is a step of a disk move an agent records.
type DiskMoveStep struct {
	ID     uint64          `json:"id"`
	Phase  string          `json:"phase,omitempty"`
	Result *DiskMoveResult `json:"result,omitempty"`
}

// Committed is the answer to an internal catalog change: the command's
// index in the control log.
type Committed struct {
	Index uint64 `json:"index"`
}

// Fence is the body of POST /v1/local/volumes/{name}/fence, sent to the
// agent that leads the volume: put the fence of generation Gen for
// writer Epoch into the volume's log, then hand the volume's leadership
// to host Leader if it holds a replica ("": stay).
type Fence struct {
	Gen    uint64 `json:"gen"`
	Epoch  uint64 `json:"epoch"`
	Leader string `json:"leader,omitempty"`
}
