package raftlog

// Membership changes of a volume's raft group: replica moves.
//
// A replica moves in four steps, each a raft configuration change made
// by the volume's leader (docs/mirror.md):
//
//  1. the destination opens its replica with VolumeSpec.Join: it never
//     bootstraps a configuration, it waits to be added;
//  2. the leader adds it as a non-voter (AddNonvoter): it gets the volume
//     by the usual catch-up (a checkpoint, then its Restore pulls the
//     volume over the stream, then the log after the checkpoint);
//  3. once its applied index is close to the leader's commit index the
//     leader makes it a voter (Promote);
//  4. the leader removes the leaving replica (Remove), after handing
//     leadership away if it was the one leaving (TransferLeadershipTo).
//
// Integrity: Checksums hashes the replica's file per range, each range
// tagged with the interval of log indexes over which it held that content,
// so that two replicas' hashes are compared only where they describe the
// volume at a common log index (see RangeSum.Comparable).

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tandem-project/tandem/internal/pace"
)

// ChecksumRange is the size of the ranges Checksums hashes.
const ChecksumRange = 1 << 20

// joinTrailingLogs is how many entries the leader keeps behind the
// checkpoint it takes before adding a replica: fewer than the usual
// TrailingLogs, so that a newcomer gets the volume by the stream (sparse,
// resumable) rather than by replaying a long log.
const joinTrailingLogs = 32

// ErrNotMember is returned for a host that is not a member of the group.
var ErrNotMember = errors.New("raftlog: not a member of the volume's group")

// ErrStateLost: a replica created before holds no log entry and no
// checkpoint: its files were lost (VolumeSpec.Existing).
var ErrStateLost = errors.New("the replica's raft state is lost (no log entry, no checkpoint): it must be rebuilt")

// peers returns the hosts of the group's members as far as this replica
// knows them.
func (g *Group) peers() []Peer {
	if p := g.peerList.Load(); p != nil {
		return *p
	}
	return g.cfg.Peers
}

// peerIDs returns the IDs of ps.
func peerIDs(ps []Peer) []string {
	ids := make([]string, len(ps))
	for i, p := range ps {
		ids[i] = p.ID
	}
	return ids
}

// setPeers replaces the known member hosts.
func (g *Group) setPeers(ps []Peer) {
	c := slices.Clone(ps)
	g.peerList.Store(&c)
}

// addPeer adds (or updates) one host in the known member hosts.
func (g *Group) addPeer(p Peer) {
	ps := slices.Clone(g.peers())
	if i := slices.IndexFunc(ps, func(q Peer) bool { return q.ID == p.ID }); i >= 0 {
		ps[i] = p
	} else {
		ps = append(ps, p)
	}
	g.peerList.Store(&ps)
}

// SetPeers replaces the hosts the replica knows as members of the group
// (with their addresses): leader lookup, forwarding and volume pulls use
// them. The agent passes the catalog's replicas plus a move's destination.
// This host is kept whatever ps says.
func (v *Volume) SetPeers(ps []Peer) {
	if !slices.ContainsFunc(ps, func(p Peer) bool { return p.ID == v.g.cfg.Local }) {
		for _, p := range v.g.peers() {
			if p.ID == v.g.cfg.Local {
				ps = append(slices.Clone(ps), p)
			}
		}
	}
	if slices.Equal(ps, v.g.peers()) {
		return
	}
	v.g.setPeers(ps)
	if v.g.fwd != nil {
		v.g.fwd.retarget()
	}
}

// Member is one server of the volume's raft configuration.
type Member struct {
	ID    string `json:"id"`
	Voter bool   `json:"voter"`
}

// Members returns the volume's raft configuration as this replica knows it
// (the latest, committed or not).
func (v *Volume) Members() ([]Member, error) {
	f := v.g.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	var out []Member
	for _, s := range f.Configuration().Servers {
		out = append(out, Member{ID: string(s.ID), Voter: s.Suffrage == raft.Voter})
	}
	return out, nil
}

// membershipTimeout bounds a configuration change.
const membershipTimeout = 10 * time.Second

