package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/admin/client"
	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/cluster/control"
	"github.com/tandem-project/tandem/cluster/membership"
	"github.com/tandem-project/tandem/metrics"
	"github.com/tandem-project/tandem/nbd"
	"github.com/tandem-project/tandem/raftlog"
	"github.com/tandem-project/tandem/vmcoord/vmhost"
	"github.com/tandem-project/tandem/volume"
)

// ClusterConfig turns an agent into a member of a cluster managed through
// the catalog: it gossips with the other agents (memberlist), holds a
// replica of the control-plane group, and serves the volumes the catalog
// places on it. Volumes are created, grown and deleted through the admin
// API; Config.Volumes and Config.Peers must be empty.
type ClusterConfig struct {
	// GossipAddr is the memberlist address (TCP and UDP), host:port.
	GossipAddr string
	// Join lists gossip addresses of other agents; the agent keeps trying
	// until one answers.
	Join []string
	// GossipKey encrypts gossip (16, 24 or 32 bytes). Required unless
	// InsecureGossip.
	GossipKey      []byte
	InsecureGossip bool
	// FastGossip shortens failure detection (loopback clusters, tests).
	FastGossip bool
	// ControlVoters names the control plane's voting agents (1, 3 or 5).
	ControlVoters []string
	// Capacity is the bytes this host offers for replicas (0: the size of
	// the data directory's filesystem).
	Capacity int64
	// AdminToken is required by state-changing admin requests.
	AdminToken string
	// InitialVolumes are created by the control leader when they do not
	// exist yet (the dev cluster's vol0).
	InitialVolumes []InitialVolume
	// HealAfter is how long a host stays failed (or left) before the
	// control leader moves its replicas to other hosts (self-healing);
	// 0 turns self-healing off.
	HealAfter time.Duration
	// VerifyEvery is how often the control leader has each volume's
	// replicas verified (verify.go): a volume whose last verification (or
	// creation) is older is verified next, one volume of the cluster at a
	// time, each replica read at most VerifyRate bytes a second (0: no
	// limit). 0 turns scheduled verification off.
	VerifyEvery time.Duration
	VerifyRate  int64
}

// InitialVolume is a volume created at the cluster's first start.
type InitialVolume struct {
	Name            string
	Size            int64
	Replicas        int
	PreferredLeader string
}

// Validate reports the first problem with c.
func (c *ClusterConfig) Validate() error {
	if c.GossipAddr == "" {
		return errors.New("agent: cluster mode needs a gossip address")
	}
	if _, _, err := net.SplitHostPort(c.GossipAddr); err != nil {
		return fmt.Errorf("agent: gossip address %q: %w", c.GossipAddr, err)
	}
	if len(c.GossipKey) == 0 && !c.InsecureGossip {
		return errors.New("agent: a gossip key is required (gossip is encrypted): set --gossip-key-file")
	}
	if l := len(c.GossipKey); l != 0 && l != 16 && l != 24 && l != 32 {
		return fmt.Errorf("agent: the gossip key has %d bytes, want 16, 24 or 32", l)
	}
	if err := control.ValidateVoters(c.ControlVoters); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if c.AdminToken == "" {
		return errors.New("agent: cluster mode needs an admin token (--admin-token-file)")
	}
	if c.Capacity < 0 {
		return fmt.Errorf("agent: capacity %d is negative", c.Capacity)
	}
	if c.HealAfter < 0 {
		return fmt.Errorf("agent: heal-after %v is negative (0 turns self-healing off)", c.HealAfter)
	}
	if c.VerifyEvery < 0 || c.VerifyRate < 0 {
		return fmt.Errorf("agent: verify-every %v or verify-max-rate %d is negative (0 turns scheduled verification off, or its rate limit)", c.VerifyEvery, c.VerifyRate)
	}
	for _, v := range c.InitialVolumes {
		if err := volume.ValidateName(v.Name); err != nil {
			return fmt.Errorf("agent: initial volume: %w", err)
		}
		if v.Size <= 0 {
			return fmt.Errorf("agent: initial volume %s: size must be positive", v.Name)
		}
	}
	return nil
}

// exportSet is the agent's NBD exports, which change as the catalog does.
type exportSet struct {
	mu     sync.RWMutex
	byName map[string]nbd.Export
	order  []string // volume names in the order they were added
	def    string
}

func newExportSet(def string) *exportSet {
	return &exportSet{byName: map[string]nbd.Export{}, def: def}
}

// Lookup implements nbd.Exports. A name may carry a writer epoch
// ("vm1@42", see volume.WriterExport): the export is then the volume's
// view whose writes come under that epoch, under the volume's own name.
func (e *exportSet) Lookup(name string) (nbd.Export, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if name == "" {
		name = e.def
	}
	name, epoch, err := volume.SplitExport(name)
	if err != nil {
		return nbd.Export{}, fmt.Errorf("%w: %v", nbd.ErrUnknownExport, err)
	}
	x, ok := e.byName[name]
	if !ok || name == "" {
		return nbd.Export{}, nbd.ErrUnknownExport
	}
	if epoch != 0 {
		switch b := x.Backend.(type) {
		case *handoff:
			w := b.Writer(epoch)
			if w == nil {
				return nbd.Export{}, fmt.Errorf("%w: export %q takes no writer epoch", nbd.ErrUnknownExport, name)
			}
			x.Backend = w
		case *raftlog.Volume:
			x.Backend = b.Writer(epoch)
		case *raftlog.Proxy:
			x.Backend = b.Writer(epoch)
		default:
			return nbd.Export{}, fmt.Errorf("%w: export %q takes no writer epoch", nbd.ErrUnknownExport, name)
		}
	}
	return x, nil
}

// List implements nbd.Exports: the volumes (not their forwarding views),
// in the order they were added.
func (e *exportSet) List() []string {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return slices.Clone(e.order)
}

// listed records a new volume name in the list order; e.mu is held.
func (e *exportSet) listed(name string) {
	if !slices.Contains(e.order, name) {
		e.order = append(e.order, name)
	}
}

// exportView is what one of the agent's NBD servers offers of an
// exportSet: to clients the volumes, to other agents (on the replication
// port) only the forwarding views (ForwardPrefix), through which they
// reach the leader's replica directly.
type exportView struct {
	set   *exportSet
	peers bool
}

