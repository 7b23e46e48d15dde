// Package agent runs the Tandem agent of one host: it opens the host's
// replicas of the volumes (raftlog) and its local volumes (files served as
// they are), serves every volume as an NBD export on
// TCP and unix-socket listeners, and shuts down cleanly when its context
// ends.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/tlsfiles"
	"github.com/tandem-project/tandem/metrics"
	"github.com/tandem-project/tandem/nbd"
	"github.com/tandem-project/tandem/raftlog"
	"github.com/tandem-project/tandem/volume"
)

// VolumeSpec declares one volume served by the agent.
type VolumeSpec = raftlog.VolumeSpec

// Peer is one host of the cluster.
type Peer = raftlog.Peer

// Config is the configuration of one agent.
type Config struct {
	// Name is this host's name in the cluster (its raft server ID).
	Name string
	// DataDir holds the host's state: meta/, groups/<volume>/ and the lock.
	DataDir string
	// RaftAddr is the replication address (one port for every volume).
	// Empty runs a single host: every volume has one replica, no network.
	RaftAddr string
	// Peers lists every host of the cluster, this one included (empty on a
	// single host).
	Peers []Peer
	// NBDAddr is the TCP address of the NBD listener ("" for none).
	NBDAddr string
	// NBDSocket is the path of a unix-socket NBD listener ("" for none).
	NBDSocket string
	// Volumes lists the volumes to serve.
	Volumes []VolumeSpec
	// LocalVolumes lists the local (not replicated) volumes to serve.
	LocalVolumes []LocalVolumeSpec
	// DefaultExport is served to clients that ask for the empty export name.
	DefaultExport string
	// NBD tunes the NBD server.
	NBD nbd.Config
	// AdminAddr is the address of the admin HTTP endpoint (health,
	// metrics, /v1/ API); "" for none.
	AdminAddr string
	// AdminTLS, if set, makes the admin endpoint HTTPS only.
	AdminTLS *tls.Config
	// AdminPeerTLS, if set, returns the client configuration with which
	// this agent reaches the other agents' admin APIs over HTTPS (RootCAs:
	// the CA of their certificates), asked for every new connection;
	// without it, over plain HTTP.
	AdminPeerTLS func() *tls.Config
	// Certificates are the TLS identities in use, by role ("peer",
	// "admin", "nbd"), whose expiry the metrics report.
	Certificates map[string]*tlsfiles.Identity
	// Version is reported by the admin API.
	Version string
	// Replication tunes the replication layer; its ID, DataDir, RaftAddr,
	// Peers and Logger are filled in from the fields above.
	Replication raftlog.Config
	// ShutdownTimeout bounds the wait for requests in flight at shutdown.
	ShutdownTimeout time.Duration
	// ReplicaRetry is how long after a replica or the agent's control-plane
	// member failed (its disk) the agent opens it again, doubling while it
	// fails again, and for a full disk also as soon as the disk has room
	// (reopen.go, control.Config.Retry); 0 leaves it out until the agent
	// restarts.
	ReplicaRetry time.Duration
	// Logger receives the agent's logs. Nil discards.
	Logger *slog.Logger
	// Ready, if set, is called once every listener accepts connections.
	Ready func(Listening)
	// Cluster, if set, runs the agent as a member of a catalog-managed
	// cluster (see ClusterConfig); Peers and Volumes must then be empty.
	Cluster *ClusterConfig
}

// Listening reports where a running agent accepts connections.
type Listening struct {
	NBDAddr   net.Addr // nil without a TCP listener
	NBDSocket string   // "" without a unix listener
	RaftAddr  string   // "" on a single host
	AdminAddr net.Addr // nil without an admin endpoint
}

