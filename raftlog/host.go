package raftlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-project/tandem/raftlog/meta"
	"github.com/tandem-project/tandem/raftlog/mux"
	"github.com/tandem-project/tandem/raftlog/stablefile"
	"github.com/tandem-project/tandem/volume"
)

// Host is the replication layer of one host: its metadata database, its
// mux port shared by every group, and the groups of the volumes it holds a
// replica of.
type Host struct {
	cfg  Config
	log  *slog.Logger
	meta *meta.DB
	mux  *mux.Listener // nil on a single host without network

	// room keeps volume data and logs out of the disk reserve.
	room *diskRoom
	// peerShort reports whether another host said its disk is short of
	// space (SetPeerShortOfRoom); nil: no host is known to be.
	peerShort atomic.Pointer[func(host string) bool]
	// peerRoom holds what the other hosts answered when asked whether
	// their disks are short of space (PeerShortOfRoom).
	peerRoom peerRoom

	// opened is when the host started: a restarted host must not vote
	// for a HeartbeatTimeout after it (see docs/replication.md, "Reads").
	opened time.Time

	mu     sync.Mutex
	groups map[string]*Group
	// readmit holds the groups other than volumes' whose readmission
	// questions this host answers (ServeReadmit); opening the volumes
	// whose replica is being opened, and whether it holds entries.
	readmit map[string]readmitGroup
	opening map[string]bool
	// down holds the replicas closed after a failure (CloseFailed) and not
	// open again yet, which Statuses reports as failed.
	down map[string]downReplica
	done chan error

	// Op ids: a random base per process and a counter (see Volume.mutate).
	idBase uint64
	idNext atomic.Uint64
}

// newOpID returns an op id unique in the cluster for practical purposes:
// a random 63-bit base per process plus a counter (the top bit stays clear,
// as NBD handles chosen by nbdclient callers must).
func (h *Host) newOpID() uint64 {
	for {
		if id := (h.idBase + h.idNext.Add(1)) &^ (1 << 63); id != 0 {
			return id
		}
	}
}

// OpenHost opens the host's state and starts its mux listener.
func OpenHost(cfg Config) (*Host, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	db, err := meta.Open(filepath.Join(cfg.DataDir, "meta"), log)
	if err != nil {
		return nil, err
	}
	h := &Host{cfg: cfg, log: log, meta: db, groups: map[string]*Group{}, down: map[string]downReplica{}, opened: time.Now(), idBase: rand.Uint64(),
		room: newDiskRoom(cfg.DataDir, cfg.DiskReserve)}
	if cfg.RaftAddr != "" {
		h.mux, err = mux.Listen(cfg.RaftAddr, cfg.PeerTLS, log)
		if err != nil {
			db.Close()
			return nil, err
		}
		h.mux.Handle(mux.KindStream, h.serveStream)
		h.mux.Handle(mux.KindReadmit, func(_ string, c net.Conn) { h.serveReadmit(c) })
		h.done = make(chan error, 1)
		go func() { h.done <- h.mux.Serve() }()
		log.Info("replication listening", "addr", h.mux.Addr().String(), "mutual_tls", cfg.PeerTLS != nil)
	}
	return h, nil
}

// RaftAddr returns the address the host's mux listens on ("" without one).
func (h *Host) RaftAddr() string {
	if h.mux == nil {
		return ""
	}
	return h.mux.Addr().String()
}

// PeerRevoked reports whether the host at replication address addr was
// shut out for a revoked certificate: the last certificate it presented
// to this host, or this host saw at addr, is on the peer CA's revocation
// list (Config.PeerTLS). known is false when this host has seen none of
// its certificates yet, and without TLS.
func (h *Host) PeerRevoked(addr string) (revoked, known bool) {
	if h.cfg.PeerTLS == nil {
		return false, false
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, false
	}
	return h.cfg.PeerTLS.RevokedPeer(host)
}

// Room returns nil if n more bytes fit on the file system of the data
// directory above the disk reserve (Config.DiskReserve), else an error
// wrapping volume.ErrNoSpace that says how much is free. The free space it
// goes by is at most 50 ms old.
func (h *Host) Room(n int64) error { return h.room.check(n) }

// DiskSpace returns the bytes free (to unprivileged users) on the file
// system of the data directory, and the disk reserve volume data and logs
// leave free (Config.DiskReserve).
func (h *Host) DiskSpace() (free, reserve int64, err error) {
	free, err = freeBytes(h.cfg.DataDir)
	if err != nil {
		return 0, h.cfg.DiskReserve, fmt.Errorf("raftlog: free space of %s: %w", h.cfg.DataDir, err)
	}
	return free, h.cfg.DiskReserve, nil
}

// OpenVolume starts this host's replica of a volume and returns the volume
// as a backend.
func (h *Host) OpenVolume(spec VolumeSpec) (*Volume, error) {
	return h.OpenVolumeContext(context.Background(), spec)
}