// AddNonvoter adds host p to the group as a non-voter, from the leader.
// The replica on p (opened with VolumeSpec.Join) then catches up: the
// leader first takes a checkpoint keeping a short log, so that the newcomer
// pulls the volume as a stream. Adding a member again is harmless.
func (v *Volume) AddNonvoter(ctx context.Context, p Peer) error {
	g := v.g
	if g.raft.State() != raft.Leader {
		return fmt.Errorf("raftlog: volume %s: add %s: %w", g.spec.Name, p.ID, raft.ErrNotLeader)
	}
	ms, err := v.Members()
	if err != nil {
		return err
	}
	if slices.ContainsFunc(ms, func(m Member) bool { return m.ID == p.ID }) {
		g.addPeer(p)
		return nil
	}
	g.addPeer(p)
	v.checkpointShort()
	if err := g.raft.AddNonvoter(raft.ServerID(p.ID), raft.ServerAddress(p.Raft), 0, membershipTimeout).Error(); err != nil {
		return fmt.Errorf("raftlog: volume %s: add %s as a non-voter: %w", g.spec.Name, p.ID, err)
	}
	g.log.Info("replica added as a non-voter", "host", p.ID)
	return ctx.Err()
}

// checkpointShort takes a checkpoint that keeps only joinTrailingLogs
// entries of log.
func (v *Volume) checkpointShort() {
	r := v.g.raft
	rc := r.ReloadableConfig()
	if rc.TrailingLogs <= joinTrailingLogs {
		_ = r.Snapshot().Error()
		return
	}
	short := rc
	short.TrailingLogs = joinTrailingLogs
	if err := r.ReloadConfig(short); err != nil {
		return
	}
	defer func() { _ = r.ReloadConfig(rc) }()
	_ = r.Barrier(applyTimeout).Error()
	if err := r.Snapshot().Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		v.g.log.Warn("checkpoint before adding a replica failed", "err", err)
	}
}

// Promote makes non-voter id a voter, from the leader. Promoting a voter
// is harmless.
func (v *Volume) Promote(ctx context.Context, id string) error {
	g := v.g
	ms, err := v.Members()
	if err != nil {
		return err
	}
	i := slices.IndexFunc(ms, func(m Member) bool { return m.ID == id })
	if i < 0 {
		return fmt.Errorf("raftlog: volume %s: promote %s: %w", g.spec.Name, id, ErrNotMember)
	}
	if ms[i].Voter {
		return nil
	}
	var addr raft.ServerAddress
	for _, s := range g.raft.GetConfiguration().Configuration().Servers {
		if string(s.ID) == id {
			addr = s.Address
		}
	}
	if err := g.raft.AddVoter(raft.ServerID(id), addr, 0, membershipTimeout).Error(); err != nil {
		return fmt.Errorf("raftlog: volume %s: promote %s: %w", g.spec.Name, id, err)
	}
	g.log.Info("replica promoted to voter", "host", id)
	return ctx.Err()
}

// Remove removes host id from the group, from the leader (which must not
// be id: hand leadership away first). Removing a non-member is harmless.
// The replica's files stay where they are: its host removes them.
func (v *Volume) Remove(ctx context.Context, id string) error {
	g := v.g
	if id == g.cfg.Local {
		return fmt.Errorf("raftlog: volume %s: the leader cannot remove itself; transfer leadership first", g.spec.Name)
	}
	ms, err := v.Members()
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(ms, func(m Member) bool { return m.ID == id }) {
		return nil
	}
	if err := g.raft.RemoveServer(raft.ServerID(id), 0, membershipTimeout).Error(); err != nil {
		return fmt.Errorf("raftlog: volume %s: remove %s: %w", g.spec.Name, id, err)
	}
	g.log.Info("replica removed from the group", "host", id)
	return ctx.Err()
}