// Lookup implements nbd.Exports.
func (v exportView) Lookup(name string) (nbd.Export, error) {
	if strings.HasPrefix(name, raftlog.ForwardPrefix) != v.peers {
		return nbd.Export{}, nbd.ErrUnknownExport
	}
	return v.set.Lookup(name)
}

// List implements nbd.Exports: the volumes, to clients only.
func (v exportView) List() []string {
	if v.peers {
		return nil
	}
	return v.set.List()
}

// add exports a volume and its forwarding view. If the volume was
// exported through a proxy, its clients go on with the replica: add
// returns once the proxy's requests in flight returned (or
// handoffDrainTimeout passed).
func (e *exportSet) add(v *raftlog.Volume) {
	desc := "tandem volume " + v.Name()
	drain := e.set(v.Name(), desc, v)
	e.mu.Lock()
	// Forwarded requests carry their op id in the NBD handle.
	e.byName[raftlog.ForwardPrefix+v.Name()] = nbd.Export{Name: raftlog.ForwardPrefix + v.Name(), Description: desc, Backend: v.Direct(), PassHandle: true}
	e.mu.Unlock()
	drain()
}

// addProxy exports a volume this host holds no replica of. If the volume
// was exported from a replica, its clients go on through the proxy:
// addProxy returns once the replica's requests in flight returned (or
// handoffDrainTimeout passed).
func (e *exportSet) addProxy(p *raftlog.Proxy) {
	e.set(p.Name(), "tandem volume "+p.Name()+" (no replica on this host)", p)()
}

// set makes b the backend of export name, through the export's handoff,
// and returns the wait for the old backend's requests in flight (which
// reports false if it gave up after handoffDrainTimeout).
func (e *exportSet) set(name, desc string, b volume.Backend) (drain func() bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.listed(name)
	if x, ok := e.byName[name]; ok {
		if h, ok := x.Backend.(*handoff); ok {
			x.Description = desc
			e.byName[name] = x
			return h.switchTo(b)
		}
	}
	e.byName[name] = nbd.Export{Name: name, Description: desc, Backend: newHandoff(b)}
	return func() bool { return true }
}

// serves reports whether export name's backend is b.
func (e *exportSet) serves(name string, b volume.Backend) bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	h, ok := e.byName[name].Backend.(*handoff)
	return ok && h.backend() == b
}

// remove withdraws a volume's exports.
func (e *exportSet) remove(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.byName, name)
	delete(e.byName, raftlog.ForwardPrefix+name)
	e.order = slices.DeleteFunc(e.order, func(n string) bool { return n == name })
}

// removeForward withdraws a volume's forwarding view only.
func (e *exportSet) removeForward(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.byName, raftlog.ForwardPrefix+name)
}

// clusterAgent is the cluster-mode part of a running agent.
type clusterAgent struct {
	cfg     Config
	cc      *ClusterConfig
	log     *slog.Logger
	host    *raftlog.Host
	srv     *nbd.Server // clients' (the NBD listeners)
	fwd     *nbd.Server // other agents' (forwarding views, on the replication port)
	exps    *exportSet
	members *membership.Membership
	ctl     *control.Control
	peers   *admin.Peers // the other agents' admin APIs
	http    *http.Client // peers' client for quick reads

	nbdAddr, adminAddr string
	// started is when the agent started (gossip has had time to find the
	// live hosts some time after it).
	started time.Time

	mu      sync.Mutex
	vols    map[string]*raftlog.Volume // open replicas by name
	ids     map[string]uint64          // the catalog IDs of the open replicas
	proxies map[string]*raftlog.Proxy  // volumes served without a replica
	// reopen opens failed replicas again (reopen.go).
	reopen *reopener

	// vms runs the VMs the catalog places on this host.
	vms *vmhost.Manager
	// mv is the replica moves' state (move.go).
	mv moveState

	// barrierTerm is the control term whose barrier this agent applied as
	// leader (leaderLoop's goroutine only).
	barrierTerm uint64

	stop chan struct{}
	wg   sync.WaitGroup
}

// adminClient returns a client of the admin API of the agent at addr
// (host:port), with this cluster's token, whose requests timeout bounds.
func (a *clusterAgent) adminClient(addr string, timeout time.Duration) (*client.Client, error) {
	return client.New(a.peers.URL(addr), a.cc.AdminToken, client.WithHTTPClient(a.peers.Client(timeout)))
}

// catalogIDFile records, in a replica's directory, the catalog ID of the
// volume it belongs to.
const catalogIDFile = "catalog-id"

// startCluster joins the gossip, opens the control group and starts the
// loops that keep this agent's replicas and exports in line with the
// catalog.
func startCluster(cfg Config, host *raftlog.Host, srv, fwd *nbd.Server, exps *exportSet, peers *admin.Peers, nbdAddr, adminAddr string) (*clusterAgent, error) {
	a := &clusterAgent{
		cfg: cfg, cc: cfg.Cluster, log: cfg.Logger, host: host, srv: srv, fwd: fwd, exps: exps,
		nbdAddr: nbdAddr, adminAddr: adminAddr, started: time.Now(),
		peers:   peers,
		http:    peers.Client(3 * time.Second),
		vols:    map[string]*raftlog.Volume{},
		ids:     map[string]uint64{},
		proxies: map[string]*raftlog.Proxy{},
		stop:    make(chan struct{}),
	}
	a.reopen = newReopener(host, exps, cfg.Logger, cfg.ReplicaRetry)
	var err error
	a.members, err = membership.Start(membership.Config{
		Name:     cfg.Name,
		Bind:     a.cc.GossipAddr,
		Key:      a.cc.GossipKey,
		Insecure: a.cc.InsecureGossip,
		Meta:     a.meta,
		Fast:     a.cc.FastGossip,
		Logger:   a.log,
	})
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	host.SetPeerShortOfRoom(a.peerShortOfRoom)
	a.ctl, err = control.Open(control.Config{
		Name:             cfg.Name,
		Dir:              filepath.Join(cfg.DataDir, "control"),
		Host:             host,
		Voters:           a.cc.ControlVoters,
		Resolve:          a.resolve,
		HeartbeatTimeout: cfg.Replication.HeartbeatTimeout,
		Retry:            cfg.ReplicaRetry,
		Room:             func() error { return host.Room(raftlog.RoomMargin) },
		Logger:           a.log,
	})
	if err != nil {
		a.members.Shutdown()
		return nil, fmt.Errorf("agent: %w", err)
	}
	if err := a.startVMs(); err != nil {
		a.ctl.Close()
		a.members.Shutdown()
		return nil, err
	}
	a.wg.Add(3)
	go a.joinLoop()
	go a.leaderLoop()
	go a.reconcileLoop()
	return a, nil
}

