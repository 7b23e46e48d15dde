package raftlog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tandem-project/tandem/raftlog/mux"
	"github.com/tandem-project/tandem/raftlog/stablefile"
	"github.com/tandem-project/tandem/raftlog/transport"
	"github.com/tandem-project/tandem/raftlog/wal"
	"github.com/tandem-project/tandem/volume"
	"github.com/tandem-project/tandem/volume/blockfile"
)

// Group is one volume's raft group on this host: the replica's volume file,
// its FSM, log, stores and transport, and the leadership state that decides
// whether this host may serve the volume itself.
type Group struct {
	h    *Host
	spec VolumeSpec
	cfg  groupConfig
	log  *slog.Logger

	file *blockfile.File
	fsm  *fsm
	raft *raft.Raft
	// started holds raft once NewRaft returned: the FSM's goroutine (a
	// restore at start) may run before g.raft is assigned.
	started atomic.Pointer[raft.Raft]
	logs    raft.LogStore
	stable  *stablefile.Store
	trans   raft.Transport
	layer   *mux.Layer

	batch *batcher
	// commits maps the first data byte of each entry this host's batcher
	// is committing to the channel its applyEntry waits on, for the FSM to
	// answer it at commit (see fsm.committed).
	commitMu sync.Mutex
	commits  map[*byte]chan applyOutcome
	lease    *lease
	fwd      *forwarder
	// preferred is the host that should lead the volume ("" for any): the
	// spec's, then what SetPreferredLeader sets.
	preferred atomic.Pointer[string]
	// peerList holds the hosts of the group's members as far as they are
	// known (see peers and SetPeers in membership.go).
	peerList atomic.Pointer[[]Peer]
	// copying reports the progress of a volume pull (membership.go).
	copying copyMeter
	// streams are the volume streams this replica serves (stream.go):
	// close ends them before it closes the file.
	streams streamSet
	// failure is what took this replica out of service (see failed);
	// forwardTo is then the host its agent forwards clients' I/O to: the
	// leader it knew at the failure, then the next replica each time the
	// one tried does not answer as leader (see failedTarget).
	failure   atomic.Pointer[error]
	forwardTo atomic.Pointer[string]

	// leading is the leadership generation this host currently holds
	// (0 when it is not the leader); ready is set once the generation's
	// barrier has applied every earlier entry.
	mu      sync.Mutex
	gen     uint64
	leading uint64
	ready   atomic.Bool
	changed chan struct{} // closed and replaced at every leadership change

	stop chan struct{}
	wg   sync.WaitGroup
}

// groupConfig is what a group needs from its host.
type groupConfig struct {
	Local string
	Dir   string
	Peers []Peer // the replicas' hosts
}

const (
	restoreKeyPrefix = "restore/"
	applyTimeout     = 10 * time.Second
	// logCacheEntries bounds the entries kept in memory for replication
	// (at most MaxEntryBytes each).
	logCacheEntries = 32
)

// restoreState is kept in meta while a replica pulls its volume, so that a
// crash in the middle is finished before the replica rejoins, from where
// it stopped; once the pull completed it stays, Complete, so that the
// same checkpoint sent again (raft retries an InstallSnapshot whose
// receiver crashed during the pull) needs no new copy.
type restoreState struct {
	Index    uint64 `json:"index"`
	Done     int64  `json:"done"` // bytes of the volume copied so far
	Complete bool   `json:"complete,omitempty"`
}