// TransferLeadershipTo hands the volume's leadership to voter id and waits
// until raft reports the transfer done (or failed).
func (v *Volume) TransferLeadershipTo(id string) error {
	g := v.g
	var addr raft.ServerAddress
	for _, s := range g.raft.GetConfiguration().Configuration().Servers {
		if string(s.ID) == id && s.Suffrage == raft.Voter {
			addr = s.Address
		}
	}
	if addr == "" {
		return fmt.Errorf("raftlog: volume %s: transfer to %s: %w", g.spec.Name, id, ErrNotMember)
	}
	g.lease.drop()
	g.ready.Store(false)
	err := g.raft.LeadershipTransferToServer(raft.ServerID(id), addr).Error()
	if err != nil {
		g.mu.Lock()
		g.leading = 0 // re-run the barrier path if we are still leader
		g.mu.Unlock()
	}
	g.checkLeadership()
	if err != nil {
		return fmt.Errorf("raftlog: volume %s: transfer to %s: %w", g.spec.Name, id, err)
	}
	return nil
}

// Barrier waits until every entry committed before the call is applied
// here (leader only) and returns the index of the last volume entry among
// them: every replica that has applied this index holds all writes
// acknowledged before the call.
func (v *Volume) Barrier(ctx context.Context) (uint64, error) {
	if err := v.g.raft.Barrier(applyTimeout).Error(); err != nil {
		return 0, fmt.Errorf("raftlog: volume %s: barrier: %w", v.g.spec.Name, err)
	}
	return v.g.fsm.applied.Load(), ctx.Err()
}

// Applied returns the index of the last volume entry this replica applied.
func (v *Volume) Applied() uint64 { return v.g.fsm.applied.Load() }

// CopyStatus is the progress of the volume copy a replica pulls from
// another (catch-up by stream).
type CopyStatus struct {
	// Active is set while the copy runs.
	Active bool `json:"active"`
	// Bytes is the data received by the last (or current) copy; Offset how
	// far through the volume it is; Size the volume's size.
	Bytes  int64 `json:"bytes"`
	Offset int64 `json:"offset"`
	Size   int64 `json:"size"`
	// Started and Finished bound the copy (Finished zero while it runs).
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"`
	// OK is set once a copy completed.
	OK bool `json:"ok"`
}

// copyMeter counts a pull's bytes and limits their rate.
type copyMeter struct {
	rate int64 // bytes/s, 0 for no limit; set before the group starts

	mu sync.Mutex
	st CopyStatus
}

// begin starts counting a pull resuming at offset from.
func (m *copyMeter) begin(from, size int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.st = CopyStatus{Active: true, Offset: from, Size: size, Started: time.Now()}
}

// add counts n bytes received, the copy being complete up to offset off,
// and sleeps as long as the rate limit asks.
func (m *copyMeter) add(ctx context.Context, n, off int64) error {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	m.st.Bytes += n
	m.st.Offset = off
	bytes, started := m.st.Bytes, m.st.Started
	m.mu.Unlock()
	if n == 0 {
		return nil
	}
	return pace.Wait(ctx, started, bytes, m.rate)
}

// end records the end of a pull.
func (m *copyMeter) end(ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.st.Active, m.st.OK, m.st.Finished = false, ok, time.Now()
}

// Copy returns the progress of this replica's last volume copy (zero if it
// never pulled one).
func (v *Volume) Copy() CopyStatus {
	m := &v.g.copying
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st
}

// rangeVersions records, per ChecksumRange of the volume, the index of the
// last entry that changed it; ranges never changed since floor (the
// checkpoint or restore the replica started from) report floor.
type rangeVersions struct {
	mu    sync.Mutex
	floor uint64
	last  []uint64
}

// reset forgets every range's version: the content is as of index.
func (r *rangeVersions) reset(index uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.floor, r.last = index, nil
}

// touch records that entry index changed [off, off+n).
func (r *rangeVersions) touch(off, n int64, index uint64) {
	if n <= 0 {
		return
	}
	first, last := off/ChecksumRange, (off+n-1)/ChecksumRange
	r.mu.Lock()
	defer r.mu.Unlock()
	if int(last) >= len(r.last) {
		r.last = append(r.last, make([]uint64, int(last)+1-len(r.last))...)
	}
	for i := first; i <= last; i++ {
		r.last[i] = index
	}
}

// version returns the version of range i.
func (r *rangeVersions) version(i int64) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if int(i) < len(r.last) && r.last[i] > r.floor {
		return r.last[i]
	}
	return r.floor
}

