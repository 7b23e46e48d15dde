package agent

// Replica moves (docs/mirror.md). The catalog records a move; the agents
// carry it out from what they see on each reconcile:
//
//   - the destination's agent opens a replica that joins the volume's raft
//     group (raftlog.VolumeSpec.Join) and serves it only as a forwarding
//     target until the move completes (its NBD clients keep going through
//     the proxy until then);
//   - the agent that leads the volume drives the move: it adds the
//     destination as a non-voter, promotes it once it caught up, checks
//     its content against the leader's, hands leadership away if the
//     source leads, removes the source and commits the new replicas;
//   - every agent keeps its replicas' and proxies' peer lists in line with
//     the catalog's replicas plus the move's destination; the source's
//     agent removes its replica when the catalog no longer lists it (the
//     usual reconcile), and a destination whose move was cancelled
//     removes its replica (even one left while its host was down).

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/admin/client"
	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/cluster/control"
	"github.com/tandem-project/tandem/cluster/membership"
	"github.com/tandem-project/tandem/internal/pace"
	"github.com/tandem-project/tandem/nbd"
	"github.com/tandem-project/tandem/raftlog"
	"github.com/tandem-project/tandem/volume"
)

const (
	// promoteLag is how far (in entries) a non-voter may be behind the
	// leader's commit index when it is promoted.
	promoteLag = 64
	// checkRounds bounds the integrity check's rounds over ranges that
	// changed while they were read; those still changing are then
	// compared by checksum entries (raftlog.Volume.PinChecksums).
	checkRounds = 3
	// checkBatch bounds the ranges hashed by one request to each side
	// (64 MiB, well under a second): the whole volume in one request
	// outlasted the admin client's 60 s timeout for volumes of a few
	// hundred GiB (SHA-256 and the reads run at about 1-2 GB/s), and the
	// check could then never conclude.
	checkBatch = 64
	// checkSlices is how many requests a second a rate-limited check
	// spreads its reads over (see checkBatchFor).
	checkSlices = 4
)

// checkBatchFor returns how many ranges one request of a check hashes when
// the check reads at most rate bytes a second (0: no limit): checkBatch,
// or with a limit the ranges of a quarter second's reads (at least one),
// so that the reads come in small bursts a few times a second rather than
// in one 64 MiB burst at the disk's full speed, which the VMs on the same
// disks would feel as a latency spike.
func checkBatchFor(rate int64) int64 {
	if rate <= 0 {
		return checkBatch
	}
	return min(max(rate/checkSlices/raftlog.ChecksumRange, 1), checkBatch)
}

// moveState is the agent's part of the moves.
type moveState struct {
	mu sync.Mutex
	// joining holds the replicas opened for a move to this host, not yet
	// listed in the catalog; opening marks those being opened.
	joining map[string]*raftlog.Volume
	opening map[string]bool
	// driving marks the volumes whose move this agent drives; pruning
	// those whose raft members it is bringing in line with the catalog.
	driving map[string]bool
	pruning map[string]bool
	// verifying marks the volumes whose replicas this agent verifies.
	verifying map[string]bool
	// recording marks the volumes whose replica's creation this agent is
	// recording (rebuild.go); rebuilds is when it may next ask for a
	// rebuild of a lost replica.
	recording map[string]bool
	rebuilds  map[string]rebuildAsk
}

// moves returns the agent's move state.
func (a *clusterAgent) moves() *moveState {
	m := &a.mv
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.joining == nil {
		m.joining, m.opening, m.driving, m.pruning = map[string]*raftlog.Volume{}, map[string]bool{}, map[string]bool{}, map[string]bool{}
		m.verifying, m.recording, m.rebuilds = map[string]bool{}, map[string]bool{}, map[string]rebuildAsk{}
	}
	return m
}

// flag sets key in set unless it is set already, and reports whether it
// did.
func (m *moveState) flag(set map[string]bool, key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if set[key] {
		return false
	}
	set[key] = true
	return true
}

func (m *moveState) unflag(set map[string]bool, key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(set, key)
}