// close leaves the gossip and stops the control group; the replicas are
// closed with the host.
func (a *clusterAgent) close() {
	close(a.stop)
	a.wg.Wait()
	a.vms.Close()
	if err := a.members.Leave(2 * time.Second); err != nil {
		a.log.Debug("leaving the gossip", "err", err)
	}
	if err := a.ctl.Close(); err != nil {
		a.log.Warn("closing the control plane", "err", err)
	}
	a.closeProxies()
}

// view is the cluster as this agent reports it in its metrics.
func (a *clusterAgent) view() metrics.ClusterView {
	st := a.ctl.State()
	v := metrics.ClusterView{Members: map[string]string{}, ControlLeader: a.ctl.IsLeader(), ControlApplied: a.ctl.Status().Applied,
		ControlFailed: a.ctl.Failed() != nil, Volumes: len(st.Volumes), Verified: map[string]metrics.VerifyView{}}
	for _, m := range a.members.Members() {
		v.Members[m.Name] = string(m.State)
	}
	for name, cv := range st.Volumes {
		if r := cv.LastVerify; r != nil {
			v.Verified[name] = metrics.VerifyView{OK: r.OK, Finished: r.Finished}
		}
	}
	return v
}

// meta is what this agent gossips about itself.
func (a *clusterAgent) meta() membership.Meta {
	capacity, free := a.space()
	failed := 0
	for _, st := range a.host.Statuses() {
		if st.Error != "" {
			failed++
		}
	}
	return membership.Meta{Raft: a.host.RaftAddr(), NBD: a.nbdAddr, Admin: a.adminAddr, Capacity: capacity, Free: free, Version: a.cfg.Version, Failed: failed,
		Short: a.shortOfRoom()}
}

// shortOfRoom reports whether this host's disk is short of space for its
// replicas (see shortOfRoom).
func (a *clusterAgent) shortOfRoom() bool { return shortOfRoom(a.host, a.reopen) }

// checkVersions logs, when it changes, which builds the alive agents run
// (last is what it logged last; it returns the current list): a warning
// while they differ, since agents of different builds may not understand
// each other's log entries or requests (README, "Upgrades").
func (a *clusterAgent) checkVersions(last string) string {
	now, mixed := versionSummary(a.members.Members())
	switch {
	case now == last:
	case mixed:
		a.log.Warn("the agents run different builds: finish the upgrade (stop every agent, then start them all on one build)", "builds", now)
	case strings.Contains(last, "; "):
		a.log.Info("the agents run one build again", "builds", now)
	}
	return now
}

// versionSummary lists the builds the alive members gossip, each with its
// members ("v1: n1,n2; v2: n3"), and reports whether there are several.
func versionSummary(members []membership.Member) (summary string, mixed bool) {
	byVersion := map[string][]string{}
	for _, m := range members {
		if m.State == membership.Alive && m.Meta.Version != "" {
			byVersion[m.Meta.Version] = append(byVersion[m.Meta.Version], m.Name)
		}
	}
	var parts []string
	for _, v := range slices.Sorted(maps.Keys(byVersion)) {
		names := byVersion[v]
		slices.Sort(names)
		parts = append(parts, v+": "+strings.Join(names, ","))
	}
	return strings.Join(parts, "; "), len(byVersion) > 1
}

// peerShortOfRoom reports whether agent name last said its disk is short
// of space (raftlog.Host.SetPeerShortOfRoom).
func (a *clusterAgent) peerShortOfRoom(name string) bool {
	m, ok := a.members.Member(name)
	return ok && m.State == membership.Alive && m.Meta.Short
}

// space returns the capacity offered (the data directory's file system
// less the disk reserve, unless set) and the free bytes of that file
// system.
func (a *clusterAgent) space() (capacity, free int64) {
	var st unix.Statfs_t
	if err := unix.Statfs(a.cfg.DataDir, &st); err == nil {
		capacity = max(int64(st.Blocks)*st.Bsize-a.cfg.Replication.DiskReserve, 0)
		free = int64(st.Bavail) * st.Bsize
	}
	if a.cc.Capacity > 0 {
		capacity = a.cc.Capacity
	}
	return capacity, free
}

// resolve returns an alive agent's replication address.
func (a *clusterAgent) resolve(name string) (string, bool) {
	m, ok := a.members.Member(name)
	if !ok || m.State == membership.Failed || m.State == membership.Left || m.Meta.Raft == "" {
		return "", false
	}
	return m.Meta.Raft, true
}

// joinLoop joins the configured agents, retrying until one answers, and
// refreshes this agent's gossiped free space every 10 s, and at once
// when its disk becomes short of space or has room again.
func (a *clusterAgent) joinLoop() {
	defer a.wg.Done()
	joined := len(a.cc.Join) == 0
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	var lastMeta time.Time
	var short bool
	var versions string
	for {
		if !joined {
			// Joined means another agent is alive in our view: a join
			// list that includes this agent's own address "succeeds" by
			// contacting itself, which proves nothing.
			err := a.members.Join(a.cc.Join)
			for _, m := range a.members.Members() {
				if m.Name != a.cfg.Name && m.State == membership.Alive {
					joined = true
				}
			}
			if joined {
				a.log.Info("joined the cluster", "via", a.cc.Join)
			} else if err != nil {
				a.log.Debug("joining the cluster", "err", err)
			}
		}
		versions = a.checkVersions(versions)
		if now := a.shortOfRoom(); now != short || time.Since(lastMeta) > 10*time.Second {
			if now != short {
				a.log.Info("telling the cluster whether this host's disk is short of space", "short", now)
			}
			short, lastMeta = now, time.Now()
			_ = a.members.UpdateMeta()
		}
		select {
		case <-a.stop:
			return
		case <-t.C:
		}
	}
}

// leaderLoop does the control leader's work: it adds agents to the
// control group, records hosts (addresses, space, membership state) in
// the catalog, and creates the initial volumes. It runs on membership
// events, leadership changes, and every 2 s.
func (a *clusterAgent) leaderLoop() {
	defer a.wg.Done()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		if a.ctl.IsLeader() {
			a.leaderPass()
		}
		select {
		case <-a.stop:
			return
		case ev := <-a.members.Events():
			a.log.Info("member changed", "name", ev.Member.Name, "state", ev.Member.State)
		case <-a.ctl.LeaderCh():
		case <-t.C:
		}
	}
}

