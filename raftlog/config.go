package raftlog

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tandem-project/tandem/raftlog/mux"
	"github.com/tandem-project/tandem/raftlog/wal"
)

// Peer is one host of the cluster as the replication layer sees it.
type Peer struct {
	// ID is the host's name; it is also its raft server ID.
	ID string
	// Raft is the host's replication address (its mux port).
	Raft string
	// NBD is the host's NBD address, where its clients connect, or ""
	// if not known; it is shown to operators only. (I/O forwarded to a
	// leader goes to its Raft address.)
	NBD string
}

// Config is the replication configuration of one host.
type Config struct {
	// ID is this host's name. It must be one of Peers when Peers is set.
	ID string
	// DataDir holds the host's replication state: meta/ (badger) and one
	// directory per volume group under groups/.
	DataDir string
	// RaftAddr is the address this host's mux listens on. Empty means a
	// single host without network: every group has one replica and uses an
	// in-memory transport.
	RaftAddr string
	// Peers lists every host of the (fixed) cluster, this one included.
	Peers []Peer
	// PeerTLS, if set, makes the mux port speak mutual TLS: raft, volume
	// streams and forwarded I/O then pass only between hosts whose
	// certificates the peer CA signed.
	PeerTLS *mux.TLS

	// HeartbeatTimeout bounds how long followers wait for the leader before
	// electing another; it also sets the read lease (LeaseFraction of it).
	HeartbeatTimeout time.Duration
	// ElectionTimeout bounds how long a candidate waits for votes.
	ElectionTimeout time.Duration
	// LeaderLeaseTimeout is how long a leader that cannot reach a majority
	// keeps the role before stepping down. Must be below HeartbeatTimeout.
	LeaderLeaseTimeout time.Duration
	// CommitTimeout is the longest a follower waits to learn the commit
	// index when no entries flow.
	CommitTimeout time.Duration
	// LeaseFraction of HeartbeatTimeout is the read lease (0 < f < 1).
	LeaseFraction float64

	// SnapshotInterval, SnapshotThreshold and TrailingLogs are raft's
	// checkpoint settings; SnapshotBytes also checkpoints after that many
	// bytes were written since the last one (0: never by bytes). Keep it at
	// most the WAL's MaxRecycled × SegmentSize: the segments a checkpoint
	// frees are then all reused, and a streaming volume never writes into
	// fresh segments (docs/replication.md, "Durability without copying
	// volumes").
	SnapshotInterval  time.Duration
	SnapshotThreshold uint64
	TrailingLogs      uint64
	SnapshotBytes     int64

	// MaxInflightEntries is how many log entries of one volume may be
	// committing at once; MaxEntryBytes bounds one entry.
	MaxInflightEntries int
	MaxEntryBytes      int

	// StallTimeout is how long an I/O request keeps retrying through leader
	// changes before it fails with EIO.
	StallTimeout time.Duration

	// DiskReserve is the free space of DataDir's file system that volume
	// data and write logs leave to the metadata (0: none). A replica that
	// would write into it fails instead (docs/replication.md, "Replica
	// failure"): the metadata database writes through memory maps, and a
	// write there on a full file system kills the process (SIGBUS).
	DiskReserve int64

	// Logger receives the layer's logs (raft's included). Nil discards.
	Logger *slog.Logger
	// ObserveCommit, if set, is called for every entry this host committed
	// as leader, with the time from Apply to its answer (at commit for
	// writes and zeroes, else once applied).
	ObserveCommit func(volume string, took time.Duration)

	// barrierFault, if set (by this package's tests), is asked before each
	// leader's barrier and fails it with the error it returns.
	barrierFault func(volume string) error
	// logConfig, if set (by this package's tests), adjusts each write
	// log's configuration.
	logConfig func(*wal.Config)
}

// DefaultConfig returns the tuning used by the agent; the caller fills in
// ID, DataDir, RaftAddr and Peers.
func DefaultConfig() Config {
	return Config{
		HeartbeatTimeout:   650 * time.Millisecond,
		ElectionTimeout:    650 * time.Millisecond,
		LeaderLeaseTimeout: 325 * time.Millisecond,
		CommitTimeout:      20 * time.Millisecond,
		LeaseFraction:      0.75,
		SnapshotInterval:   30 * time.Second,
		SnapshotThreshold:  1024,
		TrailingLogs:       512,
		SnapshotBytes:      1 << 30,
		MaxInflightEntries: 4,
		MaxEntryBytes:      4 << 20,
		StallTimeout:       60 * time.Second,
		DiskReserve:        256 << 20,
	}
}