func openGroup(ctx context.Context, h *Host, spec VolumeSpec, gc groupConfig) (_ *Group, err error) {
	g := &Group{
		h:       h,
		spec:    spec,
		cfg:     gc,
		log:     h.log.With("volume", spec.Name),
		lease:   newLease(time.Duration(float64(h.cfg.HeartbeatTimeout) * h.cfg.LeaseFraction)),
		commits: map[*byte]chan applyOutcome{},
		changed: make(chan struct{}),
		stop:    make(chan struct{}),
	}
	if err := os.MkdirAll(gc.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("raftlog: volume %s: %w", spec.Name, err)
	}
	defer func() {
		if err != nil {
			g.closeStores(false)
		}
	}()
	g.file, err = blockfile.Open(filepath.Join(gc.Dir, "volume.img"), blockfile.Options{Size: spec.Size, Create: true})
	if err != nil {
		return nil, fmt.Errorf("raftlog: volume %s: %w", spec.Name, err)
	}
	g.preferred.Store(&spec.PreferredLeader)
	g.setPeers(gc.Peers)
	g.copying.rate = spec.CopyRate
	g.fsm = newFSM(g.file, g.log)
	g.fsm.committed = g.entryCommitted
	g.fsm.restore = g.restore
	g.fsm.onFail = g.failed
	g.fsm.room = h.room.check
	g.logs, err = openLogStore(filepath.Join(gc.Dir, "log"), h.room.check, h.cfg.logConfig)
	if err != nil {
		return nil, fmt.Errorf("raftlog: volume %s: log: %w", spec.Name, err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(gc.Dir, 2, hclogger(g.log, "snapshots"))
	if err != nil {
		return nil, fmt.Errorf("raftlog: volume %s: snapshots: %w", spec.Name, err)
	}
	if g.stable, err = h.OpenStable(spec.Name, gc.Dir); err != nil {
		return nil, err
	}
	stable := g.stable
	h.setOpening(spec.Name, holdsEntries(g.logs, snaps))
	defer h.doneOpening(spec.Name)
	rejoin := false
	if spec.AskPeers && !spec.Join && h.mux != nil && len(gc.Peers) > 1 && !holdsEntries(g.logs, snaps) {
		// Without state: a new volume, or a lost replica (readmit.go).
		history, err := h.GroupHasHistory(ctx, spec.Name, gc.Peers)
		if err != nil {
			return nil, err
		}
		if history {
			g.log.Warn("this replica has no state but the volume's group has a history (its files were lost, or it started after the others elected a leader): it leaves the group and joins again as a new replica")
			if err := h.readmitStep(ctx, spec.Name, gc.Peers, stepEvict, nil); err != nil {
				return nil, err
			}
			rejoin, spec.Join, g.spec.Join = true, true, true
		}
	}

	// The FSM restarts from the last checkpoint.
	if list, err := snaps.List(); err == nil && len(list) > 0 {
		if info, seen, err := readSnapshotInfo(snaps, list[0].ID); err == nil {
			g.fsm.applied.Store(info.Index)
			g.fsm.versions.reset(info.Index)
			g.fsm.loadSeen(seen)
			g.fsm.loadFence(info)
		} else {
			return nil, fmt.Errorf("raftlog: volume %s: reading checkpoint %s: %w", spec.Name, list[0].ID, err)
		}
	}
	// A pull cut short by a crash is finished before the replica may vote
	// or lead: its file is a mix of old and new blocks until then.
	if err := g.finishRestore(); err != nil {
		return nil, err
	}

	if h.mux != nil {
		g.layer, err = h.mux.Layer(spec.Name)
		if err != nil {
			return nil, err
		}
		g.trans = transport.New(transport.Config{
			Stream: g.layer,
			// InstallSnapshot waits while the follower pulls the volume.
			SnapshotTimeout: 24 * time.Hour,
			Logger:          g.log,
		})
	} else {
		_, g.trans = raft.NewInmemTransport(raft.ServerAddress(gc.Local))
	}

	if len(gc.Peers) > 1 {
		// A replica that acknowledged the leader just before a crash must
		// not vote for someone else before the leader's read lease ran
		// out: its memory of the leader is gone, so it sits out one
		// HeartbeatTimeout after the host started.
		time.Sleep(time.Until(h.opened.Add(h.cfg.HeartbeatTimeout)))
	}
	rc := h.cfg.raftConfig()
	rc.Logger = hclogger(g.log, "raft")
	if len(gc.Peers) == 1 {
		// A lone replica has nobody to wait for: elect itself at once.
		rc.HeartbeatTimeout, rc.ElectionTimeout, rc.LeaderLeaseTimeout = 50*time.Millisecond, 50*time.Millisecond, 25*time.Millisecond
	}
	exists, err := raft.HasExistingState(g.logs, stable, snaps)
	if err != nil {
		return nil, fmt.Errorf("raftlog: volume %s: %w", spec.Name, err)
	}
	if spec.Existing && !spec.Join && !holdsEntries(g.logs, snaps) {
		err = fmt.Errorf("raftlog: volume %s: %w", spec.Name, ErrStateLost)
		return nil, err
	}
	// Replication reads the entries the leader just appended: keep the
	// newest in memory rather than read them back from the WAL.
	logs, err := raft.NewLogCache(logCacheEntries, g.logs)
	if err != nil {
		return nil, fmt.Errorf("raftlog: volume %s: %w", spec.Name, err)
	}
	g.raft, err = raft.NewRaft(rc, g.fsm, logs, stable, snaps, g.trans)
	if err != nil {
		return nil, fmt.Errorf("raftlog: volume %s: %w", spec.Name, err)
	}
	g.started.Store(g.raft)
	if g.failure.Load() != nil { // failed while raft was starting
		go g.leave(g.raft)
	}
	// A replica that joins an existing group (a replica move) waits for
	// the leader to add it: it must not bootstrap a configuration of its
	// own.
	if !exists && !spec.Join {
		var conf raft.Configuration
		for _, p := range gc.Peers {
			addr := raft.ServerAddress(p.Raft)
			if h.mux == nil {
				addr = raft.ServerAddress(gc.Local)
			}
			conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: addr})
		}
		if err := g.raft.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			g.raft.Shutdown()
			return nil, fmt.Errorf("raftlog: volume %s: bootstrap: %w", spec.Name, err)
		}
	}
	g.batch = &batcher{apply: g.applyEntry, maxInflight: h.cfg.MaxInflightEntries, maxBytes: h.cfg.MaxEntryBytes}
	g.fwd = newForwarder(g)
	g.wg.Add(1)
	go g.watch()
	if !rejoin && spec.AskPeers && !spec.Join && len(gc.Peers) > 1 && g.readmitting() {
		// Readmitted, and stopped before its promotion: ask for it again.
		rejoin = true
	}
	if rejoin {
		g.wg.Add(1)
		go g.rejoin()
	}
	return g, nil
}