// DefaultConfig returns an agent configuration for a single host named
// "local" with the NBD port 10809 on loopback and no volumes.
func DefaultConfig() Config {
	return Config{
		Name:            "local",
		NBDAddr:         "127.0.0.1:10809",
		NBD:             nbd.DefaultConfig(),
		Replication:     raftlog.DefaultConfig(),
		ShutdownTimeout: 10 * time.Second,
		ReplicaRetry:    time.Minute,
	}
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("agent: data directory is required")
	}
	if c.NBDAddr == "" && c.NBDSocket == "" {
		return errors.New("agent: no NBD listener: set a TCP address or a unix socket")
	}
	if c.Cluster != nil {
		if err := c.Cluster.Validate(); err != nil {
			return err
		}
		switch {
		case len(c.Volumes) > 0 || len(c.LocalVolumes) > 0 || len(c.Peers) > 0:
			return errors.New("agent: in cluster mode the catalog holds the volumes and membership finds the peers: drop --volume and --peer")
		case c.RaftAddr == "":
			return errors.New("agent: cluster mode needs a replication address (--raft-listen)")
		case c.AdminAddr == "":
			return errors.New("agent: cluster mode needs the admin endpoint (--admin-listen)")
		}
	} else if len(c.Volumes) == 0 && len(c.LocalVolumes) == 0 {
		return errors.New("agent: no volumes to serve")
	}
	if len(c.Peers) > 0 && c.RaftAddr == "" {
		return errors.New("agent: peers are set but the replication address is not")
	}
	if c.Cluster == nil && len(c.Peers) == 0 && c.RaftAddr != "" {
		return errors.New("agent: a replication address (--raft-listen) but no hosts to replicate with: list every host with --peer (fixed mode), or use --control-voters (cluster mode)")
	}
	seen := map[string]bool{}
	declare := func(kind, name string, size int64) error {
		if err := volume.ValidateName(name); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		if seen[name] {
			return fmt.Errorf("agent: volume %q declared twice", name)
		}
		seen[name] = true
		if size <= 0 {
			return fmt.Errorf("agent: %s %q: size must be positive, got %d", kind, name, size)
		}
		return nil
	}
	for _, v := range c.Volumes {
		if err := declare("volume", v.Name, v.Size); err != nil {
			return err
		}
	}
	for _, v := range c.LocalVolumes {
		if err := declare("local volume", v.Name, v.Size); err != nil {
			return err
		}
	}
	if c.DefaultExport != "" && !seen[c.DefaultExport] && c.Cluster == nil {
		return fmt.Errorf("agent: default export %q is not a declared volume", c.DefaultExport)
	}
	if c.ShutdownTimeout <= 0 {
		return fmt.Errorf("agent: shutdown timeout must be positive, got %v", c.ShutdownTimeout)
	}
	if c.ReplicaRetry < 0 {
		return fmt.Errorf("agent: replica retry must not be negative, got %v", c.ReplicaRetry)
	}
	if err := c.replication().Validate(); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return c.NBD.Validate()
}

func (c Config) replication() raftlog.Config {
	r := c.Replication
	r.ID, r.DataDir, r.RaftAddr, r.Peers, r.Logger = c.Name, c.DataDir, c.RaftAddr, c.Peers, c.Logger
	return r
}

