// Package control is the cluster's control plane: one hashicorp/raft group,
// "_control", whose log orders every change to the catalog (hosts,
// volumes). Its voters are a fixed set of 1, 3 or 5 agents named in the
// configuration; every other agent is a non-voter the leader adds when
// membership reports it, so that every agent holds a replica of the catalog
// and can act on it (open the replicas placed on it) without asking.
//
// The group shares the host's replication port (raftlog's mux) and
// metadata database; its log is a raftlog/wal log and its snapshots are the
// whole catalog as JSON (small).
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/raftlog"
	"github.com/tandem-project/tandem/raftlog/stablefile"
	"github.com/tandem-project/tandem/raftlog/transport"
	"github.com/tandem-project/tandem/raftlog/wal"
	"github.com/tandem-project/tandem/volume"
)

// GroupName is the control group's name on the mux port (volume names
// cannot start with '_').
const GroupName = "_control"

// Config configures the control-plane group of one agent.
type Config struct {
	// Name is this agent's name (its raft server ID).
	Name string
	// Dir holds the group's log and snapshots.
	Dir string
	// Host is the agent's replication layer (mux port, metadata).
	Host *raftlog.Host
	// Voters names the voting members (1, 3 or 5 agents). The group is
	// bootstrapped, once, by the voters when every one of them can be
	// resolved.
	Voters []string
	// Resolve returns the replication address of an agent, if known
	// (membership's view).
	Resolve func(name string) (addr string, ok bool)
	// HeartbeatTimeout and ElectionTimeout tune raft (0: 650 ms).
	HeartbeatTimeout time.Duration
	// Retry is how long after its write log failed this member opens it
	// again and rejoins the group, doubling while it fails again, up to
	// 30 minutes (0: it stays out until the agent restarts). One whose
	// log failed for lack of disk space is also opened again as soon as
	// Room reports room, at most every 10 seconds.
	Retry time.Duration
	// Room, if set, returns nil when the disk under Dir has room for the
	// log again (raftlog.Host.Room with a margin, say).
	Room func() error
	// Logger receives the group's logs.
	Logger *slog.Logger

	// logConfig, if set (by this package's tests), adjusts the write
	// log's configuration.
	logConfig func(*wal.Config)
	// roomEvery, if set (by this package's tests), replaces roomRetryGap.
	roomEvery time.Duration
}

// ValidateVoters checks a voter list: 1, 3 or 5 distinct names.
func ValidateVoters(voters []string) error {
	switch len(voters) {
	case 1, 3, 5:
	default:
		return fmt.Errorf("control: %d control voters %v: want 1, 3 or 5 (an odd number keeps a majority after a failure)", len(voters), voters)
	}
	for i, v := range voters {
		if v == "" {
			return errors.New("control: empty control voter name")
		}
		if slices.Contains(voters[:i], v) {
			return fmt.Errorf("control: control voter %q listed twice", v)
		}
	}
	return nil
}

// Control is this agent's member of the control-plane group.
type Control struct {
	cfg   Config
	log   *slog.Logger
	fsm   *fsm
	snaps raft.SnapshotStore

	// mu guards in: the stores of a failed instance are closed, and the
	// instance replaced, with mu held; whoever reads them holds it shared.
	mu sync.RWMutex
	in *instance

	// failed holds why this member left the group (its write log
	// failed), nil while it is a member.
	failed atomic.Pointer[error]

	stop chan struct{}
	wg   sync.WaitGroup
}

// instance is one run of this agent's member: its raft and the stores it
// writes. One whose write log failed is stopped, and replaced by a new one
// once the log opens again (watchLog); the catalog (fsm) outlives them.
type instance struct {
	raft   *raft.Raft
	logs   *wal.Log
	stable *stablefile.Store
	trans  interface {
		raft.Transport
		Close() error
	}
}

// cur returns the current instance. Its raft may be shut down (after a
// failure) but is never nil.
func (c *Control) cur() *instance {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.in
}

// maxRetry bounds the wait between two reopenings of a log that keeps
// failing; roomRetryGap is the least time between two early reopenings of
// one that failed for lack of disk space.
const (
	maxRetry     = 30 * time.Minute
	roomRetryGap = 10 * time.Second
)