// holdsEntries reports whether a replica whose log is logs and whose
// checkpoints are snaps holds any entry: a replica that was ever part of
// its group holds at least the bootstrap configuration or a checkpoint.
// A term and vote alone do not count: without its log a replica would
// still vote for a candidate that lacks entries it acknowledged.
func holdsEntries(logs raft.LogStore, snaps raft.SnapshotStore) bool {
	if last, err := logs.LastIndex(); err != nil || last > 0 {
		return true // an error is not proof of loss
	}
	list, err := snaps.List()
	return err != nil || len(list) > 0
}

// openLogStore opens the raft log of a group: a segment WAL with one
// fdatasync per append batch (docs/raft-log-store.md).
// Its fresh segments are allocated only if room allows (the disk reserve).
// adjust, if not nil, changes the configuration (tests).
func openLogStore(dir string, room func(n int64) error, adjust func(*wal.Config)) (raft.LogStore, error) {
	cfg := wal.DefaultConfig()
	cfg.Room = room
	if adjust != nil {
		adjust(&cfg)
	}
	l, err := wal.Open(dir, cfg)
	if err != nil {
		return nil, err // not a nil *wal.Log in a non-nil interface
	}
	return l, nil
}

func readSnapshotInfo(snaps raft.SnapshotStore, id string) (snapshotInfo, []uint64, error) {
	_, rc, err := snaps.Open(id)
	if err != nil {
		return snapshotInfo{}, nil, err
	}
	defer rc.Close()
	return readSnapshot(rc)
}

// applyOutcome is how an entry of the batcher ended: the FSM's result
// (an *applyResult, or an error if this replica failed), or raft's error.
type applyOutcome struct {
	res any
	err error
}