func (a *clusterAgent) leaderPass() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A new leader's catalog is current once it applied a barrier of its
	// own; one per term is enough (a barrier is a synced log entry).
	if term := a.ctl.Status().Term; term != a.barrierTerm {
		if err := a.ctl.Barrier(ctx); err != nil {
			return
		}
		a.barrierTerm = term
	}
	st := a.ctl.State()
	members := a.members.Members()
	members = append(members, a.unseenHosts(st, members)...)
	for _, m := range members {
		old, recorded := st.Hosts[m.Name]
		state := a.hostState(m, old)
		if state == string(membership.Alive) && m.Meta.Raft != "" {
			if err := a.ctl.EnsureMember(m.Name, m.Meta.Raft); err != nil {
				a.log.Warn("adding an agent to the control plane", "name", m.Name, "err", err)
			}
		}
		h := &catalog.Host{Name: m.Name, RaftAddr: m.Meta.Raft, NBDAddr: m.Meta.NBD, AdminAddr: m.Meta.Admin,
			Capacity: m.Meta.Capacity, DiskFree: m.Meta.Free, State: state}
		if recorded {
			if old.State != state && state == catalog.HostRevoked {
				a.log.Warn("host shut out: its peer certificate is revoked; it takes no new replicas, and its replicas move to other hosts after --heal-after",
					"name", m.Name, "raft", m.Meta.Raft)
			}
			h.Joined = old.Joined
			if m.Meta.Raft == "" { // no meta from a failed agent: keep what we know
				h.RaftAddr, h.NBDAddr, h.AdminAddr, h.Capacity, h.DiskFree = old.RaftAddr, old.NBDAddr, old.AdminAddr, old.Capacity, old.DiskFree
			}
			if hostEqual(old, h) {
				continue
			}
		} else {
			h.Joined = time.Now().UTC()
		}
		if err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdPutHost, Host: h, At: time.Now().UTC()}); err != nil {
			a.log.Warn("recording a host", "name", m.Name, "err", err)
			return
		}
	}
	a.evacuate(ctx)
	a.scheduleVerify(ctx, a.ctl.State(), time.Now())
	for _, iv := range a.cc.InitialVolumes {
		if _, ok := a.ctl.State().Volumes[iv.Name]; ok {
			continue
		}
		if _, err := a.createVolume(ctx, iv.Name, iv.Size, iv.Replicas, iv.PreferredLeader); err != nil {
			a.log.Info("initial volume not created yet", "name", iv.Name, "err", err)
		} else {
			a.log.Info("initial volume created", "name", iv.Name, "size", volume.FormatSize(iv.Size))
		}
	}
}

// hostState is the state the control leader records for member m, whose
// catalog record is old (nil if none): membership's, except that a host
// shut out for a revoked certificate, which still gossips (the gossip key
// is shared), is revoked. A new leader that has not seen the host's
// certificate yet keeps what the catalog says.
func (a *clusterAgent) hostState(m membership.Member, old *catalog.Host) string {
	if m.State != membership.Alive {
		return string(m.State)
	}
	revoked, seen := a.host.PeerRevoked(m.Meta.Raft)
	if revoked || (!seen && old != nil && old.State == catalog.HostRevoked) {
		return catalog.HostRevoked
	}
	return string(m.State)
}

// hostEqual reports whether two host records differ only in ways not
// worth a log entry (free space moving by less than 1 GiB).
func hostEqual(a, b *catalog.Host) bool {
	d := a.DiskFree - b.DiskFree
	return a.RaftAddr == b.RaftAddr && a.NBDAddr == b.NBDAddr && a.AdminAddr == b.AdminAddr &&
		a.Capacity == b.Capacity && a.State == b.State && d < 1<<30 && d > -(1<<30)
}

// reconcileLoop keeps this agent's replicas and exports in line with its
// catalog: it opens the replicas placed here, puts the catalog's writer
// epoch into the log of the volumes it leads (fencing other writers),
// grows them to their catalog size, and removes replicas of deleted
// volumes.
func (a *clusterAgent) reconcileLoop() {
	defer a.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		changed := a.ctl.Changes()
		a.reconcile()
		select {
		case <-a.stop:
			return
		case <-changed:
		case <-t.C:
		}
	}
}

