package catalog

import (
	"fmt"
	"slices"
)

// A replica's life on its host (docs/mirror.md, "Rebuilding a replica in
// place"). A raft server that lost its state (its disk replaced, its
// files deleted) must not come back as the same voter with an empty log:
// it may have acknowledged entries that now exist on a single other
// replica, and with an empty log it would vote for a candidate that lacks
// them. So the catalog records which hosts have created their replica of
// a volume (Volume.Opened), before they create it; a host listed there
// whose replica has no state does not bootstrap a new one: it asks for a
// rebuild in place (a move from the host to itself), which takes the
// replica out of the group, copies it anew and adds it back.

// CmdReplicaOpened records that host Move.From is about to create (or
// holds) its replica of volume Name, whose ID is Move.ID.
const CmdReplicaOpened = "replica_opened"

// Holds reports whether host serves volume v from a replica of its own:
// it is one of v's replicas and that replica is not being rebuilt.
func (v *Volume) Holds(host string) bool {
	return slices.Contains(v.Replicas, host) && !(v.Move != nil && v.Move.Rebuild() && v.Move.From == host)
}

// Rebuild reports whether m rebuilds a replica in place (from a host to
// itself) rather than moving it.
func (m *Move) Rebuild() bool { return m.From == m.To }

// applyReplicaOpened applies replica_opened.
func (s *State) applyReplicaOpened(index uint64, c Command) error {
	mc := c.Move
	if mc == nil {
		return fmt.Errorf("catalog: %w: %s without a host", ErrInvalid, c.Kind)
	}
	v, ok := s.Volumes[c.Name]
	if !ok || v.ID != mc.ID {
		return fmt.Errorf("catalog: volume %q (id %d): %w", c.Name, mc.ID, ErrNotFound)
	}
	if !slices.Contains(v.Replicas, mc.From) {
		return fmt.Errorf("catalog: volume %q: %w: host %s holds no replica of it (replicas: %v)", c.Name, ErrInvalid, mc.From, v.Replicas)
	}
	if slices.Contains(v.Opened, mc.From) {
		return nil
	}
	v.Opened = append(slices.Clone(v.Opened), mc.From)
	v.Changed = index
	return nil
}