// applyEntry commits one entry and returns once it is committed (as the
// FSM reports it, before it writes the file: see fsm.committed) or once
// raft returns, with the ids of the ops the FSM refused as fenced.
func (g *Group) applyEntry(data []byte) (fenced []uint64, err error) {
	start := time.Now()
	key := &data[0]
	ch := make(chan applyOutcome, 2)
	g.commitMu.Lock()
	g.commits[key] = ch
	g.commitMu.Unlock()
	f := g.raft.Apply(data, applyTimeout)
	// raft's answer comes after the FSM wrote the file; it is awaited
	// even when the FSM answered first. A failure to write the file has
	// taken this replica out of service (fsm.onFail; the answered writes
	// are safe in the logs of a majority).
	go func() {
		out := applyOutcome{err: f.Error()}
		if out.err == nil {
			out.res = f.Response()
		}
		ch <- out
	}()
	out := <-ch
	g.commitMu.Lock()
	delete(g.commits, key)
	g.commitMu.Unlock()
	if out.err != nil {
		return nil, out.err
	}
	switch r := out.res.(type) {
	case error:
		return nil, r
	case *applyResult:
		fenced = r.fenced
	}
	// A majority stored the entry after start: the lease holds from there.
	g.lease.renew(start)
	if obs := g.h.cfg.ObserveCommit; obs != nil {
		obs(g.spec.Name, time.Since(start))
	}
	return fenced, nil
}

// entryCommitted is the FSM's fsm.committed: it answers the applyEntry
// waiting for l, if this host's batcher sent it.
func (g *Group) entryCommitted(l *raft.Log, res *applyResult) {
	if len(l.Data) == 0 {
		return
	}
	g.commitMu.Lock()
	ch := g.commits[&l.Data[0]]
	g.commitMu.Unlock()
	if ch == nil {
		return
	}
	var out applyOutcome
	if res != nil { // a nil *applyResult would make out.res non-nil
		out.res = res
	}
	ch <- out
}

// failed takes this replica out of service, on a leader or a follower,
// once its volume file could not apply a committed entry or its write log
// failed (neither takes changes any more): it gives up leadership and
// stops taking part in the group, so that it can neither win an election
// it could not serve nor hold back the others. Later calls do nothing.
// Restarting the agent reopens the replica (docs/replication.md, "Replica
// failure").
func (g *Group) failed(err error) {
	if !g.failure.CompareAndSwap(nil, &err) {
		return
	}
	r := g.started.Load() // nil if the FSM failed while raft was starting
	if r != nil {
		_, id := r.LeaderWithID()
		to := string(id)
		g.forwardTo.Store(&to)
	}
	g.log.Error("replica failed; shutting its raft group down on this host", "err", err)
	g.lease.drop()
	g.ready.Store(false)
	if r != nil {
		go g.leave(r) // not on the FSM goroutine, which Shutdown waits for
	}
}

// leave shuts the failed replica's raft down, then its transport: the
// other hosts' RPCs to it then fail at once instead of waiting for their
// timeout (10 s), which held up their elections and shutdowns.
func (g *Group) leave(r *raft.Raft) {
	r.Shutdown().Error()
	if c, ok := g.trans.(io.Closer); ok {
		c.Close()
	}
}

// err returns the failure that took this replica out of service, or nil.
func (g *Group) err() error {
	if err := g.fsm.err(); err != nil {
		return err
	}
	if p := g.failure.Load(); p != nil {
		return *p
	}
	return nil
}