// OpenVolumeContext is OpenVolume with a context, which bounds the wait of
// a replica without state that asks the other hosts whether its volume
// exists (VolumeSpec.AskPeers).
func (h *Host) OpenVolumeContext(ctx context.Context, spec VolumeSpec) (*Volume, error) {
	if err := volume.ValidateName(spec.Name); err != nil {
		return nil, err
	}
	if spec.Size <= 0 {
		return nil, fmt.Errorf("raftlog: volume %s: size must be positive", spec.Name)
	}
	peers, err := h.replicaPeers(spec)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	if _, ok := h.groups[spec.Name]; ok {
		h.mu.Unlock()
		return nil, fmt.Errorf("raftlog: volume %s is already open", spec.Name)
	}
	h.mu.Unlock()
	g, err := openGroup(ctx, h, spec, groupConfig{
		Local: h.cfg.ID,
		Dir:   filepath.Join(h.cfg.DataDir, "groups", spec.Name),
		Peers: peers,
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		if d, ok := h.down[spec.Name]; ok {
			d.st.Error = fmt.Sprintf("%s; opening it again: %v", d.failure, err)
			h.down[spec.Name] = d
		}
		return nil, err
	}
	h.groups[spec.Name] = g
	delete(h.down, spec.Name)
	return &Volume{g: g}, nil
}

// downReplica is a replica closed after a failure: its last status, and
// the failure.
type downReplica struct {
	st      VolumeStatus
	failure string
}

// CloseFailed closes this host's replica of volume name, which failed
// (Volume.Err), so that it can be opened again (OpenVolume). Until it is,
// Statuses reports it as failed, with its failure and any error opening
// it again.
func (h *Host) CloseFailed(name string) error {
	h.mu.Lock()
	g, ok := h.groups[name]
	h.mu.Unlock()
	if !ok {
		return fmt.Errorf("raftlog: volume %s is not open", name)
	}
	st := (&Volume{g: g}).Status()
	if st.Error == "" {
		st.Error = "closed after a failure"
	}
	st.State, st.Serving, st.Leader, st.LastContact, st.Copy = "Failed", false, "", 0, nil
	err := h.CloseVolume(name, false)
	h.mu.Lock()
	h.down[name] = downReplica{st: st, failure: st.Error}
	h.mu.Unlock()
	return err
}

// replicaPeers resolves spec.Replicas to peers.
func (h *Host) replicaPeers(spec VolumeSpec) ([]Peer, error) {
	if len(spec.Peers) > 0 {
		return h.checkPeers(spec, spec.Peers)
	}
	if len(h.cfg.Peers) == 0 {
		if len(spec.Replicas) > 1 || (len(spec.Replicas) == 1 && spec.Replicas[0] != h.cfg.ID) {
			return nil, fmt.Errorf("raftlog: volume %s: replicas %v on a single host %q", spec.Name, spec.Replicas, h.cfg.ID)
		}
		return []Peer{{ID: h.cfg.ID}}, nil
	}
	ids := spec.Replicas
	if len(ids) == 0 {
		for _, p := range h.cfg.Peers {
			ids = append(ids, p.ID)
		}
	}
	if len(ids) < 1 || len(ids) > 5 {
		return nil, fmt.Errorf("raftlog: volume %s: %d replicas, want 1 to 5", spec.Name, len(ids))
	}
	var out []Peer
	for _, id := range ids {
		i := slices.IndexFunc(h.cfg.Peers, func(p Peer) bool { return p.ID == id })
		if i < 0 {
			return nil, fmt.Errorf("raftlog: volume %s: replica host %q is not a peer", spec.Name, id)
		}
		if slices.ContainsFunc(out, func(p Peer) bool { return p.ID == id }) {
			return nil, fmt.Errorf("raftlog: volume %s: host %q holds two replicas", spec.Name, id)
		}
		out = append(out, h.cfg.Peers[i])
	}
	return h.checkPeers(spec, out)
}

// checkPeers checks the replicas' hosts of a volume.
func (h *Host) checkPeers(spec VolumeSpec, out []Peer) ([]Peer, error) {
	if len(out) > 5 {
		return nil, fmt.Errorf("raftlog: volume %s: %d replicas, want 1 to 5", spec.Name, len(out))
	}
	for i, p := range out {
		if p.ID == "" || (len(out) > 1 && p.Raft == "") {
			return nil, fmt.Errorf("raftlog: volume %s: replica %d has no host name or replication address", spec.Name, i)
		}
		if slices.ContainsFunc(out[:i], func(q Peer) bool { return q.ID == p.ID }) {
			return nil, fmt.Errorf("raftlog: volume %s: host %q holds two replicas", spec.Name, p.ID)
		}
	}
	if len(out) > 1 && h.mux == nil {
		return nil, fmt.Errorf("raftlog: volume %s: %d replicas on a host without a replication address", spec.Name, len(out))
	}
	if !slices.ContainsFunc(out, func(p Peer) bool { return p.ID == h.cfg.ID }) {
		return nil, fmt.Errorf("raftlog: volume %s has no replica on this host %q", spec.Name, h.cfg.ID)
	}
	if spec.PreferredLeader != "" && !slices.ContainsFunc(out, func(p Peer) bool { return p.ID == spec.PreferredLeader }) {
		return nil, fmt.Errorf("raftlog: volume %s: preferred leader %q holds no replica", spec.Name, spec.PreferredLeader)
	}
	return out, nil
}

// CloseVolume stops this host's replica of a volume. With remove, it also
// deletes the replica's files and raft state (the volume was deleted or
// moved away); a later OpenVolume of the same name starts afresh.
//
// A replica closed after a failure and not open again (CloseFailed) is
// forgotten, and with remove its files are deleted too.
func (h *Host) CloseVolume(name string, remove bool) error {
	h.mu.Lock()
	g, ok := h.groups[name]
	delete(h.groups, name)
	_, down := h.down[name]
	delete(h.down, name)
	h.mu.Unlock()
	if !ok && !down {
		return fmt.Errorf("raftlog: volume %s is not open", name)
	}
	var err error
	if ok {
		err = g.close(remove)
	}
	if !remove {
		return err
	}
	dir := filepath.Join(h.cfg.DataDir, "groups", name)
	if rerr := os.RemoveAll(dir); rerr != nil {
		return fmt.Errorf("raftlog: volume %s: removing %s: %w", name, dir, rerr)
	}
	if derr := h.meta.Stable(name).Drop(); derr != nil {
		return fmt.Errorf("raftlog: volume %s: %w", name, derr)
	}
	if derr := h.meta.Delete([]byte(restoreKeyPrefix + name)); derr != nil {
		return fmt.Errorf("raftlog: volume %s: %w", name, derr)
	}
	return nil
}

// dialer returns the dialer of connections to other hosts' mux ports.
func (h *Host) dialer() mux.Dialer {
	if h.mux == nil {
		return mux.Dialer{}
	}
	return h.mux.Dialer()
}

// ServeForwarded makes serve the handler of the NBD connections that other
// hosts' agents open on this host's replication port to forward I/O to
// the volumes this host leads (ForwardPrefix exports). serve owns the
// connection. It does nothing on a host without a replication address.
func (h *Host) ServeForwarded(serve func(c net.Conn)) {
	if h.mux == nil {
		return
	}
	h.mux.Handle(mux.KindNBD, func(_ string, c net.Conn) { serve(c) })
}

// RaftLayer returns the stream layer of a group other than a volume's on
// the host's mux port (the control plane's, named "_control"), or nil on
// a host without a replication address.
func (h *Host) RaftLayer(group string) (*mux.Layer, error) {
	if h.mux == nil {
		return nil, nil
	}
	return h.mux.Layer(group)
}

// Stable returns the raft stable store of a group in the host's metadata
// database.
func (h *Host) Stable(group string) *meta.Stable { return h.meta.Stable(group) }

// OpenStable opens the raft stable store (term and vote) of group in its
// directory dir (stablefile: one in-place write per vote). Versions before
// it kept them in the metadata database under Stable(group); whatever is
// still there is moved into the file first, then deleted. Keys are left
// there only by a version that predates the file, or by a crash between
// the two steps (the same values), so they always win over the file.
func (h *Host) OpenStable(group, dir string) (*stablefile.Store, error) {
	s, err := stablefile.Open(filepath.Join(dir, "stable"))
	if err != nil {
		return nil, fmt.Errorf("raftlog: %s: %w", group, err)
	}
	old := h.meta.Stable(group)
	kv, err := old.All()
	if err == nil && len(kv) > 0 {
		if err = s.SetAll(kv); err == nil {
			err = old.Drop()
		}
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("raftlog: %s: moving the raft term and vote to their file: %w", group, err)
	}
	return s, nil
}

// serveStream answers a catch-up stream request for a volume.
func (h *Host) serveStream(name string, c net.Conn) {
	h.mu.Lock()
	g := h.groups[name]
	h.mu.Unlock()
	if g == nil {
		c.Close()
		return
	}
	if err := serveStream(g, c); err != nil {
		h.log.Warn("volume stream failed", "volume", name, "remote", c.RemoteAddr().String(), "err", err)
	}
}

// Close stops every group, then the listener and the database.
func (h *Host) Close() error {
	h.mu.Lock()
	groups := h.groups
	h.groups = map[string]*Group{}
	h.mu.Unlock()
	var errs []error
	for _, g := range groups {
		if err := g.close(false); err != nil {
			errs = append(errs, fmt.Errorf("volume %s: %w", g.spec.Name, err))
		}
	}
	if h.mux != nil {
		h.mux.Close()
		<-h.done
	}
	if err := h.meta.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