// ErrNotLeader is returned by Propose on an agent that does not lead the
// control group.
var ErrNotLeader = errors.New("control: this agent does not lead the control plane")

// Open starts this agent's member of the control group. A voter whose
// group was never bootstrapped bootstraps it in the background once
// Resolve knows every voter's address.
func Open(cfg Config) (_ *Control, err error) {
	if cfg.Name == "" || cfg.Dir == "" || cfg.Host == nil || cfg.Resolve == nil {
		return nil, errors.New("control: Name, Dir, Host and Resolve are required")
	}
	if err := ValidateVoters(cfg.Voters); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("group", GroupName)
	if cfg.HeartbeatTimeout <= 0 {
		cfg.HeartbeatTimeout = 650 * time.Millisecond
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, raftlog.HCLogger(log, "control"))
	if err != nil {
		return nil, fmt.Errorf("control: snapshots: %w", err)
	}
	c := &Control{cfg: cfg, log: log, fsm: newFSM(), snaps: snaps, stop: make(chan struct{})}
	voter := slices.Contains(cfg.Voters, cfg.Name)
	cfg.Host.ServeReadmit(GroupName, func() *raft.Raft {
		if in := c.cur(); in != nil {
			return in.raft
		}
		return nil
	}, func() raft.Transport { return c.cur().trans }, cfg.Resolve)
	// A voter without state is held (its raft unreachable, so that it
	// never votes) until it knows whether the group exists (bootstrap).
	in, exists, err := c.start(voter)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.in = in
	c.mu.Unlock()
	c.wg.Add(1)
	if !exists && voter {
		go c.bootstrap()
		return c, nil
	}
	go c.watchLog()
	if voter {
		c.wg.Add(1)
		go c.keepVoter()
	}
	return c, nil
}

// start opens the member's stores and starts its raft; exists reports
// whether they held a state already (else the group may need a bootstrap).
// With hold, a member without state gets a transport that nobody reaches:
// it neither votes nor receives entries until it is started again.
func (c *Control) start(hold bool) (_ *instance, exists bool, err error) {
	cfg := c.cfg
	in := &instance{}
	defer func() {
		if err != nil {
			in.closeStores()
		}
	}()
	wc := wal.DefaultConfig()
	if cfg.logConfig != nil {
		cfg.logConfig(&wc)
	}
	if in.logs, err = wal.Open(filepath.Join(cfg.Dir, "log"), wc); err != nil {
		return nil, false, fmt.Errorf("control: log: %w", err)
	}
	if in.stable, err = cfg.Host.OpenStable(GroupName, cfg.Dir); err != nil {
		return nil, false, fmt.Errorf("control: %w", err)
	}
	if exists, err = raft.HasExistingState(in.logs, in.stable, c.snaps); err != nil {
		return nil, false, fmt.Errorf("control: %w", err)
	}
	if hold && !exists {
		_, in.trans = raft.NewInmemTransport("")
	} else {
		layer, err := cfg.Host.RaftLayer(GroupName)
		if err != nil {
			return nil, false, fmt.Errorf("control: %w", err)
		}
		if layer == nil {
			return nil, false, errors.New("control: the host has no replication address")
		}
		in.trans = transport.New(transport.Config{Stream: layer, Logger: c.log})
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.Name)
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.HeartbeatTimeout
	rc.LeaderLeaseTimeout = cfg.HeartbeatTimeout / 2
	rc.SnapshotThreshold = 1024
	rc.TrailingLogs = 1024
	rc.Logger = raftlog.HCLogger(c.log, "control")
	if in.raft, err = raft.NewRaft(rc, c.fsm, in.logs, in.stable, c.snaps, in.trans); err != nil {
		return nil, false, fmt.Errorf("control: %w", err)
	}
	return in, exists, nil
}