// watch follows leadership changes and keeps the lease fresh.
func (g *Group) watch() {
	defer g.wg.Done()
	obsCh := make(chan raft.Observation, 16)
	obs := raft.NewObserver(obsCh, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.LeaderObservation, raft.RaftState, raft.FailedHeartbeatObservation:
			return true
		}
		return false
	})
	g.raft.RegisterObserver(obs)
	defer g.raft.DeregisterObserver(obs)
	renew := time.NewTicker(g.lease.duration / 3)
	defer renew.Stop()
	snap := time.NewTicker(time.Second)
	defer snap.Stop()
	handBack := newHandBack(g.h.cfg.HeartbeatTimeout)
	idle := spareReleaser{logs: g.logs}
	failing, _ := g.logs.(interface {
		Failed() <-chan struct{}
		Err() error
	})
	var logFailed <-chan struct{}
	if failing != nil {
		logFailed = failing.Failed()
	}
	for {
		select {
		case <-g.stop:
			return
		case <-logFailed:
			logFailed = nil
			g.failed(fmt.Errorf("raftlog: write log: %w", failing.Err()))
		case o := <-obsCh:
			if f, ok := o.Data.(raft.FailedHeartbeatObservation); ok {
				handBack.heartbeatFailed(f.PeerID, time.Now())
				continue
			}
			g.checkLeadership()
		case now := <-renew.C:
			g.checkLeadership()
			if g.ready.Load() && g.lease.remaining() < g.lease.duration/2 {
				go g.verify()
			}
			handBack.ready(g.ready.Load(), now)
			if p := *g.preferred.Load(); p != "" && p != g.cfg.Local && handBack.due(p, now, g.answered(p, now)) {
				go g.transferTo(p)
			}
		case <-snap.C:
			if g.h.cfg.SnapshotBytes > 0 && g.fsm.sinceSnapshot.Load() > g.h.cfg.SnapshotBytes {
				if err := g.raft.Snapshot().Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
					g.log.Warn("checkpoint failed", "err", err)
				}
			}
			if n, err := idle.tick(g.raft.LastIndex(), time.Now()); err != nil {
				g.log.Warn("releasing spare log segments", "err", err)
			} else if n > 0 {
				g.log.Debug("idle: released spare log segments", "segments", n)
			}
		}
	}
}

// spareIdleAfter is how long a volume's log must go without a new entry
// before the segments it keeps for reuse beyond spareKeep are deleted.
const (
	spareIdleAfter = time.Minute
	spareKeep      = 4
)

// spareReleaser deletes the spare segments a log keeps for reuse once the
// log has been idle for spareIdleAfter: a volume written fast recycles
// every segment its checkpoints free (wal.Config.MaxRecycled, up to 2 GiB),
// which an idle volume need not hold on to.
type spareReleaser struct {
	logs     raft.LogStore
	last     uint64    // the log's last index when last seen
	since    time.Time // when it was last seen to change
	released bool      // released since it last changed
}

// tick is called periodically with the log's last index; it reports how
// many spare segments it deleted.
func (r *spareReleaser) tick(last uint64, now time.Time) (int, error) {
	if last != r.last || r.since.IsZero() {
		r.last, r.since, r.released = last, now, false
		return 0, nil
	}
	s, ok := r.logs.(interface{ ReleaseSpares(int) (int, error) })
	if !ok || r.released || now.Sub(r.since) < spareIdleAfter {
		return 0, nil
	}
	r.released = true
	return s.ReleaseSpares(spareKeep)
}

// checkLeadership notices gaining or losing leadership. A new leader serves
// reads only after a barrier: every entry committed by earlier leaders is
// then applied to its file.
func (g *Group) checkLeadership() {
	if g.fwd != nil {
		g.fwd.retarget()
	}
	isLeader := g.raft.State() == raft.Leader
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case isLeader && g.leading == 0:
		g.gen++
		g.leading = g.gen
		gen := g.gen
		g.log.Info("leading volume", "term", g.raft.Stats()["term"])
		go g.becomeReady(gen)
	case !isLeader && g.leading != 0:
		g.leading = 0
		g.ready.Store(false)
		g.lease.drop()
		g.log.Info("no longer leading volume")
	default:
		return
	}
	g.notifyLocked()
}

