package raftlog

import (
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/raft"
)

// VolumeStatus is this host's view of one volume's replica.
type VolumeStatus struct {
	Name     string   `json:"name"`
	Size     int64    `json:"size"`
	ReadOnly bool     `json:"read_only"`
	Replicas []string `json:"replicas"`
	// Leader is the host that leads the volume, as far as this host knows.
	Leader string `json:"leader"`
	// State is this replica's raft state: Leader, Follower, Candidate,
	// Shutdown; "Failed" once it could not apply a committed entry;
	// "Local" for an agent's local volume (no log, no replicas).
	State string `json:"state"`
	// Serving is true when this host answers reads itself (it leads and
	// holds its lease).
	Serving      bool   `json:"serving"`
	Term         uint64 `json:"term"`
	LastIndex    uint64 `json:"last_index"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
	// LastContact is how long ago a follower last heard from its leader
	// (0 on the leader).
	LastContact time.Duration `json:"last_contact_ns"`
	// WriterEpoch is the writer epoch this replica accepts writes of (0:
	// any), set by the fence of generation WriterGen (docs/fencing.md).
	WriterEpoch uint64 `json:"writer_epoch"`
	WriterGen   uint64 `json:"writer_gen"`
	// Error is the replica's failure, if any.
	Error string `json:"error,omitempty"`
	// Copy is the progress of the replica's last volume copy by stream
	// (catch-up, a replica move), if it made one since it opened.
	Copy *CopyStatus `json:"copy,omitempty"`
}

// Status returns the status of this host's replica of the volume.
func (v *Volume) Status() VolumeStatus {
	g := v.g
	s := VolumeStatus{
		Name:         g.spec.Name,
		Size:         g.file.Size(),
		ReadOnly:     g.spec.ReadOnly,
		State:        g.raft.State().String(),
		Serving:      g.servesLocally(),
		Term:         g.raft.CurrentTerm(),
		LastIndex:    g.raft.LastIndex(),
		CommitIndex:  g.raft.CommitIndex(),
		AppliedIndex: g.raft.AppliedIndex(),
	}
	s.WriterEpoch, s.WriterGen = v.Fenced()
	for _, p := range g.peers() {
		s.Replicas = append(s.Replicas, p.ID)
	}
	if p, ok := g.leader(); ok {
		s.Leader = p.ID
	}
	if g.raft.State() != raft.Leader {
		if lc := g.raft.LastContact(); !lc.IsZero() {
			s.LastContact = time.Since(lc)
		}
	}
	if err := g.err(); err != nil {
		s.State, s.Error = "Failed", err.Error()
	}
	if cp := v.Copy(); !cp.Started.IsZero() {
		s.Copy = &cp
	}
	return s
}

// Volumes returns the volumes this host holds a replica of, by name.
func (h *Host) Volumes() []*Volume {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*Volume, 0, len(h.groups))
	for _, g := range h.groups {
		out = append(out, &Volume{g: g})
	}
	slices.SortFunc(out, func(a, b *Volume) int {
		if a.Name() < b.Name() {
			return -1
		}
		return 1
	})
	return out
}

// Statuses returns the status of every replica this host holds, by name:
// the open ones (Volumes) and those closed after a failure and not open
// again yet (CloseFailed), reported as failed.
func (h *Host) Statuses() []VolumeStatus {
	var out []VolumeStatus
	for _, v := range h.Volumes() {
		out = append(out, v.Status())
	}
	h.mu.Lock()
	for name, d := range h.down {
		if _, open := h.groups[name]; !open {
			out = append(out, d.st)
		}
	}
	h.mu.Unlock()
	slices.SortFunc(out, func(a, b VolumeStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// ID returns this host's name.
func (h *Host) ID() string { return h.cfg.ID }

// Peers returns the hosts of the cluster (empty on a single host).
func (h *Host) Peers() []Peer { return slices.Clone(h.cfg.Peers) }