// watchLog takes this member out of the group when its write log fails (a
// disk error, or a full disk), and brings it back when the log opens again.
//
// A failed log refuses every append until it is reopened, so the member
// could no longer follow; left running, it would still campaign whenever
// it stopped hearing the leader, and could win an election and step down
// at its first append. Its raft and transport are stopped instead: it
// neither votes nor stands, the other voters' requests to it fail at once,
// the group goes on with them, and the failure shows in Failed, Status,
// the agent's /readyz and its metrics. The catalog stays the last one
// applied.
//
// After Config.Retry (doubling while it fails again; early once Room
// reports room if it failed for lack of space), the log is opened again
// (which cuts a torn tail) and a new raft started on it, over the same
// catalog: the member rejoins and catches up from the leader. An agent
// restart does the same.
func (c *Control) watchLog() {
	defer c.wg.Done()
	wait := c.cfg.Retry
	for {
		in := c.cur()
		started := time.Now()
		select {
		case <-c.stop:
			return
		case <-in.logs.Failed():
		}
		err := fmt.Errorf("control: write log: %w", in.logs.Err())
		c.failed.Store(&err)
		if c.cfg.Retry <= 0 {
			c.log.Error("the control plane's write log failed: this agent leaves the control plane until it restarts", "err", err)
		} else {
			if time.Since(started) >= wait {
				wait = c.cfg.Retry // it served for as long as it waited: a new failure
			}
			c.log.Error("the control plane's write log failed: this agent leaves the control plane and opens its log again later", "in", wait, "err", err)
		}
		if serr := in.raft.Shutdown().Error(); serr != nil {
			c.log.Warn("stopping the control plane member", "err", serr)
		}
		in.trans.Close()
		if c.cfg.Retry <= 0 {
			return
		}
		c.mu.Lock()
		in.closeStores()
		c.mu.Unlock()
		noRoom := errors.Is(err, volume.ErrNoSpace) || errors.Is(err, syscall.ENOSPC)
		for {
			if !c.awaitRetry(wait, noRoom) {
				return
			}
			wait = min(2*wait, maxRetry)
			next, _, err := c.start(false)
			if err != nil {
				c.log.Warn("opening the control plane's write log again failed", "next_in", wait, "err", err)
				continue
			}
			c.mu.Lock()
			c.in = next
			c.mu.Unlock()
			c.failed.Store(nil)
			c.log.Info("the control plane's write log is open again: this agent rejoins the control plane")
			break
		}
	}
}

// awaitRetry waits for the next attempt at opening a failed log: wait, or
// less once Room reports room if the log failed for lack of it. It
// returns false if the member stops meanwhile.
func (c *Control) awaitRetry(wait time.Duration, noRoom bool) bool {
	t := time.NewTimer(wait)
	defer t.Stop()
	var room <-chan time.Time
	if noRoom && c.cfg.Room != nil {
		every := roomRetryGap
		if c.cfg.roomEvery > 0 {
			every = c.cfg.roomEvery
		}
		tick := time.NewTicker(every)
		defer tick.Stop()
		room = tick.C
	}
	for {
		select {
		case <-c.stop:
			return false
		case <-t.C:
			return true
		case <-room:
			if c.cfg.Room() == nil {
				return true
			}
		}
	}
}

// Failed returns why this agent left the control group (its write log
// failed; see watchLog), or nil while it is a member.
func (c *Control) Failed() error {
	if p := c.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// bootstrap, for a voter without state, waits until every voter's
// address is known, then asks the other voters whether the group has a
// history (raftlog.Host.GroupHasHistory). If not, it bootstraps the group
// with the same configuration as every other voter (raft accepts
// identical bootstraps; a voter that already joined refuses). If it has,
// this voter lost its state (its disk replaced, its files deleted): it
// must not come back as the same voter, which could elect a leader that
// lacks committed commands, so it has the leader remove it first, then
// joins as a non-voter and is promoted once caught up (keepVoter). Until
// then its raft is held: it neither votes nor receives entries.
func (c *Control) bootstrap() {
	defer c.wg.Done()
	ctx, cancel := c.stopContext()
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	waiting := time.Now()
	var conf raft.Configuration
	var peers []raftlog.Peer
	for {
		conf, peers = raft.Configuration{}, nil
		var missing []string
		for _, v := range c.cfg.Voters {
			addr, ok := c.cfg.Resolve(v)
			if !ok {
				missing = append(missing, v)
				continue
			}
			conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(v), Address: raft.ServerAddress(addr)})
			peers = append(peers, raftlog.Peer{ID: v, Raft: addr})
		}
		if len(missing) == 0 {
			break
		}
		if time.Since(waiting) > 10*time.Second {
			c.log.Info("waiting for the control voters to join before bootstrapping", "missing", missing)
			waiting = time.Now()
		}
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
	}
	history, err := c.cfg.Host.GroupHasHistory(ctx, GroupName, peers)
	if err != nil {
		return // stopping
	}
	if history {
		c.log.Warn("this control voter has no state but the control plane has a history (its data was lost, or it started after the others elected a leader): it leaves the group and joins again as a new member")
		if err := c.cfg.Host.Evict(ctx, GroupName, peers); err != nil {
			return
		}
	}
	if !c.startHeld() {
		return
	}
	c.wg.Add(1)
	go c.watchLog()
	if history {
		c.wg.Add(1)
		go c.keepVoter()
		return
	}
	if err := c.cur().raft.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		c.log.Error("bootstrapping the control plane failed", "err", err)
	} else {
		c.log.Info("control plane bootstrapped", "voters", c.cfg.Voters)
	}
}