// becomeReady runs the barrier of leadership generation gen and then lets
// the leader serve. A barrier that fails while this host still leads in
// gen is tried again: raft refuses it, for instance, while a leadership
// transfer that already timed out still waits for its TimeoutNow call,
// and a leader left unready would refuse every write until it lost the
// leadership, which nothing else would make it do.
func (g *Group) becomeReady(gen uint64) {
	for delay := 10 * time.Millisecond; ; delay = min(2*delay, time.Second) {
		start := time.Now()
		err := g.barrier()
		if g.barrierDone(gen, start, err) || errors.Is(err, raft.ErrRaftShutdown) {
			return
		}
		g.log.Info("leader's barrier failed; trying again", "err", err, "in", delay)
		select {
		case <-g.stop:
			return
		case <-time.After(delay):
		}
	}
}

// barrierDone settles a barrier of generation gen started at start that
// returned err: on success the leader serves from now on. It reports false
// only when the host still leads in gen and the barrier failed.
func (g *Group) barrierDone(gen uint64, start time.Time, err error) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.leading != gen || g.err() != nil {
		return true
	}
	if err != nil {
		return false
	}
	g.lease.renew(start)
	g.ready.Store(true)
	g.notifyLocked()
	return true
}

// barrier applies a raft barrier (failed first by Config.barrierFault in
// this package's tests).
func (g *Group) barrier() error {
	if f := g.h.cfg.barrierFault; f != nil {
		if err := f(g.spec.Name); err != nil {
			return err
		}
	}
	return g.raft.Barrier(applyTimeout).Error()
}

func (g *Group) notifyLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// changes returns a channel closed at the next leadership change.
func (g *Group) changes() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.changed
}

// verify renews the lease with a round of heartbeats.
func (g *Group) verify() {
	start := time.Now()
	if err := g.raft.VerifyLeader().Error(); err == nil {
		g.lease.renew(start)
	}
}

// answered returns when peer id last answered this host's AppendEntries
// (zero if it is not a peer); now with a transport that does not say (the
// in-memory one of a single host).
func (g *Group) answered(id string, now time.Time) time.Time {
	var addr raft.ServerAddress
	for _, p := range g.peers() {
		if p.ID == id {
			addr = raft.ServerAddress(p.Raft)
		}
	}
	at, ok := answeredBy(g.trans, addr)
	switch {
	case !ok:
		return now
	case addr == "":
		return time.Time{}
	}
	return at
}

// answeredBy returns when the server at addr last answered an
// AppendEntries sent over t (transport.Transport.Answered), and false for
// a transport that does not say.
func answeredBy(t raft.Transport, addr raft.ServerAddress) (time.Time, bool) {
	a, ok := t.(interface {
		Answered(raft.ServerAddress) time.Time
	})
	if !ok {
		return time.Time{}, false
	}
	return a.Answered(addr), true
}

// transferTo hands leadership to the preferred host (raft first brings it
// up to date, within ElectionTimeout).
func (g *Group) transferTo(id string) {
	var addr raft.ServerAddress
	for _, p := range g.peers() {
		if p.ID == id {
			addr = raft.ServerAddress(p.Raft)
		}
	}
	if addr == "" {
		return
	}
	g.log.Info("handing leadership to the preferred host", "to", id)
	g.lease.drop()
	g.ready.Store(false)
	if err := g.raft.LeadershipTransferToServer(raft.ServerID(id), addr).Error(); err != nil {
		g.log.Info("leadership transfer did not happen", "to", id, "err", err)
		g.mu.Lock()
		g.leading = 0 // re-run the barrier path if we are still leader
		g.mu.Unlock()
		g.checkLeadership()
	}
}

// servesLocally reports whether this replica may answer reads itself now.
func (g *Group) servesLocally() bool {
	return g.ready.Load() && g.lease.valid()
}

// isLeader reports whether this host leads the group (ready or not). A
// failed replica does not, whatever its raft said last.
func (g *Group) isLeader() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.leading != 0 && g.failure.Load() == nil
}

// leader returns the current leader's peer entry, if known. For a replica
// that left the group it is the host to forward to (failedTarget).
func (g *Group) leader() (Peer, bool) {
	if g.failure.Load() != nil {
		return g.failedTarget()
	}
	_, id := g.raft.LeaderWithID()
	for _, p := range g.peers() {
		if raft.ServerID(p.ID) == id {
			return p, true
		}
	}
	return Peer{}, false
}