// peersOf returns the hosts of a volume's group as the catalog sees them:
// its replicas and a move's destination, with their addresses (those
// known).
func peersOf(st *catalog.State, cv *catalog.Volume, except string) []raftlog.Peer {
	hosts := slices.Clone(cv.Replicas)
	if cv.Move != nil && !slices.Contains(hosts, cv.Move.To) {
		hosts = append(hosts, cv.Move.To)
	}
	var out []raftlog.Peer
	for _, h := range hosts {
		if ch, ok := st.Hosts[h]; ok && ch.RaftAddr != "" && h != except {
			out = append(out, raftlog.Peer{ID: h, Raft: ch.RaftAddr, NBD: ch.NBDAddr})
		}
	}
	return out
}

// reconcileMoves is the moves' part of reconcile: it runs after the
// proxies are reconciled and before the replicas placed here are opened.
// It deletes a replica (one joining, or one a cancelled move left) only
// if st is current: a restarted agent's stale catalog does not show the
// move its replica is joining for, and deleting it lost the copy made
// so far (the copy then started again from zero).
func (a *clusterAgent) reconcileMoves(st *catalog.State, current bool) {
	me := a.cfg.Name
	ms := a.moves()
	for _, name := range st.VolumeNames() {
		cv := st.Volumes[name]
		a.mu.Lock()
		v, p := a.vols[name], a.proxies[name]
		a.mu.Unlock()
		if v != nil {
			v.SetPeers(peersOf(st, cv, ""))
		}
		if p != nil {
			if ps := peersOf(st, cv, me); len(ps) > 0 {
				p.SetPeers(ps)
			}
		}
		ms.mu.Lock()
		j := ms.joining[name]
		ms.mu.Unlock()
		switch {
		case j != nil && cv.Holds(me) && a.replicaID(name) == cv.ID:
			switch adopt, drop := a.joinEnded(cv); {
			case adopt:
				a.adopt(name, cv.ID, j)
				v = j
			case drop && current:
				a.dropJoining(name, "the rebuild ended without completing")
			}
		case j != nil && current && (cv.Move == nil || cv.Move.To != me):
			a.dropJoining(name, "the move to this host ended without it")
		case j != nil:
			j.SetPeers(peersOf(st, cv, ""))
		case v == nil && cv.Move != nil && cv.Move.To == me && cv.Move.Phase != catalog.MoveEvicting:
			if ms.flag(ms.opening, name) {
				go func() {
					defer ms.unflag(ms.opening, name)
					if err := a.openJoining(st, cv); err != nil {
						a.log.Warn("opening a replica to move here", "volume", name, "err", err)
					}
				}()
			}
		case current && v == nil && !slices.Contains(cv.Replicas, me) && (cv.Move == nil || cv.Move.To != me) && a.replicaID(name) == cv.ID:
			// Left by a move cancelled while this host was down.
			if ms.flag(ms.opening, name) {
				if err := a.host.RemoveVolumeFiles(name); err != nil {
					a.log.Warn("removing a replica left by a cancelled move", "volume", name, "err", err)
				} else {
					a.log.Info("replica left by a cancelled move removed", "volume", name)
				}
				ms.unflag(ms.opening, name)
			}
		}
		if v == nil || v.Status().State != "Leader" || !a.ctl.CaughtUp() {
			continue
		}
		if cv.Move != nil && ms.flag(ms.driving, name) {
			go func() {
				defer ms.unflag(ms.driving, name)
				a.driveMove(name, cv.Move.ID)
			}()
		}
		if cv.Verify != nil && ms.flag(ms.verifying, name) {
			go func() {
				defer ms.unflag(ms.verifying, name)
				a.driveVerify(name, cv.Verify.ID)
			}()
		}
		if ms.flag(ms.pruning, name) {
			go func() {
				defer ms.unflag(ms.pruning, name)
				a.pruneMembers(v, cv)
			}()
		}
	}
	// Joining replicas of volumes that are gone.
	ms.mu.Lock()
	var gone []string
	for name := range ms.joining {
		if cv, ok := st.Volumes[name]; !ok || a.replicaID(name) != cv.ID {
			gone = append(gone, name)
		}
	}
	ms.mu.Unlock()
	for _, name := range gone {
		a.dropJoining(name, "the volume was deleted")
	}
}

// joinEnded reports, for this host's joining replica of cv (whose catalog
// places a replica here), whether to adopt it (its move completed) or to
// drop it (a rebuild that ended otherwise: the replica here stays lost
// and is rebuilt again).
func (a *clusterAgent) joinEnded(cv *catalog.Volume) (adopt, drop bool) {
	mark := a.rebuildMark(cv.Name)
	if mark == 0 {
		return true, false
	}
	completed, failed := rebuildDone(cv, mark)
	if completed {
		if err := a.clearRebuildMark(cv.Name); err != nil {
			a.log.Warn("adopting a rebuilt replica", "volume", cv.Name, "err", err)
			return false, false
		}
	}
	return completed, failed
}