// RangeSum is the checksum of one ChecksumRange of a replica's file.
type RangeSum struct {
	// Sum is the first 16 bytes of the range's SHA-256, hex.
	Sum string `json:"sum"`
	// Since and Until bound the log indexes at which the range held these
	// bytes: Since is the last entry that changed it (or the checkpoint
	// the replica started from), Until the index applied when it was read.
	Since uint64 `json:"since"`
	Until uint64 `json:"until"`
}

// Comparable reports whether a and b describe the range at a common log
// index (their intervals overlap), so that equal replicas have equal sums.
func (a RangeSum) Comparable(b RangeSum) bool {
	return max(a.Since, b.Since) <= min(a.Until, b.Until)
}

// Checksums hashes ranges [first, first+count) of this replica's file
// (count ≤ 0: to the end), once the replica has applied index. Each range
// is read under the FSM's range locks, so it never holds half of an entry,
// and carries the interval of log indexes over which it held its bytes.
// Writes go on meanwhile.
func (v *Volume) Checksums(ctx context.Context, index uint64, first, count int64) ([]RangeSum, error) {
	g := v.g
	if err := g.fsm.waitApplied(ctx, index); err != nil {
		return nil, fmt.Errorf("raftlog: volume %s: waiting to apply %d: %w", g.spec.Name, index, err)
	}
	if err := g.err(); err != nil {
		return nil, err
	}
	size := g.file.Size()
	n := (size + ChecksumRange - 1) / ChecksumRange
	if count > 0 {
		n = min(n, first+count)
	}
	buf := make([]byte, ChecksumRange)
	var out []RangeSum
	for i := first; i < n; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		unlock := g.fsm.lockRange(i*ChecksumRange, ChecksumRange, false)
		since := g.fsm.versions.version(i)
		until := g.fsm.applied.Load()
		sum, err := g.fsm.rangeSum(ctx, i, buf)
		unlock()
		if err != nil {
			return nil, err
		}
		out = append(out, RangeSum{Sum: sum, Since: since, Until: until})
	}
	return out, nil
}

// rangeSum returns the checksum of range i of the file (the first 16
// bytes of its SHA-256, hex), read into buf (ChecksumRange bytes). The
// caller keeps the range from changing meanwhile.
func (f *fsm) rangeSum(ctx context.Context, i int64, buf []byte) (string, error) {
	off := i * ChecksumRange
	l := min(int64(ChecksumRange), f.file.Size()-off)
	if err := f.file.ReadAt(ctx, buf[:l], off); err != nil {
		return "", err
	}
	h := sha256.Sum256(buf[:l])
	return fmt.Sprintf("%x", h[:16]), nil
}

// SetPeers replaces the replica hosts the proxy sends requests to (the
// catalog's replicas changed, or a move's destination joined).
func (p *Proxy) SetPeers(ps []Peer) {
	if len(ps) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if slices.Equal(p.peers, ps) {
		return
	}
	p.peers = slices.Clone(ps)
	p.next %= len(p.peers)
}

// Peers returns the replica hosts the proxy sends requests to.
func (p *Proxy) Peers() []Peer {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.peers)
}

// numPeers returns how many hosts the proxy tries.
func (p *Proxy) numPeers() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.peers)
}

// RemoveVolumeFiles deletes the files and raft state of a replica that is
// not open on this host (left by a move cancelled while the host was
// down). It fails if the volume is open.
func (h *Host) RemoveVolumeFiles(name string) error {
	h.mu.Lock()
	_, open := h.groups[name]
	h.mu.Unlock()
	if open {
		return fmt.Errorf("raftlog: volume %s is open", name)
	}
	if err := os.RemoveAll(filepath.Join(h.cfg.DataDir, "groups", name)); err != nil {
		return fmt.Errorf("raftlog: volume %s: %w", name, err)
	}
	if err := h.meta.Stable(name).Drop(); err != nil {
		return fmt.Errorf("raftlog: volume %s: %w", name, err)
	}
	return h.meta.Delete([]byte(restoreKeyPrefix + name))
}