// failedTarget returns the host a replica that left the group forwards
// its clients' I/O to. It no longer follows elections, so it does as a
// Proxy does: it keeps to the leader it knew at the failure while that
// one answers, and moves on to the next replica each time the one tried
// does not (forwardMissed); only the leader's agent accepts forwarded
// requests (ForwardPrefix).
func (g *Group) failedTarget() (Peer, bool) {
	others := g.otherPeers()
	if len(others) == 0 {
		return Peer{}, false
	}
	cur := g.forwardTo.Load()
	if cur != nil {
		if i := slices.IndexFunc(others, func(p Peer) bool { return p.ID == *cur }); i >= 0 {
			return others[i], true
		}
	}
	// Itself (it led), nobody, or a host no longer a member.
	to := others[0].ID
	g.forwardTo.CompareAndSwap(cur, &to)
	return others[0], true
}

// forwardMissed moves a failed replica's forwarding on from host id, which
// did not answer as leader, to the next replica. It does nothing on a
// replica in service, or if another request moved it on already.
func (g *Group) forwardMissed(id string) {
	cur := g.forwardTo.Load()
	if g.failure.Load() == nil || cur == nil || *cur != id {
		return
	}
	others := g.otherPeers()
	if len(others) == 0 {
		return
	}
	i := slices.IndexFunc(others, func(p Peer) bool { return p.ID == id })
	to := others[(i+1)%len(others)].ID // others[0] if id is not a member
	g.forwardTo.CompareAndSwap(cur, &to)
}

// otherPeers returns the member hosts other than this one.
func (g *Group) otherPeers() []Peer {
	return slices.DeleteFunc(slices.Clone(g.peers()), func(p Peer) bool { return p.ID == g.cfg.Local })
}

// restore is the FSM's Restore: pull the volume from the leader (or any
// replica that has applied far enough) into the local file.
//
// Closing the group stops the pull (the restore fails; raft has already
// stored the snapshot): the replica finishes it when it opens again, from
// the offset recorded, as after a crash.
//
// A replica that completed a pull as of the snapshot's index (typically
// finished by finishRestore after a crash) does not pull again: its file
// holds every block as of that index or later, which is all the log replay
// after the index needs (docs/replication.md).
func (g *Group) restore(ctx context.Context, s snapshotInfo) error {
	key := restoreKeyPrefix + g.spec.Name
	var st restoreState
	switch err := g.h.meta.GetJSON(key, &st); {
	case err == nil && st.Complete && st.Index >= s.Index:
		// The file holds a complete copy as of st.Index or later (and
		// only moved forward since): replaying the log after s.Index
		// over it is exact.
		g.log.Info("volume already copied for this checkpoint; no new copy", "checkpoint", s.Index, "copied_at", st.Index)
		return nil
	case err == nil && !st.Complete && st.Index == s.Index:
		g.log.Info("resuming an interrupted volume copy", "index", st.Index, "done", st.Done)
	default:
		st = restoreState{Index: s.Index}
	}
	if err := g.h.meta.PutJSON(key, st); err != nil {
		return err
	}
	return g.pullAll(ctx, &st)
}