// isVoter reports whether this member is a voter in the latest
// configuration it knows.
func (c *Control) isVoter() (bool, error) {
	f := c.cur().raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return false, err
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == c.cfg.Name {
			return s.Suffrage == raft.Voter, nil
		}
	}
	return false, nil
}

// stopContext returns a context that ends when the member stops (or
// cancel is called).
func (c *Control) stopContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-c.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// startHeld replaces the held instance of a voter without state by one on
// the group's port; false if the member stops first.
func (c *Control) startHeld() bool {
	old := c.cur()
	if err := old.raft.Shutdown().Error(); err != nil {
		c.log.Warn("stopping the held control plane member", "err", err)
	}
	c.mu.Lock()
	old.closeStores()
	c.mu.Unlock()
	for {
		next, _, err := c.start(false)
		if err == nil {
			c.mu.Lock()
			c.in = next
			c.mu.Unlock()
			return true
		}
		c.log.Warn("starting the control plane member", "err", err)
		select {
		case <-c.stop:
			return false
		case <-time.After(time.Second):
		}
	}
}

// keepVoter, on a member named in Voters, has the leader readmit it while
// the group's configuration does not list it as a voter: after it lost its
// state (bootstrap), or when it stopped between its removal and its
// promotion. It returns once it is a voter, or the member stops.
func (c *Control) keepVoter() {
	defer c.wg.Done()
	ctx, cancel := c.stopContext()
	defer cancel()
	for {
		voter, err := c.isVoter()
		if voter {
			return
		}
		if err == nil {
			var peers []raftlog.Peer
			for _, v := range c.cfg.Voters {
				if addr, ok := c.cfg.Resolve(v); ok && v != c.cfg.Name {
					peers = append(peers, raftlog.Peer{ID: v, Raft: addr})
				}
			}
			rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
			err := c.cfg.Host.Readmit(rctx, GroupName, peers, func() (uint64, bool) { return c.cur().raft.AppliedIndex(), false })
			rcancel()
			if err == nil {
				c.log.Info("control plane member readmitted: a voter again", "applied", c.cur().raft.AppliedIndex())
				return
			}
			c.log.Warn("readmitting this control voter", "err", err)
		}
		select {
		case <-c.stop:
			return
		case <-time.After(time.Second):
		}
	}
}

// State returns a copy of this agent's catalog (as of the last entry it
// applied; followers may lag the leader by a few milliseconds).
func (c *Control) State() *catalog.State { return c.fsm.state() }

// Changes returns a channel closed at the next change of the catalog.
func (c *Control) Changes() <-chan struct{} { return c.fsm.changes() }

// Leader returns the name of the control leader, if one is known.
func (c *Control) Leader() (string, bool) {
	if c.Failed() != nil {
		return "", false // its raft stopped: what it knew is stale
	}
	_, id := c.cur().raft.LeaderWithID()
	return string(id), id != ""
}