// openJoining opens this host's replica of a volume moving here (or being
// rebuilt here): it joins the volume's group and is exported only as a
// forwarding target.
func (a *clusterAgent) openJoining(st *catalog.State, cv *catalog.Volume) error {
	peers := peersOf(st, cv, "")
	hosts := len(cv.Replicas) + 1
	if cv.Move.Rebuild() {
		hosts--
	}
	if len(peers) != hosts {
		return errors.New("replica hosts' addresses not known yet")
	}
	dir := filepath.Join(a.cfg.DataDir, "groups", cv.Name)
	if _, err := os.Stat(dir); err == nil {
		switch id := a.replicaID(cv.Name); {
		case cv.Move.Rebuild() && (id != cv.ID || a.rebuildMark(cv.Name) != cv.Move.ID):
			// The replica being rebuilt (or what is left of it), or a
			// copy from an earlier rebuild: copied again from zero.
			if err := a.host.RemoveVolumeFiles(cv.Name); err != nil {
				return err
			}
		case id == cv.ID:
			// An earlier try of this move (or of one cancelled): the
			// group's state is the volume's; the copy resumes.
		case id != 0 && (st.IsRemoved(id) || id < cv.ID):
			if err := a.host.RemoveVolumeFiles(cv.Name); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s holds a replica of unknown origin (catalog id %d, the volume's is %d)", dir, id, cv.ID)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(dir, catalogIDFile), []byte(strconv.FormatUint(cv.ID, 10)+"\n")); err != nil {
		return err
	}
	if cv.Move.Rebuild() {
		if err := writeFileSync(filepath.Join(dir, rebuildMarkFile), []byte(strconv.FormatUint(cv.Move.ID, 10)+"\n")); err != nil {
			return err
		}
	}
	v, err := a.host.OpenVolume(raftlog.VolumeSpec{Name: cv.Name, Size: cv.Size, ReadOnly: cv.ReadOnly, Peers: peers, Join: true, CopyRate: cv.Move.MaxRate})
	if err != nil {
		return err
	}
	ms := a.moves()
	ms.mu.Lock()
	ms.joining[cv.Name] = v
	ms.mu.Unlock()
	a.exps.addForward(v)
	if cv.Move.Rebuild() {
		a.log.Info("replica joining the volume's group again (rebuild)", "volume", cv.Name, "rebuild", cv.Move.ID)
	} else {
		a.log.Info("replica joining the volume's group (move)", "volume", cv.Name, "from", cv.Move.From)
	}
	return nil
}

// addForward exports only the forwarding view of a volume (a joining
// replica: the volume's own name stays with its proxy until the move
// completes).
func (e *exportSet) addForward(v *raftlog.Volume) {
	e.mu.Lock()
	defer e.mu.Unlock()
	name := raftlog.ForwardPrefix + v.Name()
	e.byName[name] = nbd.Export{Name: name, Description: "tandem volume " + v.Name(), Backend: v.Direct(), PassHandle: true}
}

// adopt makes a joining replica one of this host's replicas: the move
// completed (reconcileProxies withdrew the proxy in this pass).
func (a *clusterAgent) adopt(name string, id uint64, v *raftlog.Volume) {
	ms := a.moves()
	ms.mu.Lock()
	delete(ms.joining, name)
	ms.mu.Unlock()
	a.mu.Lock()
	a.vols[name], a.ids[name] = v, id
	a.mu.Unlock()
	a.exps.add(v)
	a.found(name)
	a.log.Info("volume ready (moved here)", "name", name)
}

// dropJoining closes and removes a joining replica.
func (a *clusterAgent) dropJoining(name, why string) {
	ms := a.moves()
	ms.mu.Lock()
	v := ms.joining[name]
	delete(ms.joining, name)
	ms.mu.Unlock()
	if v == nil {
		return
	}
	a.exps.mu.Lock()
	delete(a.exps.byName, raftlog.ForwardPrefix+name)
	a.exps.mu.Unlock()
	a.fwd.Disconnect(raftlog.ForwardPrefix + name)
	if err := a.host.CloseVolume(name, true); err != nil {
		a.log.Warn("removing a joining replica", "volume", name, "err", err)
		return
	}
	a.log.Info("joining replica removed", "volume", name, "why", why)
}

// pruneMembers removes from the raft group of v (which this host leads)
// the servers the catalog does not place there: the destination of a
// cancelled or failed move. It never removes this host.
func (a *clusterAgent) pruneMembers(v *raftlog.Volume, cv *catalog.Volume) {
	members, err := v.Members()
	if err != nil {
		return
	}
	for _, m := range members {
		if slices.Contains(cv.Replicas, m.ID) || (cv.Move != nil && cv.Move.To == m.ID) || m.ID == a.cfg.Name {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		err := v.Remove(ctx, m.ID)
		cancel()
		if err != nil {
			a.log.Warn("removing a server the catalog does not place in the volume's group", "volume", cv.Name, "host", m.ID, "err", err)
		} else {
			a.log.Info("server removed from the volume's group (move rolled back)", "volume", cv.Name, "host", m.ID)
		}
	}
}

// driveMove carries volume name's move out while this host leads the
// volume and the move is the catalog's current one.
func (a *clusterAgent) driveMove(name string, id uint64) {
	log := a.log.With("volume", name, "move", id)
	for {
		select {
		case <-a.stop:
			return
		default:
		}
		st := a.ctl.State()
		cv := st.Volumes[name]
		a.mu.Lock()
		v := a.vols[name]
		a.mu.Unlock()
		if cv == nil || cv.Move == nil || cv.Move.ID != id || v == nil || v.Status().State != "Leader" {
			return
		}
		m := cv.Move
		wait, err := a.moveStep(st, cv, v, m)
		if err != nil {
			log.Warn("replica move step", "phase", m.Phase, "err", err)
			wait = max(wait, time.Second)
		}
		if wait < 0 {
			return
		}
		select {
		case <-a.stop:
			return
		case <-time.After(wait):
		}
	}
}

// moveStep does the next step of move m; it returns how long to wait
// before the next one (negative: this agent's part is over).
func (a *clusterAgent) moveStep(st *catalog.State, cv *catalog.Volume, v *raftlog.Volume, m *catalog.Move) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	to, ok := st.Hosts[m.To]
	if !ok {
		return time.Second, fmt.Errorf("destination %s not in the catalog", m.To)
	}
	members, err := v.Members()
	if err != nil {
		return time.Second, err
	}
	var dest *raftlog.Member
	for i := range members {
		if members[i].ID == m.To {
			dest = &members[i]
		}
	}
	switch m.Phase {
	case catalog.MoveEvicting:
		// A rebuild: the replica leaves the group (its agent deletes it),
		// then joins it again as a move's destination does.
		if dest == nil {
			_, err := a.commitMove(ctx, catalog.Command{Kind: catalog.CmdMovePhase, Name: cv.Name, Move: &catalog.MoveCommand{ID: m.ID, Phase: catalog.MoveCopying}})
			return 0, err
		}
		if m.To == a.cfg.Name {
			target := otherVoter(cv.Replicas, members, m.To)
			a.log.Info("handing the volume's leadership away before its replica here is rebuilt", "volume", cv.Name, "to", target)
			if err := v.TransferLeadershipTo(target); err != nil {
				return time.Second, err
			}
			return -1, nil
		}
		return 200 * time.Millisecond, v.Remove(ctx, m.To)
	case catalog.MoveCopying:
		if dest == nil {
			return 200 * time.Millisecond, v.AddNonvoter(ctx, raftlog.Peer{ID: m.To, Raft: to.RaftAddr, NBD: to.NBDAddr})
		}
		if !dest.Voter {
			lv, ok := a.localOf(ctx, to, cv.Name)
			commit := v.Status().CommitIndex
			if !ok || lv.AppliedIndex == 0 || (lv.Copy != nil && lv.Copy.Active) || lv.AppliedIndex+promoteLag < commit {
				return 200 * time.Millisecond, nil
			}
			if err := v.Promote(ctx, m.To); err != nil {
				return time.Second, err
			}
		}
		_, err := a.commitMove(ctx, catalog.Command{Kind: catalog.CmdMovePhase, Name: cv.Name, Move: &catalog.MoveCommand{ID: m.ID, Phase: catalog.MovePromoted}})
		return 0, err
	case catalog.MovePromoted:
		if dest == nil {
			return time.Second, fmt.Errorf("destination %s is not in the volume's group", m.To)
		}
		if !dest.Voter {
			return time.Second, v.Promote(ctx, m.To)
		}
		check := a.checkReplica(ctx, v, cv.Name, to, m.MaxRate)
		switch {
		case check.Mismatched > 0:
			_, err := a.commitMove(ctx, catalog.Command{Kind: catalog.CmdEndMove, Name: cv.Name, Move: &catalog.MoveCommand{ID: m.ID,
				Result: &catalog.MoveResult{Result: catalog.MoveFailed, Error: check.Error, Check: &check}}})
			return -1, err
		case !check.OK:
			return 2 * time.Second, fmt.Errorf("integrity check not conclusive: %s", check.Error)
		}
		a.log.Info("moved replica verified", "volume", cv.Name, "to", m.To, "index", check.Index, "ranges", check.Ranges)
		if m.Rebuild() {
			res := a.copyResult(ctx, to, cv.Name)
			res.Check = &check
			_, err := a.commitMove(ctx, catalog.Command{Kind: catalog.CmdEndMove, Name: cv.Name, Move: &catalog.MoveCommand{ID: m.ID, Result: res}})
			if err == nil {
				a.log.Info("replica rebuilt", "volume", cv.Name, "host", m.To, "bytes", res.Bytes, "copy", res.Copy)
			}
			return -1, err
		}
		// A replica that stays becomes the preferred leader if the source
		// was.
		leader := ""
		for _, h := range cv.Replicas {
			if h != m.From && leader == "" {
				leader = h
			}
		}
		_, err := a.commitMove(ctx, catalog.Command{Kind: catalog.CmdMovePhase, Name: cv.Name, Move: &catalog.MoveCommand{ID: m.ID, Phase: catalog.MoveRemoving, Check: &check, Leader: leader}})
		return 0, err
	case catalog.MoveRemoving:
		if m.From == a.cfg.Name {
			target := ""
			if cv.PreferredLeader != m.From {
				target = cv.PreferredLeader
			}
			if target == "" {
				target = otherVoter(cv.Replicas, members, m.From)
			}
			if target == "" {
				target = m.To
			}
			a.log.Info("handing the volume's leadership away before leaving its group", "volume", cv.Name, "to", target)
			if err := v.TransferLeadershipTo(target); err != nil {
				return time.Second, err
			}
			return -1, nil
		}
		if err := v.Remove(ctx, m.From); err != nil {
			return time.Second, err
		}
		res := a.copyResult(ctx, to, cv.Name)
		_, err := a.commitMove(ctx, catalog.Command{Kind: catalog.CmdEndMove, Name: cv.Name, Move: &catalog.MoveCommand{ID: m.ID, Leader: a.cfg.Name, Result: res}})
		if err == nil {
			a.log.Info("replica moved", "volume", cv.Name, "from", m.From, "to", m.To, "bytes", res.Bytes, "copy", res.Copy)
		}
		return -1, err
	}
	return time.Second, fmt.Errorf("unknown move phase %q", m.Phase)
}

// otherVoter returns the first of replicas, other than host, that members
// lists as a voter ("" if none): where a leader that leaves hands its
// leadership.
func otherVoter(replicas []string, members []raftlog.Member, host string) string {
	for _, h := range replicas {
		if h != host && slices.ContainsFunc(members, func(x raftlog.Member) bool { return x.ID == h && x.Voter }) {
			return h
		}
	}
	return ""
}

// copyResult returns a completed move's result with the destination's
// copy figures.
func (a *clusterAgent) copyResult(ctx context.Context, to *catalog.Host, name string) *catalog.MoveResult {
	res := &catalog.MoveResult{Result: catalog.MoveCompleted}
	if lv, ok := a.localOf(ctx, to, name); ok && lv.Copy != nil {
		res.Bytes = lv.Copy.Bytes
		if !lv.Copy.Finished.IsZero() {
			res.Copy = lv.Copy.Finished.Sub(lv.Copy.Started)
		}
	}
	return res
}

// localOf returns host h's report of its replica of volume name.
func (a *clusterAgent) localOf(ctx context.Context, h *catalog.Host, name string) (admin.LocalVolume, bool) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	lvs, err := a.localVolumes(ctx, h)
	if err != nil {
		return admin.LocalVolume{}, false
	}
	for _, lv := range lvs {
		if lv.Name == name {
			return lv, true
		}
	}
	return admin.LocalVolume{}, false
}

// checkReplica compares the content of the destination's replica with the
// leader's (v) range by range: both hash their file once they applied a
// barrier index, each range tagged with the log indexes over which it held
// its bytes; ranges whose two intervals do not overlap (written between
// the two reads) are read again, up to checkRounds rounds, and those
// written throughout are then hashed by every replica at one log index,
// through a checksum entry (checkPinned). With rate > 0 (the move's
// --max-rate) it reads at most rate bytes a second on each side, so that
// the check, like the copy, leaves the disks to the VMs.
func (a *clusterAgent) checkReplica(ctx context.Context, v *raftlog.Volume, name string, to *catalog.Host, rate int64) catalog.MoveCheck {
	check := catalog.MoveCheck{RangeBytes: raftlog.ChecksumRange}
	c, err := a.adminClient(to.AdminAddr, 60*time.Second)
	if err != nil {
		check.Error = err.Error()
		return check
	}
	index, err := v.Barrier(ctx)
	if err != nil {
		check.Error = err.Error()
		return check
	}
	check.Index = index
	n := (v.Size() + raftlog.ChecksumRange - 1) / raftlog.ChecksumRange
	check.Ranges = n
	pending := make([]int64, n)
	for i := range pending {
		pending[i] = int64(i)
	}
	var bad []int64
	start, hashed := time.Now(), int64(0)
	batch := checkBatchFor(rate)
	for round := 0; round < checkRounds && len(pending) > 0; round++ {
		var next []int64
		for len(pending) > 0 {
			if err := pace.Wait(ctx, start, hashed, rate); err != nil {
				check.Error = err.Error()
				return check
			}
			// A run of consecutive ranges, one request each side.
			first, count := nextRun(pending, batch)
			hashed += count * raftlog.ChecksumRange
			pending = pending[count:]
			// The destination first: it is behind, the leader reads later
			// at a larger index.
			theirs, err := c.LocalChecksums(ctx, name, admin.ChecksumQuery{Index: index, First: first, Count: count})
			if err != nil {
				check.Error = err.Error()
				return check
			}
			ours, err := v.Checksums(ctx, index, first, count)
			if err != nil {
				check.Error = err.Error()
				return check
			}
			for k := range min(len(ours), len(theirs.Ranges)) {
				o, t := ours[k], theirs.Ranges[k]
				switch {
				case !o.Comparable(t):
					next = append(next, first+int64(k))
				case o.Sum != t.Sum:
					bad = append(bad, first+int64(k))
					check.Compared++
				default:
					check.Compared++
				}
			}
			if len(ours) != len(theirs.Ranges) {
				check.Error = fmt.Sprintf("%d ranges here, %d on %s (sizes differ)", len(ours), len(theirs.Ranges), to.Name)
				return check
			}
		}
		pending = next
	}
	for len(pending) > 0 {
		first, count := nextRun(pending, raftlog.MaxPinnedRanges)
		if err := pace.Wait(ctx, start, hashed, rate); err != nil {
			check.Error = err.Error()
			return check
		}
		hashed += count * raftlog.ChecksumRange
		pending = pending[count:]
		differ, err := checkPinned(ctx, v, c, name, first, count)
		if err != nil {
			check.Error = fmt.Sprintf("ranges %d to %d changed during every one of %d reads, and their checksum entry failed: %v", first, first+count-1, checkRounds, err)
			return check
		}
		bad = append(bad, differ...)
		check.Compared += count
		check.Pinned += count
	}
	slices.Sort(bad)
	check.Mismatched = int64(len(bad))
	check.OK = check.Mismatched == 0 && check.Compared == check.Ranges
	if len(bad) > 0 {
		check.Error = fmt.Sprintf("%d of %d ranges differ on %s, the first at byte %d", len(bad), n, to.Name, bad[0]*raftlog.ChecksumRange)
	}
	return check
}

// nextRun returns the run of consecutive ranges pending starts with, at
// most limit long.
func nextRun(pending []int64, limit int64) (first, count int64) {
	first, count = pending[0], 1
	for int(count) < len(pending) && pending[count] == first+count && count < limit {
		count++
	}
	return first, count
}

// checkPinned compares count ranges from range first of the replica that
// c's agent holds with the leader's (v) at one log index: a checksum
// entry has every replica hash them as it applies it. It returns the
// ranges that differ.
func checkPinned(ctx context.Context, v *raftlog.Volume, c *client.Client, name string, first, count int64) ([]int64, error) {
	index, id, ours, err := v.PinChecksums(ctx, first, count)
	if err != nil {
		return nil, err
	}
	theirs, err := c.LocalChecksums(ctx, name, admin.ChecksumQuery{Index: index, First: first, Count: count, Pinned: id})
	if err != nil {
		return nil, err
	}
	if len(theirs.Ranges) != len(ours) {
		return nil, fmt.Errorf("%d ranges here, %d there (sizes differ)", len(ours), len(theirs.Ranges))
	}
	var differ []int64
	for k := range ours {
		if ours[k].Sum != theirs.Ranges[k].Sum {
			differ = append(differ, first+int64(k))
		}
	}
	return differ, nil
}

// commitMove commits a move step on the control leader.
func (a *clusterAgent) commitMove(ctx context.Context, cmd catalog.Command) (uint64, error) {
	cmd.At = time.Now().UTC()
	step := admin.MoveStep{Volume: cmd.Name, Kind: cmd.Kind, Move: *cmd.Move}
	return a.commitOnLeader(ctx, cmd, func(ctx context.Context, c *client.Client) (uint64, error) { return c.MoveStep(ctx, step) })
}

// describeMove adds a volume's move, with the destination's progress, to
// its API view.
func (a *clusterAgent) describeMove(v *admin.Volume, cv *catalog.Volume, local map[string][]admin.LocalVolume) {
	v.LastMove = admin.MoveResultOf(cv.LastMove)
	for _, p := range cv.Planned {
		v.PlannedMoves = append(v.PlannedMoves, admin.PlannedMove{From: p.From, To: p.To})
	}
	m := cv.Move
	if m == nil {
		return
	}
	vm := &admin.VolumeMove{ID: m.ID, From: m.From, To: m.To, Reason: m.Reason, Phase: m.Phase, Started: m.Started, MaxRate: m.MaxRate, Size: cv.Size, Check: admin.MoveCheckOf(m.Check)}
	var commit uint64
	for _, r := range v.Replicas {
		if r.Host == v.Leader {
			commit = r.CommitIndex
		}
	}
	for _, lv := range local[m.To] {
		if lv.Name != cv.Name {
			continue
		}
		if commit > lv.AppliedIndex {
			vm.Lag = commit - lv.AppliedIndex
		}
		if cp := lv.Copy; cp != nil {
			vm.Copied, vm.Done, vm.Copying = cp.Bytes, cp.Offset, cp.Active
			end := cp.Finished
			if cp.Active || end.IsZero() {
				end = time.Now()
			}
			if d := end.Sub(cp.Started).Seconds(); d > 0 {
				vm.Rate = int64(float64(cp.Bytes) / d)
			}
		}
	}
	v.Move = vm
}

// moveError maps a refused move command to an API error.
func moveError(err error) error {
	msg := strings.TrimPrefix(err.Error(), "catalog: ")
	switch {
	case errors.Is(err, catalog.ErrNoMove), errors.Is(err, catalog.ErrExists):
		return admin.Errorf(http.StatusConflict, "%s", msg)
	case errors.Is(err, catalog.ErrNotFound):
		return admin.Errorf(http.StatusNotFound, "%s", msg)
	case errors.Is(err, catalog.ErrInvalid):
		return admin.Errorf(http.StatusBadRequest, "%s", msg)
	case errors.Is(err, control.ErrNotLeader):
		return admin.Errorf(http.StatusServiceUnavailable, "the control leader changed during the request; retry")
	}
	return err
}

// MoveVolume implements admin.Mover (on the control leader).
func (a *clusterAgent) MoveVolume(ctx context.Context, name string, req admin.MoveVolume) (admin.Volume, error) {
	if req.MaxRate < 0 {
		return admin.Volume{}, admin.Errorf(http.StatusBadRequest, "max_rate: negative")
	}
	st := a.ctl.State()
	cmd := catalog.MoveCommand{From: req.From, To: req.To, Hosts: req.Hosts, MaxRate: int64(req.MaxRate)}
	dests := []string{req.To}
	switch {
	case len(req.Hosts) > 0 && (req.From != "" || req.To != ""):
		return admin.Volume{}, admin.Errorf(http.StatusBadRequest, "give either from and to (one replica) or hosts (the replica set), not both")
	case len(req.Hosts) > 0:
		plan, err := st.PlanMoves(name, req.Hosts)
		if err != nil {
			return admin.Volume{}, moveError(err)
		}
		dests = dests[:0]
		for _, p := range plan {
			dests = append(dests, p.To)
		}
		if err := st.CheckMove(name, plan[0].From, plan[0].To); err != nil {
			return admin.Volume{}, moveError(err)
		}
	default:
		if err := st.CheckMove(name, req.From, req.To); err != nil {
			return admin.Volume{}, moveError(err)
		}
	}
	cv := st.Volumes[name]
	for _, to := range dests {
		if m, ok := a.members.Member(to); !ok || m.State != membership.Alive {
			return admin.Volume{}, admin.Errorf(http.StatusBadRequest, "host %s is not alive", to)
		}
		if h := st.Hosts[to]; to != req.From && h.Capacity-st.Allocated(to) < cv.Size {
			return admin.Volume{}, admin.Errorf(http.StatusConflict, "host %s has no room for a replica of %q (%s)", to, name, volume.FormatSize(cv.Size))
		}
	}
	err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdMoveReplica, Name: name, At: time.Now().UTC(), Move: &cmd})
	if err != nil {
		return admin.Volume{}, moveError(err)
	}
	return a.Volume(ctx, name)
}