func (a *clusterAgent) reconcile() {
	// What destroys something (VMs stopped, replica files deleted) follows
	// a current catalog only: a restarted agent must not act on the stale
	// copy of its last snapshot. The state is read after the check, so
	// that it is at least as new as what the check saw.
	current := a.ctl.CaughtUp()
	st := a.ctl.State()
	me := a.cfg.Name
	a.reconcileProxies(st)
	if current {
		a.vms.Reconcile(st)
	}
	a.reconcileMoves(st, current)
	// Replicas to open.
	for _, name := range st.VolumeNames() {
		cv := st.Volumes[name]
		if !cv.Holds(me) {
			continue
		}
		a.mu.Lock()
		v := a.vols[name]
		a.mu.Unlock()
		now := time.Now()
		if v == nil {
			try, reopening := a.reopen.retry(name, now)
			if !try {
				continue
			}
			if reopening {
				a.reopen.attempt(name, now)
			}
			err := a.openReplica(st, cv, current)
			switch {
			case errors.Is(err, raftlog.ErrStateLost):
				a.askRebuild(cv, err)
			case err != nil && reopening:
				a.reopen.failedAgain(name, err)
			case err != nil:
				a.log.Warn("opening a replica", "volume", name, "err", err)
			case reopening:
				a.reopen.opened(name)
			}
			if err == nil {
				a.found(name)
			}
			continue
		}
		if a.reopen.due(v, now) {
			a.reopenReplica(st, cv, v, now, current)
			continue
		}
		// A preferred leader that gossip does not see alive is not handed
		// leadership: each attempt would leave the volume without a ready
		// leader until the transfer times out.
		preferred := cv.PreferredLeader
		if m, ok := a.members.Member(preferred); !ok || m.State != membership.Alive {
			preferred = ""
		}
		if cv.Move != nil && cv.Move.Rebuild() && cv.Move.To == preferred {
			preferred = "" // its replica is being rebuilt: it cannot lead
		}
		if err := v.SetPreferredLeader(preferred); err != nil {
			a.log.Warn("following the catalog's preferred leader", "volume", name, "err", err)
		}
		if _, gen := v.Fenced(); cv.WriterGen > gen && v.Status().State == "Leader" {
			a.fence(v, cv)
		}
		if cv.Size > v.Size() && v.Status().State == "Leader" {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := v.Grow(ctx, cv.Size); err != nil {
				a.log.Warn("growing a volume", "volume", name, "err", err)
			} else {
				a.log.Info("volume grown", "volume", name, "size", volume.FormatSize(cv.Size))
			}
			cancel()
		}
	}
	// Replicas to remove: only on proof that their volume is gone, from a
	// current catalog.
	if !current {
		return
	}
	for _, name := range a.reopen.tracked() {
		a.mu.Lock()
		open := a.vols[name] != nil
		a.mu.Unlock()
		if cv := st.Volumes[name]; !open && (cv == nil || !cv.Holds(me)) {
			a.dropReopening(name)
		}
	}
	a.mu.Lock()
	open := make(map[string]uint64, len(a.ids))
	for k, id := range a.ids {
		open[k] = id
	}
	a.mu.Unlock()
	for name, id := range open {
		cv := st.Volumes[name]
		gone := st.IsRemoved(id) || (cv != nil && cv.ID != id) || (cv != nil && !cv.Holds(me))
		if !gone {
			continue
		}
		a.mu.Lock()
		p := a.proxies[name]
		v := a.vols[name]
		a.mu.Unlock()
		rebuild := cv != nil && cv.ID == id && slices.Contains(cv.Replicas, me)
		if rebuild && v.Status().State == "Leader" {
			continue // the rebuild's driver hands leadership away first
		}
		// A volume moved away (or whose replica here is being rebuilt) is
		// still served here, through the proxy reconcileProxies opened
		// (and exported, which moved the replica's clients over to it):
		// only the forwarding view goes.
		var n int
		if p != nil {
			a.exps.addProxy(p)
			a.exps.removeForward(name)
			n = a.fwd.Disconnect(raftlog.ForwardPrefix + name)
		} else {
			if a.exps.serves(name, v) {
				a.exps.remove(name)
				n = a.srv.Disconnect(name)
			}
			a.exps.removeForward(name)
			n += a.fwd.Disconnect(raftlog.ForwardPrefix + name)
		}
		a.mu.Lock()
		delete(a.vols, name)
		delete(a.ids, name)
		a.mu.Unlock()
		switch err := a.host.CloseVolume(name, true); {
		case err != nil:
			a.log.Warn("removing a replica", "volume", name, "err", err)
		case rebuild:
			a.log.Info("replica removed to be rebuilt", "volume", name, "rebuild", cv.Move.ID, "disconnected", n)
		default:
			a.log.Info("replica removed: the volume was deleted or moved away", "volume", name, "disconnected", n)
		}
	}
}

// reopenReplica closes this host's failed replica v of volume cv and opens
// it again, its clients served through a proxy meanwhile (reopen.go). If
// it cannot be opened, the proxy goes on serving them and reconcile tries
// again after a longer wait.
func (a *clusterAgent) reopenReplica(st *catalog.State, cv *catalog.Volume, v *raftlog.Volume, now time.Time, current bool) {
	a.reopen.takeOut(v, now)
	a.mu.Lock()
	delete(a.vols, cv.Name)
	delete(a.ids, cv.Name)
	a.mu.Unlock()
	if err := a.openReplica(st, cv, current); err != nil {
		a.reopen.failedAgain(cv.Name, err)
		return
	}
	a.reopen.opened(cv.Name)
}

// dropReopening gives up opening again the failed replica of a volume
// deleted or moved away meanwhile, and removes its files. The proxy that
// served its clients is withdrawn, unless a proxy of a volume that moved
// away took them over already.
func (a *clusterAgent) dropReopening(name string) {
	n := 0
	if p := a.reopen.forget(name); p != nil {
		if a.exps.serves(name, p) {
			a.exps.remove(name)
			n = a.srv.Disconnect(name)
		}
		p.Close()
	}
	if err := a.host.CloseVolume(name, true); err != nil {
		a.log.Warn("removing a replica that could not be opened again", "volume", name, "err", err)
	} else {
		a.log.Info("replica removed: the volume was deleted or moved away before its failed replica could be opened again", "volume", name, "disconnected", n)
	}
}

// fence puts the catalog's writer of volume cv into the log of v, which
// this host leads (docs/fencing.md).
func (a *clusterAgent) fence(v *raftlog.Volume, cv *catalog.Volume) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := v.Fence(ctx, cv.WriterGen, cv.Writer); err != nil {
		a.log.Warn("fencing a volume", "volume", cv.Name, "writer_epoch", cv.Writer, "writer_gen", cv.WriterGen, "err", err)
		return
	}
	a.log.Info("volume writer set", "volume", cv.Name, "writer_epoch", cv.Writer, "writer_gen", cv.WriterGen)
}

// reconcileProxies serves every volume this host holds no replica of
// through a proxy to its replicas' agents, so that any agent serves any
// volume.
func (a *clusterAgent) reconcileProxies(st *catalog.State) {
	me := a.cfg.Name
	own := map[string]bool{}
	for _, name := range st.VolumeNames() {
		cv := st.Volumes[name]
		if own[name] = cv.Holds(me) && !a.lost(cv); own[name] {
			continue
		}
		a.mu.Lock()
		p := a.proxies[name]
		a.mu.Unlock()
		if p != nil {
			if cv.Size > p.Size() {
				p.SetSize(cv.Size)
			}
			continue
		}
		// The replicas' agents, but not this one's (a replica here being
		// rebuilt never leads).
		var peers []raftlog.Peer
		want := 0
		for _, h := range cv.Replicas {
			if h == me {
				continue
			}
			want++
			if ch, ok := st.Hosts[h]; ok && ch.NBDAddr != "" {
				peers = append(peers, raftlog.Peer{ID: h, Raft: ch.RaftAddr, NBD: ch.NBDAddr})
			}
		}
		if len(peers) != want {
			continue // addresses not known yet
		}
		p, err := a.host.OpenProxy(raftlog.VolumeSpec{Name: name, Size: cv.Size, ReadOnly: cv.ReadOnly, PreferredLeader: cv.PreferredLeader, Peers: peers})
		if err != nil {
			a.log.Warn("serving a volume without a replica", "volume", name, "err", err)
			continue
		}
		a.mu.Lock()
		a.proxies[name] = p
		a.mu.Unlock()
		a.exps.addProxy(p)
		a.log.Info("volume served through its replicas' agents", "name", name, "replicas", cv.Replicas)
	}
	a.mu.Lock()
	var gone []*raftlog.Proxy
	for name, p := range a.proxies {
		if _, ok := st.Volumes[name]; !ok || own[name] {
			gone = append(gone, p)
			delete(a.proxies, name)
		}
	}
	a.mu.Unlock()
	for _, p := range gone {
		// A replica moved here takes the proxy's clients over (adopt
		// exports it again, a no-op); otherwise they are disconnected.
		ms := a.moves()
		ms.mu.Lock()
		j := ms.joining[p.Name()]
		ms.mu.Unlock()
		cv, ok := st.Volumes[p.Name()]
		if ok && j != nil && a.replicaID(p.Name()) == cv.ID {
			if adopt, _ := a.joinEnded(cv); adopt {
				a.exps.add(j)
				p.Close()
				continue
			}
		}
		if a.exps.serves(p.Name(), p) {
			a.exps.remove(p.Name())
			a.srv.Disconnect(p.Name())
		}
		p.Close()
	}
}