// pullAll runs pull, stopped when the group closes (it resumes at the
// next open, like after a crash), and records its completion. A pull that
// would write into the disk reserve stops and fails the replica, as a
// write of the log would.
func (g *Group) pullAll(ctx context.Context, st *restoreState) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		t := time.NewTicker(diskRoomEvery)
		defer t.Stop()
		for {
			if err := g.h.room.check(0); err != nil {
				cancel(err)
				return
			}
			select {
			case <-g.stop:
				cancel(errors.New("raftlog: group closing"))
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	if err := g.pull(ctx, st); err != nil {
		if cause := context.Cause(ctx); errors.Is(cause, volume.ErrNoSpace) {
			err = fmt.Errorf("raftlog: volume copy: %w", cause)
			g.failed(err)
		}
		return err
	}
	st.Complete = true
	return g.h.meta.PutJSON(restoreKeyPrefix+g.spec.Name, st)
}

// finishRestore completes a pull interrupted by a crash.
func (g *Group) finishRestore() error {
	key := restoreKeyPrefix + g.spec.Name
	var st restoreState
	if err := g.h.meta.GetJSON(key, &st); err != nil || st.Complete {
		return nil // nothing to finish (or unreadable: meta reports it)
	}
	g.log.Warn("finishing an interrupted volume copy before rejoining", "index", st.Index, "done", st.Done)
	ctx, cancel := context.WithTimeout(context.Background(), 24*time.Hour)
	defer cancel()
	if err := g.pullAll(ctx, &st); err != nil {
		return fmt.Errorf("raftlog: volume %s: finishing interrupted copy: %w", g.spec.Name, err)
	}
	return nil
}

// pull copies the volume from a replica that has applied st.Index, resuming
// at st.Done, and records progress in meta.
func (g *Group) pull(ctx context.Context, st *restoreState) error {
	key := restoreKeyPrefix + g.spec.Name
	for attempt := 0; ; attempt++ {
		var sources []Peer
		if r := g.started.Load(); r != nil {
			_, id := r.LeaderWithID()
			for _, p := range g.peers() {
				if raft.ServerID(p.ID) == id && p.ID != g.cfg.Local {
					sources = append(sources, p)
				}
			}
		}
		for _, p := range g.peers() {
			if p.ID != g.cfg.Local && !slices.ContainsFunc(sources, func(q Peer) bool { return q.ID == p.ID }) {
				sources = append(sources, p)
			}
		}
		for _, src := range sources {
			start := time.Now()
			g.copying.begin(st.Done, g.file.Size())
			ps, err := pullVolume(ctx, g.h.dialer(), src.Raft, g.spec.Name, st.Index, st.Done, g.file, &g.copying, func(done int64) {
				st.Done = done
				if err := g.h.meta.PutJSON(key, st); err != nil {
					g.log.Warn("recording copy progress", "err", err)
				}
			})
			g.copying.end(err == nil)
			if err == nil {
				g.log.Info("volume copied from another replica", "from", src.ID, "index", st.Index, "bytes", ps.Bytes, "took", time.Since(start).Round(time.Millisecond),
					"setup", ps.Setup.Round(time.Millisecond), "receiving", ps.Receive.Round(time.Millisecond), "waiting_for_writes", ps.WriteWait.Round(time.Millisecond), "finishing", ps.Finish.Round(time.Millisecond))
				return nil
			}
			g.log.Warn("volume copy failed; trying another replica", "from", src.ID, "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-g.stop:
			return errors.New("raftlog: group closing")
		case <-time.After(min(time.Duration(attempt+1)*time.Second, 10*time.Second)):
		}
	}
}

// close stops the group on this host; the volume file is flushed, unless
// discard says it is about to be deleted: flushing a replica that is
// being removed wrote all its dirty data back for nothing, and held every
// log sync on the device behind it (a 256 MiB replica removed at the end
// of a move held its host's syncs for 120-140 ms).
func (g *Group) close(discard bool) error {
	close(g.stop)
	g.streams.end()
	var err error
	if g.raft != nil {
		err = g.raft.Shutdown().Error()
	}
	g.wg.Wait()
	if g.fwd != nil {
		g.fwd.close()
	}
	if cerr := g.closeStores(discard); err == nil {
		err = cerr
	}
	return err
}

func (g *Group) closeStores(discard bool) error {
	var err error
	if c, ok := g.trans.(io.Closer); ok {
		c.Close()
	}
	if g.layer != nil {
		g.layer.Close()
	}
	if c, ok := g.logs.(io.Closer); ok {
		if cerr := c.Close(); err == nil {
			err = cerr
		}
	}
	if g.stable != nil {
		if cerr := g.stable.Close(); err == nil {
			err = cerr
		}
	}
	if g.file != nil {
		closeFile := g.file.Close
		if discard {
			closeFile = g.file.Discard
		}
		if cerr := closeFile(); err == nil {
			err = cerr
		}
	}
	return err
}