// CancelMove implements admin.Mover (on the control leader).
func (a *clusterAgent) CancelMove(ctx context.Context, name string) (admin.Volume, error) {
	cv, ok := a.ctl.State().Volumes[name]
	if !ok {
		return admin.Volume{}, admin.Errorf(http.StatusNotFound, "no volume named %q", name)
	}
	if cv.Move == nil {
		return admin.Volume{}, admin.Errorf(http.StatusConflict, "volume %q is not moving a replica", name)
	}
	if cv.Move.Phase == catalog.MoveRemoving {
		return admin.Volume{}, admin.Errorf(http.StatusConflict, "too late to cancel: %s is leaving the group of volume %q, the move completes", cv.Move.From, name)
	}
	err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdEndMove, Name: name, At: time.Now().UTC(),
		Move: &catalog.MoveCommand{ID: cv.Move.ID, Result: &catalog.MoveResult{Result: catalog.MoveCancelled}}})
	if err != nil {
		return admin.Volume{}, moveError(err)
	}
	return a.Volume(ctx, name)
}

// MoveStep implements admin.Mover (on the control leader).
func (a *clusterAgent) MoveStep(ctx context.Context, s admin.MoveStep) (uint64, error) {
	switch s.Kind {
	case catalog.CmdMovePhase, catalog.CmdEndMove, catalog.CmdReplicaOpened:
	case catalog.CmdMoveReplica:
		// An agent's request to rebuild its lost replica (rebuild.go).
		if s.Move.Reason != catalog.MoveLost {
			return 0, admin.Errorf(http.StatusBadRequest, "an agent asks for a move_replica only to rebuild a lost replica")
		}
	default:
		return 0, admin.Errorf(http.StatusBadRequest, "%q is not a move step", s.Kind)
	}
	mc := s.Move
	idx, err := a.ctl.Commit(ctx, catalog.Command{Kind: s.Kind, Name: s.Volume, Move: &mc, At: time.Now().UTC()})
	if err != nil {
		return 0, moveError(err)
	}
	return idx, nil
}

// LocalChecksums implements admin.Mover (any agent with a replica).
func (a *clusterAgent) LocalChecksums(ctx context.Context, name string, q admin.ChecksumQuery) (admin.Checksums, error) {
	a.mu.Lock()
	v := a.vols[name]
	a.mu.Unlock()
	if v == nil {
		ms := a.moves()
		ms.mu.Lock()
		v = ms.joining[name]
		ms.mu.Unlock()
	}
	if v == nil {
		return admin.Checksums{}, admin.Errorf(http.StatusNotFound, "no replica of volume %q on this host", name)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var sums []raftlog.RangeSum
	var err error
	if q.Pinned != 0 {
		sums, err = v.PinnedChecksums(ctx, q.Index, q.Pinned)
	} else {
		sums, err = v.Checksums(ctx, q.Index, q.First, q.Count)
	}
	if err != nil {
		return admin.Checksums{}, admin.Errorf(http.StatusServiceUnavailable, "%v", err)
	}
	return admin.Checksums{Host: a.cfg.Name, First: q.First, RangeBytes: raftlog.ChecksumRange, Ranges: sums, Status: v.Status()}, nil
}