// CaughtUp reports whether this agent's catalog is current as far as it
// can tell: it knows a leader, has heard from it since it started (or
// leads), and its catalog holds every command it knows committed. A
// restarted agent's catalog is behind until then.
//
// raft's AppliedIndex is no proof: raft advances it when it hands entries
// to the FSM's goroutine, before they are applied, so a restarted agent
// that has just learnt the commit index would pass for current with the
// catalog of its last snapshot. The catalog's own index is compared with
// the last command at or below the commit index instead; and a leader
// counts only once an entry of its own term is committed.
//
// A follower knows only the commit index the leader last sent it: its
// catalog may miss the latest commands for raft's CommitTimeout (50 ms),
// or until a new leader commits if the old one died before sending it
// the new commit index. A restarted member is never caught up on the
// catalog of its last snapshot.
func (c *Control) CaughtUp() bool {
	// Shared: the stores of a failed instance are closed with mu held,
	// after Failed reports the failure, which Leader checks.
	c.mu.RLock()
	defer c.mu.RUnlock()
	r := c.in.raft
	if _, id := r.LeaderWithID(); id == "" || c.Failed() != nil {
		return false
	}
	if r.State() != raft.Leader && r.LastContact().IsZero() {
		return false
	}
	// A restarted member's commit index is 0 until it learns the
	// leader's: a follower from its first AppendEntries with entries,
	// which may come after a heartbeat has already told it the leader
	// (heartbeats carry no commit index); a leader once its no-op is
	// committed. Until then it holds the catalog of its last snapshot.
	commit := r.CommitIndex()
	if commit == 0 || r.AppliedIndex() < commit {
		return false
	}
	last, term, err := lastCommand(c.in.logs, commit)
	if err != nil {
		c.log.Warn("reading the control log", "err", err)
		return false
	}
	// A new leader learns how far the log is committed only once an entry
	// of its own term is (its no-op): until then its commit index is
	// whatever it knew before.
	if r.State() == raft.Leader && term != r.CurrentTerm() {
		return false
	}
	return c.fsm.index() >= last
}

// lastCommand returns the index of the last command entry at or below
// index in logs, or 0 if there is none there (entries before the log's
// first index are in the snapshot the FSM was restored from), and the term
// of the entry at index (0 if the log does not hold it).
func lastCommand(logs raft.LogStore, index uint64) (last, term uint64, err error) {
	first, err := logs.FirstIndex()
	if err != nil {
		return 0, 0, fmt.Errorf("control: the log's first index: %w", err)
	}
	for i := index; i >= first && i > 0; i-- {
		var l raft.Log
		if err := logs.GetLog(i, &l); err != nil {
			if errors.Is(err, raft.ErrLogNotFound) {
				return 0, term, nil // compacted since FirstIndex: in the snapshot
			}
			return 0, 0, fmt.Errorf("control: reading entry %d: %w", i, err)
		}
		if i == index {
			term = l.Term
		}
		if l.Type == raft.LogCommand {
			return i, term, nil
		}
	}
	return 0, term, nil
}

// IsLeader reports whether this agent leads the control group.
func (c *Control) IsLeader() bool { return c.cur().raft.State() == raft.Leader }

// LeaderCh reports changes of this agent's leadership (see raft.LeaderCh).
// A member that rejoins after its log failed has a new channel: call
// LeaderCh again after each change.
func (c *Control) LeaderCh() <-chan bool { return c.cur().raft.LeaderCh() }

// Status is the control group as this agent sees it.
type Status struct {
	Leader  string
	Term    uint64
	Applied uint64
	Voters  []string
	// Members maps every member to its role: voter or nonvoter.
	Members map[string]string
	// Error says why this agent left the group (Failed), if it did.
	Error string
}

// Status returns the control group's status.
func (c *Control) Status() Status {
	r := c.cur().raft
	s := Status{Term: r.CurrentTerm(), Applied: r.AppliedIndex(), Members: map[string]string{}}
	s.Leader, _ = c.Leader()
	if err := c.Failed(); err != nil {
		s.Error = err.Error()
	}
	if f := r.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			role := "nonvoter"
			if srv.Suffrage == raft.Voter {
				role = "voter"
				s.Voters = append(s.Voters, string(srv.ID))
			}
			s.Members[string(srv.ID)] = role
		}
	}
	slices.Sort(s.Voters)
	return s
}

// Propose commits a catalog command and returns the catalog's verdict (a
// refused command changes nothing). Only the leader may propose.
func (c *Control) Propose(ctx context.Context, cmd catalog.Command) error {
	_, err := c.Commit(ctx, cmd)
	return err
}

