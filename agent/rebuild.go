package agent

// Rebuilding a replica in place (docs/mirror.md). The catalog records,
// before an agent creates its replica of a volume, that it did
// (catalog.Volume.Opened). A listed replica found without raft state
// (its files lost) is not created anew, which would make an empty voter
// of it: the agent asks for a rebuild (a move from this host to itself,
// reason "lost"), during which the volume's leader removes the server
// from the group, this agent copies the replica as any move's
// destination does, and the leader adds it back once it caught up and
// matched the leader's content.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/admin/client"
	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/raftlog"
)

// rebuildMarkFile, in a replica's directory, names the rebuild (its move
// ID) that created it: such a replica is this host's only once that
// rebuild completed.
const rebuildMarkFile = "rebuild-id"

// Bounds of the wait between two rebuilds an agent asks for one lost
// replica (doubling while they end without completing).
const (
	rebuildRetryMin = time.Minute
	rebuildRetryMax = 30 * time.Minute
)

// rebuildMark returns the move ID recorded in this host's replica of
// volume name by the rebuild that created it (0: none).
func (a *clusterAgent) rebuildMark(name string) uint64 {
	return a.replicaNumber(name, rebuildMarkFile)
}

// clearRebuildMark makes the replica of volume name an ordinary one: its
// rebuild completed. A mark that a crash brings back is cleared again on
// the next open (the catalog still says the rebuild completed).
func (a *clusterAgent) clearRebuildMark(name string) error {
	err := os.Remove(filepath.Join(a.cfg.DataDir, "groups", name, rebuildMarkFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// rebuildDone reports how the rebuild with move ID id of this host's
// replica of cv ended: completed, or ended otherwise (both false while it
// runs or if the catalog does not say).
func rebuildDone(cv *catalog.Volume, id uint64) (completed, failed bool) {
	if cv.Move != nil && cv.Move.ID == id {
		return false, false
	}
	r := cv.LastMove
	if r == nil || r.ID != id {
		// Ended, and another move ended after it: had it completed, the
		// replica would have been adopted then.
		return false, cv.LastMove != nil && cv.LastMove.ID > id
	}
	return r.Result == catalog.MoveCompleted, r.Result != catalog.MoveCompleted
}

// recordOpened commits, on the control leader, that this host created (or
// is about to create) its replica of cv.
func (a *clusterAgent) recordOpened(ctx context.Context, cv *catalog.Volume) error {
	mc := catalog.MoveCommand{ID: cv.ID, From: a.cfg.Name}
	cmd := catalog.Command{Kind: catalog.CmdReplicaOpened, Name: cv.Name, Move: &mc, At: time.Now().UTC()}
	step := admin.MoveStep{Volume: cv.Name, Kind: cmd.Kind, Move: mc}
	_, err := a.commitOnLeader(ctx, cmd, func(ctx context.Context, c *client.Client) (uint64, error) { return c.MoveStep(ctx, step) })
	if err != nil {
		return fmt.Errorf("recording the replica's creation in the catalog: %w", err)
	}
	return nil
}

// recordOpenedLater records, in the background, that this host holds its
// replica of cv (a replica created before the catalog kept such records).
func (a *clusterAgent) recordOpenedLater(cv *catalog.Volume) {
	ms := a.moves()
	if !ms.flag(ms.recording, cv.Name) {
		return
	}
	go func() {
		defer ms.unflag(ms.recording, cv.Name)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := a.recordOpened(ctx, cv); err != nil {
			a.log.Warn("recording an existing replica", "volume", cv.Name, "err", err)
		}
	}()
}

// askRebuild asks the control leader, in the background, to rebuild this
// host's replica of cv in place, its state lost. It asks again, after a
// wait that doubles up to rebuildRetryMax, while the replica stays lost
// (a rebuild that failed or was cancelled).
func (a *clusterAgent) askRebuild(cv *catalog.Volume, why error) {
	ms := a.moves()
	if cv.Move != nil {
		// One move at a time: a rebuild of this replica runs already, or
		// this one is asked for after the volume's move.
		ms.mu.Lock()
		if r := ms.rebuilds[cv.Name]; r.id != cv.ID || !r.lost {
			ms.rebuilds[cv.Name] = rebuildAsk{id: cv.ID, lost: true}
		}
		ms.mu.Unlock()
		return
	}
	now := time.Now()
	ms.mu.Lock()
	r := ms.rebuilds[cv.Name]
	if r.id == cv.ID && now.Before(r.next) {
		ms.mu.Unlock()
		return
	}
	wait := rebuildRetryMin
	if r.id == cv.ID && r.wait > 0 {
		wait = min(2*r.wait, rebuildRetryMax)
	}
	ms.rebuilds[cv.Name] = rebuildAsk{id: cv.ID, next: now.Add(wait), wait: wait, lost: true}
	ms.mu.Unlock()
	a.log.Error("this host's replica lost its raft state: asking for a rebuild in place", "volume", cv.Name, "err", why)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		mc := catalog.MoveCommand{From: a.cfg.Name, To: a.cfg.Name, Reason: catalog.MoveLost}
		cmd := catalog.Command{Kind: catalog.CmdMoveReplica, Name: cv.Name, Move: &mc, At: time.Now().UTC()}
		step := admin.MoveStep{Volume: cv.Name, Kind: cmd.Kind, Move: mc}
		if _, err := a.commitOnLeader(ctx, cmd, func(ctx context.Context, c *client.Client) (uint64, error) { return c.MoveStep(ctx, step) }); err != nil {
			a.log.Warn("asking for a rebuild of a lost replica", "volume", cv.Name, "err", err)
		}
	}()
}

// rebuildAsk is when an agent may next ask for a rebuild of a lost
// replica of the volume with catalog ID id.
type rebuildAsk struct {
	id   uint64
	next time.Time
	wait time.Duration
	// lost: the replica is lost until it opens again.
	lost bool
}

// lostOnOpen decides, for this host's replica of cv whose directory holds
// no replica of the volume (missing, or removed just now), whether it may
// be created: raftlog.ErrStateLost if the catalog says it was created before, an error
// while the catalog is not current (it may not show that yet), and
// otherwise nil once the creation is recorded.
func (a *clusterAgent) lostOnOpen(ctx context.Context, cv *catalog.Volume, current bool) error {
	switch {
	case slices.Contains(cv.Opened, a.cfg.Name):
		return fmt.Errorf("volume %s: %w", cv.Name, raftlog.ErrStateLost)
	case !current:
		return errors.New("waiting for a current catalog before creating the replica")
	}
	return a.recordOpened(ctx, cv)
}

// lost reports whether this host's replica of cv, which the catalog places
// here, is lost: found without state (the agent asked for a rebuild), or
// rebuilt by a rebuild that ended without completing. Its clients here are
// served through a proxy until it is rebuilt.
func (a *clusterAgent) lost(cv *catalog.Volume) bool {
	ms := a.moves()
	ms.mu.Lock()
	r, j := ms.rebuilds[cv.Name], ms.joining[cv.Name]
	ms.mu.Unlock()
	if r.id == cv.ID && r.lost {
		return true
	}
	if j == nil {
		return false
	}
	if mark := a.rebuildMark(cv.Name); mark != 0 {
		_, failed := rebuildDone(cv, mark)
		return failed
	}
	return false
}

// found records that this host's replica of volume name is open: it is no
// longer lost.
func (a *clusterAgent) found(name string) {
	ms := a.moves()
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if r, ok := ms.rebuilds[name]; ok {
		r.lost = false
		ms.rebuilds[name] = r
	}
}