// lockDataDir takes an exclusive lock on dir for the life of the agent, so
// that two agents never serve (and write) the same volume files. The lock is
// released by the kernel if the agent dies.
func lockDataDir(dir string) (unlock func(), err error) {
	path := filepath.Join(dir, "agent.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		owner, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("agent: data directory %s is in use by another agent (pid %s)", dir, strings.TrimSpace(string(owner)))
		}
		return nil, fmt.Errorf("agent: locking %s: %w", path, err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() { f.Close() }, nil
}

// Run serves the configured volumes until ctx ends, then stops accepting,
// lets requests in flight finish (up to ShutdownTimeout) and closes the
// replicas.
func Run(ctx context.Context, cfg Config) (err error) {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
		cfg.Logger = log
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	unlock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	defer unlock()

	for _, v := range cfg.Volumes {
		dir := filepath.Join(cfg.DataDir, "groups", v.Name)
		if _, err := os.Stat(dir); v.ReadOnly && errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("agent: volume %s is declared read-only but %s does not exist: serve it writable first, or check --data", v.Name, dir)
		}
	}

	if err := checkKinds(cfg.DataDir, cfg.Volumes, cfg.LocalVolumes); err != nil {
		return err
	}

	mets := metrics.New()
	for role, id := range cfg.Certificates {
		mets.WatchCertificate(role, id.NotAfter)
	}
	rcfg := cfg.replication()
	rcfg.ObserveCommit = mets.ObserveCommit
	host, err := raftlog.OpenHost(rcfg)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer func() {
		if cerr := host.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("agent: closing replicas: %w", cerr)
		}
	}()
	exps := newExportSet(cfg.DefaultExport)
	var locals []raftlog.VolumeStatus // filled below; read by the admin API
	cfg.Volumes = slices.Clone(cfg.Volumes)
	for i := range cfg.Volumes {
		// No catalog records which replicas existed: a replica without
		// state asks the other hosts before it bootstraps (a lost
		// replica joins again as a new one instead).
		cfg.Volumes[i].AskPeers = true
		spec := cfg.Volumes[i]
		v, err := host.OpenVolumeContext(ctx, spec)
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		exps.add(v)
		log.Info("volume ready", "name", spec.Name, "size", volume.FormatSize(spec.Size), "read_only", spec.ReadOnly)
	}
	for _, spec := range cfg.LocalVolumes {
		f, oerr := openLocal(cfg.DataDir, spec)
		if oerr != nil {
			return oerr
		}
		defer func() {
			if cerr := f.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("agent: closing local volume %s: %w", spec.Name, cerr)
			}
		}()
		exps.addLocal(spec.Name, f)
		locals = append(locals, raftlog.VolumeStatus{Name: spec.Name, Size: f.Size(), ReadOnly: spec.ReadOnly, State: "Local", Serving: true})
		log.Info("local volume ready (not replicated)", "name", spec.Name, "size", volume.FormatSize(f.Size()), "read_only", spec.ReadOnly)
	}

	var ro *reopener
	if cfg.Cluster == nil && cfg.ReplicaRetry > 0 {
		ro = newReopener(host, exps, log, cfg.ReplicaRetry)
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			ro.watchFixed(cfg.Volumes, stop)
		}()
		defer func() { // before host.Close
			close(stop)
			<-done
		}()
	}
	short := func() bool { return shortOfRoom(host, ro) }
	if cfg.Cluster == nil {
		// No gossip: the hosts ask each other whether their disks are
		// short of space (docs/replication.md, "Replica failure").
		host.ServeShortOfRoom(short)
		host.SetPeerShortOfRoom(host.PeerShortOfRoom)
	}
	mets.WatchHost(host)
	ncfg := cfg.NBD
	ncfg.Logger = log
	ncfg.Observer = mets
	srv := nbd.NewServer(exportView{exps, false}, ncfg)
	// Other agents forward I/O to the volumes led here over the
	// replication port, which has its own protection (mutual TLS or a
	// private network): no NBD TLS there.
	fcfg := ncfg
	fcfg.TLS, fcfg.TLSRequired = nil, false
	fwd := nbd.NewServer(exportView{exps, true}, fcfg)
	host.ServeForwarded(func(c net.Conn) { fwd.ServeConn(c) })

	var lns []net.Listener
	where := Listening{RaftAddr: host.RaftAddr()}
	closeAll := func() {
		for _, l := range lns {
			l.Close()
		}
	}
	if cfg.NBDAddr != "" {
		l, err := net.Listen("tcp", cfg.NBDAddr)
		if err != nil {
			return fmt.Errorf("agent: NBD listener: %w", err)
		}
		lns = append(lns, l)
		where.NBDAddr = l.Addr()
	}
	if cfg.NBDSocket != "" {
		// A socket file left by a killed agent would make Listen fail.
		if fi, err := os.Lstat(cfg.NBDSocket); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(cfg.NBDSocket)
		}
		l, err := net.Listen("unix", cfg.NBDSocket)
		if err != nil {
			closeAll()
			return fmt.Errorf("agent: NBD unix listener: %w", err)
		}
		lns = append(lns, l)
		where.NBDSocket = cfg.NBDSocket
	}

	errc := make(chan error, len(lns)+1)
	if cfg.AdminAddr != "" {
		al, err := net.Listen("tcp", cfg.AdminAddr)
		if err != nil {
			closeAll()
			return fmt.Errorf("agent: admin listener: %w", err)
		}
		where.AdminAddr = al.Addr()
		if cfg.AdminTLS != nil {
			al = tls.NewListener(al, cfg.AdminTLS)
		}
		peers := admin.NewPeers(cfg.AdminPeerTLS)
		acfg := admin.Config{Host: host, Metrics: mets.Handler(), Version: cfg.Version, Logger: log, Self: cfg.Name,
			Local: func() []raftlog.VolumeStatus { return slices.Clone(locals) }, Peers: peers}
		if cfg.Cluster != nil {
			nbdAddr := ""
			if where.NBDAddr != nil {
				nbdAddr = where.NBDAddr.String()
			}
			ca, err := startCluster(cfg, host, srv, fwd, exps, peers, nbdAddr, al.Addr().String())
			if err != nil {
				al.Close()
				closeAll()
				return err
			}
			defer ca.close()
			mets.WatchCluster(ca.view)
			acfg.Cluster, acfg.Token = ca, cfg.Cluster.AdminToken
			short = ca.shortOfRoom
		}
		mets.WatchDisk(func() metrics.DiskView {
			free, reserve, err := host.DiskSpace()
			if err != nil {
				free = -1
			}
			return metrics.DiskView{Free: free, Reserve: reserve, Short: short()}
		})
		hs := &http.Server{
			Handler:           admin.Handler(acfg),
			ReadHeaderTimeout: 10 * time.Second,
		}
		log.Info("serving admin API", "addr", al.Addr().String(), "tls", cfg.AdminTLS != nil)
		go func() {
			if err := hs.Serve(al); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("agent: admin endpoint: %w", err)
			}
		}()
		defer hs.Close()
	}
	for _, l := range lns {
		log.Info("serving NBD", "addr", l.Addr().String())
		go func() { errc <- srv.Serve(l) }()
	}
	if cfg.Ready != nil {
		cfg.Ready(where)
	}

	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-errc:
		log.Error("NBD listener failed", "err", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if serr := srv.Shutdown(sctx); serr != nil && err == nil {
		err = serr
	}
	if serr := fwd.Shutdown(sctx); serr != nil && err == nil {
		err = serr
	}
	if errors.Is(err, nbd.ErrServerClosed) {
		err = nil
	}
	return err
}