// closeProxies closes the proxies when the agent stops.
func (a *clusterAgent) closeProxies() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range a.proxies {
		p.Close()
	}
}

// replicaID returns the catalog ID recorded with this agent's replica of
// a volume (0 if none).
func (a *clusterAgent) replicaID(name string) uint64 {
	return a.replicaNumber(name, catalogIDFile)
}

// replicaNumber returns the number in file of this agent's replica of
// volume name (0 if none).
func (a *clusterAgent) replicaNumber(name, file string) uint64 {
	b, err := os.ReadFile(filepath.Join(a.cfg.DataDir, "groups", name, file))
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// openReplica opens this agent's replica of a catalog volume and exports
// it. A directory left by a deleted volume of the same name is removed
// first; one of unknown origin is left alone (and the volume not opened).
// A replica the catalog says was created before is never created anew:
// without its files (or its raft state) it is lost (raftlog.ErrStateLost, rebuild.go).
// current says whether st is current.
func (a *clusterAgent) openReplica(st *catalog.State, cv *catalog.Volume, current bool) error {
	var peers []raftlog.Peer
	for _, h := range cv.Replicas {
		ch, ok := st.Hosts[h]
		if !ok || ch.RaftAddr == "" {
			return fmt.Errorf("replica host %s has no known address yet", h)
		}
		peers = append(peers, raftlog.Peer{ID: h, Raft: ch.RaftAddr, NBD: ch.NBDAddr})
	}
	dir := filepath.Join(a.cfg.DataDir, "groups", cv.Name)
	fresh := true
	if _, err := os.Stat(dir); err == nil {
		switch id := a.replicaID(cv.Name); {
		case id == cv.ID:
			fresh = false
			if mark := a.rebuildMark(cv.Name); mark != 0 {
				// Made by a rebuild: this host's replica only if it
				// completed; otherwise its copy is not to be trusted.
				switch completed, failed := rebuildDone(cv, mark); {
				case completed:
					if err := a.clearRebuildMark(cv.Name); err != nil {
						return err
					}
				case !failed || !current:
					return fmt.Errorf("%s was made by rebuild %d, whose end the catalog does not show yet", dir, mark)
				default:
					if err := a.host.RemoveVolumeFiles(cv.Name); err != nil {
						return err
					}
					a.log.Info("replica left by a rebuild that did not complete removed", "volume", cv.Name, "rebuild", mark)
					fresh = true
				}
			}
		case id != 0 && (st.IsRemoved(id) || id < cv.ID):
			if err := a.host.RemoveVolumeFiles(cv.Name); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s holds a replica of unknown origin (catalog id %d, the volume's is %d): move it away to let the agent create the replica", dir, id, cv.ID)
		}
	}
	existing := slices.Contains(cv.Opened, a.cfg.Name)
	if fresh {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		err := a.lostOnOpen(ctx, cv, current)
		cancel()
		if err != nil {
			return err
		}
		existing = false
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(dir, catalogIDFile), []byte(strconv.FormatUint(cv.ID, 10)+"\n")); err != nil {
		return err
	}
	v, err := a.host.OpenVolume(raftlog.VolumeSpec{Name: cv.Name, Size: cv.Size, PreferredLeader: cv.PreferredLeader, ReadOnly: cv.ReadOnly, Peers: peers, Existing: existing})
	if err != nil {
		return err
	}
	if !existing && !fresh {
		a.recordOpenedLater(cv)
	}
	a.mu.Lock()
	a.vols[cv.Name], a.ids[cv.Name] = v, cv.ID
	a.mu.Unlock()
	a.exps.add(v)
	a.log.Info("volume ready", "name", cv.Name, "size", volume.FormatSize(v.Size()), "replicas", cv.Replicas)
	return nil
}

// writeFileSync writes a small file durably.
func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ---- the admin API (admin.Cluster) ----

// ControlError implements admin.Cluster.
func (a *clusterAgent) ControlError() error { return a.ctl.Failed() }

// Leader implements admin.Cluster.
func (a *clusterAgent) Leader() (string, bool, bool) {
	name, ok := a.ctl.Leader()
	if !ok {
		return "", false, false
	}
	if name == a.cfg.Name {
		// A new leader answers once its catalog is current (see
		// control.CaughtUp): until then it would serve, and decide on,
		// the catalog of its last snapshot. The admin API waits.
		if !a.ctl.CaughtUp() {
			return "", false, false
		}
		return a.adminAddr, true, true
	}
	m, ok := a.members.Member(name)
	if !ok || m.Meta.Admin == "" {
		if h, found := a.ctl.State().Hosts[name]; found && h.AdminAddr != "" {
			return h.AdminAddr, false, true
		}
		return "", false, false
	}
	return m.Meta.Admin, false, true
}

// Status implements admin.Cluster.
func (a *clusterAgent) Status(ctx context.Context) (admin.ClusterStatus, error) {
	st := a.ctl.State()
	cs := a.ctl.Status()
	out := admin.ClusterStatus{Host: a.cfg.Name, Version: a.cfg.Version, ControlLeader: cs.Leader, ControlVoters: cs.Voters,
		ControlTerm: cs.Term, ControlIndex: cs.Applied, Hosts: len(st.Hosts), Volumes: len(st.Volumes)}
	for _, h := range st.Hosts {
		if m, ok := a.members.Member(h.Name); ok && m.State == membership.Alive && h.State != catalog.HostRevoked {
			out.HostsAlive++
		}
	}
	return out, nil
}

// Hosts implements admin.Cluster.
func (a *clusterAgent) Hosts(ctx context.Context) ([]admin.Host, error) {
	st := a.ctl.State()
	cs := a.ctl.Status()
	out := []admin.Host{}
	for _, name := range st.HostNames() {
		h := st.Hosts[name]
		ah := admin.Host{Name: name, State: h.State, Since: h.Since, RaftAddr: h.RaftAddr, NBDAddr: h.NBDAddr, AdminAddr: h.AdminAddr,
			Capacity: h.Capacity, Allocated: st.Allocated(name), DiskFree: h.DiskFree, Control: cs.Members[name], Joined: h.Joined,
			Drained: h.Drained}
		// This agent's view of membership, fresher than the catalog's,
		// except that a host shut out for a revoked certificate stays
		// revoked while it gossips alive.
		if m, ok := a.members.Member(name); ok {
			if m.State != membership.Alive || h.State != catalog.HostRevoked {
				ah.State = string(m.State)
			}
			ah.Version = m.Meta.Version
		}
		if name == cs.Leader {
			ah.Control = "leader"
		}
		for _, v := range st.Volumes {
			if slices.Contains(v.Replicas, name) {
				ah.Replicas++
			}
			if v.PreferredLeader == name {
				ah.Leads++
			}
		}
		out = append(out, ah)
	}
	return out, nil
}

// Volumes implements admin.Cluster.
func (a *clusterAgent) Volumes(ctx context.Context) ([]admin.Volume, error) {
	st := a.ctl.State()
	local := a.gatherLocal(ctx, st)
	out := []admin.Volume{}
	for _, name := range st.VolumeNames() {
		out = append(out, a.describe(st, st.Volumes[name], local))
	}
	return out, nil
}

// Volume implements admin.Cluster.
func (a *clusterAgent) Volume(ctx context.Context, name string) (admin.Volume, error) {
	st := a.ctl.State()
	cv, ok := st.Volumes[name]
	if !ok {
		return admin.Volume{}, admin.Errorf(http.StatusNotFound, "no volume named %q", name)
	}
	return a.describe(st, cv, a.gatherLocal(ctx, st)), nil
}

// gatherLocal asks every alive host's agent for its replicas' status and
// attachments, in parallel, each bounded by 2 s.
func (a *clusterAgent) gatherLocal(ctx context.Context, st *catalog.State) map[string][]admin.LocalVolume {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var mu sync.Mutex
	out := map[string][]admin.LocalVolume{}
	var wg sync.WaitGroup
	for _, h := range st.Hosts {
		if h.Name != a.cfg.Name && (h.AdminAddr == "" || h.State == string(membership.Failed) || h.State == string(membership.Left)) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if lv, err := a.localVolumes(ctx, h); err == nil {
				mu.Lock()
				out[h.Name] = lv
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}

// localVolumes returns host h's report of its replicas: this agent's own,
// or another's asked through its admin API.
func (a *clusterAgent) localVolumes(ctx context.Context, h *catalog.Host) ([]admin.LocalVolume, error) {
	if h.Name == a.cfg.Name {
		return a.Local(), nil
	}
	if h.AdminAddr == "" {
		return nil, fmt.Errorf("host %s: no admin address known", h.Name)
	}
	var lv []admin.LocalVolume
	err := a.getLocal(ctx, h.AdminAddr, "/v1/local/volumes", &lv)
	return lv, err
}

// getLocal reads GET path (a /v1/local/ report) of the agent whose admin
// API is at addr into out.
func (a *clusterAgent) getLocal(ctx context.Context, addr, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.peers.URL(addr)+path, nil)
	if err != nil {
		return err
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s of %s: %s", path, addr, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("GET %s of %s: %w", path, addr, err)
	}
	return nil
}

// describe builds a volume's API view from the catalog and the replicas'
// reports.
func (a *clusterAgent) describe(st *catalog.State, cv *catalog.Volume, local map[string][]admin.LocalVolume) admin.Volume {
	v := admin.Volume{Name: cv.Name, Size: cv.Size, Hosts: slices.Clone(cv.Replicas), PreferredLeader: cv.PreferredLeader,
		State: admin.VolumeReady, Created: cv.Created, Replicas: []admin.Replica{}}
	var commit uint64
	healthy := 0
	for host, lvs := range local {
		for _, lv := range lvs {
			if lv.Name != cv.Name {
				continue
			}
			v.Attached += lv.Attached
			if lv.State == "Leader" && slices.Contains(cv.Replicas, host) {
				v.Leader, commit = host, lv.CommitIndex
			}
		}
	}
	for _, h := range cv.Replicas {
		r := admin.Replica{Host: h, State: "Unreachable"}
		for _, lv := range local[h] {
			if lv.Name == cv.Name {
				r = admin.Replica{Host: h, State: lv.State, Term: lv.Term, LastIndex: lv.LastIndex, CommitIndex: lv.CommitIndex,
					AppliedIndex: lv.AppliedIndex, LastContact: lv.LastContact, Error: lv.Error, FailedSince: lv.FailedSince}
				if commit > lv.AppliedIndex {
					r.Lag = commit - lv.AppliedIndex
				}
				if lv.Error == "" && (lv.State == "Leader" || lv.State == "Follower") {
					healthy++
				}
			}
		}
		v.Replicas = append(v.Replicas, r)
	}
	switch {
	case v.Leader == "":
		v.State = admin.VolumeUnavailable
	case healthy < len(cv.Replicas):
		v.State = admin.VolumeDegraded
	}
	uriHost := v.Leader
	if uriHost == "" {
		uriHost = cv.PreferredLeader
	}
	if h, ok := st.Hosts[uriHost]; ok && h.NBDAddr != "" {
		v.URI = "nbd://" + h.NBDAddr + "/" + cv.Name
	}
	a.describeMove(&v, cv, local)
	v.Verify, v.LastVerify = admin.VerifyOf(cv.Verify), admin.VerifyResultOf(cv.LastVerify)
	return v
}

// Local implements admin.Cluster.
func (a *clusterAgent) Local() []admin.LocalVolume {
	att := a.srv.Attached()
	out := []admin.LocalVolume{}
	for _, st := range a.host.Statuses() {
		lv := admin.LocalVolume{VolumeStatus: st, Attached: att[st.Name]}
		if st.Error != "" {
			lv.FailedSince = a.reopen.failedSince(st.Name)
		}
		out = append(out, lv)
	}
	return out
}

// defaultReplicas is the replica count of a volume created without one.
const defaultReplicas = 3

// CreateVolume implements admin.Cluster.
func (a *clusterAgent) CreateVolume(ctx context.Context, req admin.CreateVolume) (admin.Volume, error) {
	if err := volume.ValidateName(req.Name); err != nil {
		return admin.Volume{}, admin.Errorf(http.StatusBadRequest, "%v", err)
	}
	if req.Size <= 0 {
		return admin.Volume{}, admin.Errorf(http.StatusBadRequest, "size: a positive size is required, e.g. \"10G\"")
	}
	if req.Replicas < 0 || req.Replicas > 5 {
		return admin.Volume{}, admin.Errorf(http.StatusBadRequest, "replicas: %d, want 1 to 5", req.Replicas)
	}
	cv, err := a.createVolume(ctx, req.Name, int64(req.Size), req.Replicas, "")
	if err != nil {
		return admin.Volume{}, err
	}
	// Wait (briefly) for the new volume's group to elect a leader, so the
	// answer carries it and the volume is usable at once.
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, err := a.Volume(ctx, cv.Name)
		if err != nil || v.Leader != "" || time.Now().After(deadline) {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// createVolume places and records a volume (leader only).
func (a *clusterAgent) createVolume(ctx context.Context, name string, size int64, replicas int, leader string) (*catalog.Volume, error) {
	st := a.ctl.State()
	if _, ok := st.Volumes[name]; ok {
		return nil, admin.Errorf(http.StatusConflict, "volume %q already exists", name)
	}
	var cands []catalog.Candidate
	for _, h := range st.Hosts {
		alive := false
		if m, ok := a.members.Member(h.Name); ok && m.State == membership.Alive {
			alive = true
		}
		// A drained host takes no new replica, nor one shut out for a
		// revoked certificate.
		cands = append(cands, catalog.Candidate{Name: h.Name, Free: h.Capacity - st.Allocated(h.Name), Alive: alive && !h.Drained && h.State != catalog.HostRevoked})
	}
	if replicas == 0 {
		replicas = min(defaultReplicas, len(cands))
	}
	hosts, pl, err := st.Place(size, replicas, cands)
	if err != nil {
		return nil, admin.Errorf(http.StatusConflict, "%v", err)
	}
	if leader != "" && slices.Contains(hosts, leader) {
		pl = leader
	}
	cv := &catalog.Volume{Name: name, Size: size, Replicas: hosts, PreferredLeader: pl}
	if err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdCreateVolume, Volume: cv}); err != nil {
		return nil, catalogError(err)
	}
	return a.ctl.State().Volumes[name], nil
}

// catalogError maps a refused catalog command to an API error.
func catalogError(err error) error {
	switch {
	case errors.Is(err, catalog.ErrExists), errors.Is(err, catalog.ErrNoPlace):
		return admin.Errorf(http.StatusConflict, "%s", strings.TrimPrefix(err.Error(), "catalog: "))
	case errors.Is(err, catalog.ErrNotFound):
		return admin.Errorf(http.StatusNotFound, "%s", strings.TrimPrefix(err.Error(), "catalog: "))
	case errors.Is(err, catalog.ErrInvalid), errors.Is(err, catalog.ErrShrinking):
		return admin.Errorf(http.StatusBadRequest, "%s", strings.TrimPrefix(err.Error(), "catalog: "))
	case errors.Is(err, control.ErrNotLeader):
		return admin.Errorf(http.StatusServiceUnavailable, "the control leader changed during the request; retry")
	}
	return err
}

// ResizeVolume implements admin.Cluster: it records the new size, then
// waits until every reachable replica has grown (the volume leader's
// agent grows the volume through its log), so that new NBD connections
// anywhere see the new size.
func (a *clusterAgent) ResizeVolume(ctx context.Context, name string, size int64) (admin.Volume, error) {
	st := a.ctl.State()
	cv, ok := st.Volumes[name]
	if !ok {
		return admin.Volume{}, admin.Errorf(http.StatusNotFound, "no volume named %q", name)
	}
	if size < cv.Size {
		return admin.Volume{}, admin.Errorf(http.StatusBadRequest, "volume %q is %s: volumes only grow (asked for %s)", name, volume.FormatSize(cv.Size), volume.FormatSize(size))
	}
	if size > cv.Size {
		for _, h := range cv.Replicas {
			if ch, ok := st.Hosts[h]; ok && ch.Capacity-st.Allocated(h) < size-cv.Size {
				return admin.Volume{}, admin.Errorf(http.StatusConflict, "host %s has no room to grow its replica of %q by %s", h, name, volume.FormatSize(size-cv.Size))
			}
		}
		if err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdResizeVolume, Name: name, Size: size}); err != nil {
			return admin.Volume{}, catalogError(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := a.ctl.State()
		local := a.gatherLocal(ctx, st)
		grown := true
		for _, h := range st.Volumes[name].Replicas {
			for _, lv := range local[h] {
				if lv.Name == name && lv.Size < size {
					grown = false
				}
			}
		}
		if grown {
			return a.describe(st, st.Volumes[name], local), nil
		}
		if time.Now().After(deadline) {
			return admin.Volume{}, admin.Errorf(http.StatusGatewayTimeout, "volume %q: the new size is recorded but not every replica has grown within 20 s; it will", name)
		}
		select {
		case <-ctx.Done():
			return admin.Volume{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// DeleteVolume implements admin.Cluster.
func (a *clusterAgent) DeleteVolume(ctx context.Context, name string, force bool) error {
	st := a.ctl.State()
	if _, ok := st.Volumes[name]; !ok {
		return admin.Errorf(http.StatusNotFound, "no volume named %q", name)
	}
	if !force {
		attached := 0
		for _, lvs := range a.gatherLocal(ctx, st) {
			for _, lv := range lvs {
				if lv.Name == name {
					attached += lv.Attached
				}
			}
		}
		if attached > 0 {
			return admin.Errorf(http.StatusConflict, "volume %q has %d NBD connection(s) attached: detach it first, or delete with force (the clients are disconnected)", name, attached)
		}
	}
	if err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdRemoveVolume, Name: name}); err != nil {
		return catalogError(err)
	}
	return nil
}