// Commit is Propose that also returns the command's log index (the
// generation a writer change takes, for instance).
func (c *Control) Commit(ctx context.Context, cmd catalog.Command) (uint64, error) {
	if !c.IsLeader() {
		return 0, ErrNotLeader
	}
	if cmd.At.IsZero() {
		cmd.At = time.Now().UTC()
	}
	timeout := 10 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	f := c.cur().raft.Apply(cmd.Encode(), timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return 0, fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		return 0, fmt.Errorf("control: committing %s: %w", cmd.Kind, err)
	}
	if err, ok := f.Response().(error); ok && err != nil {
		return 0, err
	}
	return f.Index(), nil
}

// Barrier waits until this (leading) agent has applied every committed
// entry, so its catalog is current.
func (c *Control) Barrier(ctx context.Context) error {
	timeout := 5 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	return c.cur().raft.Barrier(timeout).Error()
}

// EnsureMember adds an agent to the group as a non-voter if it is not a
// member yet (leader only). Voters named in the configuration are added as
// voters (after a voter's data was lost, for instance).
func (c *Control) EnsureMember(name, addr string) error {
	if !c.IsLeader() {
		return ErrNotLeader
	}
	r := c.cur().raft
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == name {
			if string(srv.Address) == addr {
				return nil
			}
			break // re-added below with its new address
		}
	}
	// A named voter that is not a member lost its state (bootstrap): it
	// comes back as a non-voter, and is promoted once caught up at its
	// own request (keepVoter), never as an empty voter.
	if err := r.AddNonvoter(raft.ServerID(name), raft.ServerAddress(addr), 0, 10*time.Second).Error(); err != nil {
		return fmt.Errorf("control: adding %s (%s): %w", name, addr, err)
	}
	c.log.Info("control plane member added", "name", name, "addr", addr, "voter", false)
	return nil
}

// Close stops this agent's member of the group.
func (c *Control) Close() error {
	close(c.stop)
	c.wg.Wait() // watchLog no longer replaces the instance
	in := c.cur()
	err := in.raft.Shutdown().Error()
	in.trans.Close()
	if cerr := in.closeStores(); err == nil {
		err = cerr
	}
	return err
}

// closeStores closes the instance's log and stable store (and its
// transport, if raft never started on it); later calls do nothing.
func (in *instance) closeStores() error {
	if in.raft == nil && in.trans != nil {
		in.trans.Close()
	}
	var err error
	if in.stable != nil {
		err = in.stable.Close()
		in.stable = nil
	}
	if in.logs != nil {
		if lerr := in.logs.Close(); lerr != nil {
			err = lerr
		}
		in.logs = nil
	}
	return err
}

// fsm applies catalog commands.
type fsm struct {
	mu      sync.RWMutex
	st      *catalog.State
	changed chan struct{}
}

func newFSM() *fsm { return &fsm{st: catalog.New(), changed: make(chan struct{})} }

func (f *fsm) state() *catalog.State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.Clone()
}

// index returns the log index of the last command the catalog applied.
func (f *fsm) index() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.Index
}

func (f *fsm) changes() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.changed
}

// notifyLocked wakes the watchers of changes; f.mu is held for writing.
func (f *fsm) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// Apply implements raft.FSM: it returns the command's error (nil if it
// was applied).
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if l.Index <= f.st.Index {
		// Applied before this member's log failed and a new instance
		// replayed it (watchLog): committed entries never change.
		return nil
	}
	err := f.st.Apply(l.Index, l.Data)
	f.notifyLocked()
	return err
}

// Snapshot implements raft.FSM.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	b, err := f.st.Snapshot()
	if err != nil {
		return nil, err
	}
	return snapshot(b), nil
}

// Restore implements raft.FSM.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var raw json.RawMessage
	if err := json.NewDecoder(rc).Decode(&raw); err != nil {
		return fmt.Errorf("control: reading snapshot: %w", err)
	}
	st, err := catalog.Restore(raw)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if st.Index < f.st.Index {
		// A new instance after a log failure (watchLog) restores its last
		// snapshot: the catalog it already holds is newer, and as
		// committed. Keep it rather than go back in time.
		return nil
	}
	f.st = st
	f.notifyLocked()
	return nil
}

type snapshot []byte

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (snapshot) Release() {}