// Validate reports the first problem with c, naming the fields involved.
func (c Config) Validate() error {
	switch {
	case c.ID == "":
		return errors.New("raftlog: ID (the host name) is required")
	case c.DataDir == "":
		return errors.New("raftlog: DataDir is required")
	case c.RaftAddr == "" && len(c.Peers) > 1:
		return errors.New("raftlog: Peers name other hosts but RaftAddr is empty")
	case c.LeaderLeaseTimeout >= c.HeartbeatTimeout:
		return fmt.Errorf("raftlog: LeaderLeaseTimeout (%v) must be below HeartbeatTimeout (%v)", c.LeaderLeaseTimeout, c.HeartbeatTimeout)
	case c.LeaseFraction <= 0 || c.LeaseFraction >= 1:
		return fmt.Errorf("raftlog: LeaseFraction must be in (0, 1), got %v", c.LeaseFraction)
	case c.MaxInflightEntries < 1:
		return fmt.Errorf("raftlog: MaxInflightEntries must be at least 1, got %d", c.MaxInflightEntries)
	case c.MaxEntryBytes < 64<<10:
		return fmt.Errorf("raftlog: MaxEntryBytes must be at least 64 KiB, got %d", c.MaxEntryBytes)
	case c.StallTimeout <= 0:
		return fmt.Errorf("raftlog: StallTimeout must be positive, got %v", c.StallTimeout)
	case c.SnapshotBytes < 0:
		return fmt.Errorf("raftlog: SnapshotBytes must not be negative, got %d", c.SnapshotBytes)
	case c.DiskReserve < 0:
		return fmt.Errorf("raftlog: DiskReserve must not be negative, got %d", c.DiskReserve)
	}
	if len(c.Peers) > 0 {
		seen := map[string]bool{}
		self := false
		for _, p := range c.Peers {
			if p.ID == "" || p.Raft == "" {
				return fmt.Errorf("raftlog: peer %+v needs an ID and a raft address", p)
			}
			if seen[p.ID] {
				return fmt.Errorf("raftlog: peer %q listed twice", p.ID)
			}
			seen[p.ID] = true
			self = self || p.ID == c.ID
		}
		if !self {
			return fmt.Errorf("raftlog: this host %q is not among the peers", c.ID)
		}
	}
	rc := c.raftConfig()
	if err := raft.ValidateConfig(rc); err != nil {
		return fmt.Errorf("raftlog: %w", err)
	}
	return nil
}

// raftConfig is the hashicorp/raft configuration of every group.
func (c Config) raftConfig() *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(c.ID)
	rc.HeartbeatTimeout = c.HeartbeatTimeout
	rc.ElectionTimeout = c.ElectionTimeout
	rc.LeaderLeaseTimeout = c.LeaderLeaseTimeout
	rc.CommitTimeout = c.CommitTimeout
	rc.SnapshotInterval = c.SnapshotInterval
	rc.SnapshotThreshold = c.SnapshotThreshold
	rc.TrailingLogs = c.TrailingLogs
	// Entries are already coalesced writes of up to MaxEntryBytes: a few
	// per AppendEntries and per log append keep one sync short enough not
	// to starve heartbeats (raft counts entries, not bytes).
	rc.MaxAppendEntries = 8
	rc.BatchApplyCh = true
	// The FSM is persistent: a restart replays the log after the last
	// checkpoint over the volume file instead of restoring a snapshot.
	rc.NoSnapshotRestoreOnStart = true
	return rc
}

// VolumeSpec describes one replicated volume.
type VolumeSpec struct {
	// Name is the volume (and raft group) name.
	Name string
	// Size in bytes.
	Size int64
	// Replicas lists the IDs of the hosts holding a replica (1 to 5,
	// distinct). Empty means every peer (or this host alone).
	Replicas []string
	// PreferredLeader, if set, is the host that should lead the volume
	// when it is healthy (usually where its VM runs).
	PreferredLeader string
	// ReadOnly refuses writes.
	ReadOnly bool
	// Peers, when set, are the replicas' hosts with their addresses (from
	// the cluster catalog); Replicas and the host's configured Peers are
	// then not consulted.
	Peers []Peer
	// Join opens a replica that joins the volume's existing raft group (a
	// replica move): it never bootstraps a configuration and waits for the
	// leader to add it (Volume.AddNonvoter). Peers then lists the group's
	// current replicas and this host.
	Join bool
	// Existing says the replica was created before (the cluster catalog
	// records it): opening it without any raft state fails with
	// ErrStateLost instead of bootstrapping a new group. A server that
	// lost its state must not rejoin its group as the same voter (it
	// could vote for a candidate that lacks entries it acknowledged);
	// it is rebuilt in place instead (docs/mirror.md).
	Existing bool
	// AskPeers, where no catalog records the replicas (the fixed
	// configuration), makes a replica that opens without any state ask
	// the other hosts whether the volume's group has a history before it
	// bootstraps one: if it has, the replica was lost, and it leaves the
	// group and joins it again as a new replica (readmit.go).
	AskPeers bool
	// CopyRate limits, in bytes per second, the volume copy a joining
	// replica pulls from another replica (0: no limit).
	CopyRate int64
}
