package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tandem-project/tandem/agent"
	"github.com/tandem-project/tandem/internal/tlsfiles"
	"github.com/tandem-project/tandem/raftlog/mux"
	"github.com/tandem-project/tandem/volume"
)

func newAgentCmd(g *globalFlags) *cobra.Command {
	cfg := agent.DefaultConfig()
	var vols, peers []string
	var tlsFlags tlsOptions
	peerTLS := tlsFiles{prefix: "peer-tls"}
	adminTLS := tlsFiles{prefix: "admin-tls"}
	var cl clusterFlags
	var configPath, checkpointBytes, diskReserve string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the Tandem agent of this host",
		Long: `Run the Tandem agent of this host. A volume is a replicated log (or a
local volume, below): a write is acknowledged once it is durable on a
majority of the volume's replicas. Every agent serves every volume over
NBD; an agent that does not lead a volume forwards its I/O to the one that
does, and re-sends requests in flight when the leader changes.

Cluster mode (--control-voters): the agents find each other by gossip
(--join), keep a replicated catalog of hosts and volumes, and open the
replicas the catalog places on them; volumes are created, grown and deleted
with "tandem volume ..." through the admin API (--admin-listen, token from
--admin-token-file). Gossip is encrypted with the key in --gossip-key-file
(base64 of 16, 24 or 32 bytes: head -c 32 /dev/urandom | base64).

Fixed mode (no --control-voters): without --peer the agent is a single
host and each volume has one replica. For a fixed cluster, start one agent
per host with the same --peer list (every host, this one included) and the
same --volume list:

  --peer NAME,raft=HOST:PORT,nbd=HOST:PORT

Each --volume is NAME=SIZE[,ro][,replicas=H1+H2+H3][,leader=H]: replicas
names the hosts holding it (default: every peer), leader the host that
should lead it while healthy. A volume's replica files live under
--data/groups/NAME and are created on first use; a read-only volume must
already exist. One agent at a time may use a data directory.

NAME=SIZE[,ro],local is a local volume: the sparse file --data/local/NAME.img
served as it is, with no write log and no replicas. Its writes are durable
once the client sends FLUSH or FUA (like nbdkit's file plugin or qemu-nbd
with a writeback cache): a crash loses the writes since the last FLUSH,
and losing the host loses the volume. For scratch disks.

TLS: --peer-tls-cert/--peer-tls-key/--peer-tls-ca make the replication
port (raft, volume copies, I/O forwarded between agents) and live-migration
streams mutual TLS between the hosts; --admin-tls-* make the admin API
HTTPS; --tls-* put NBD clients behind TLS. Every certificate file is read
again when it changes: renewing needs no restart (deploy/README.md).

--config FILE reads the flags from a YAML file, one key per flag named
like the flag ("raft-listen: 10.0.0.1:10810"), lists for the repeatable
ones ("join: [10.0.0.2:7946]"); flags given on the command line override
the file. deploy/config/ has the files of a 3-host cluster.

SIGINT or SIGTERM stop the agent: requests in flight finish, replicas are
closed cleanly.`,
		Example: `  # host n1 of a cluster, every flag in a file (deploy/config/n1.yaml)
  tandem agent --config /etc/tandem/agent.yaml

  # the same with more logging: the command line overrides the file
  tandem agent --config /etc/tandem/agent.yaml --log-level debug

  # host n1 of a cluster (same on n2, n3 with their own --name and addresses)
  tandem agent --name n1 --data /var/lib/tandem --raft-listen 10.0.0.1:10810 \
    --nbd-listen 10.0.0.1:10809 --admin-listen 10.0.0.1:7480 \
    --gossip-listen 10.0.0.1:7946 --join 10.0.0.2:7946,10.0.0.3:7946 \
    --gossip-key-file /etc/tandem/gossip.key --admin-token-file /etc/tandem/admin-token \
    --control-voters n1,n2,n3

  # a single host
  tandem agent --data /var/lib/tandem --volume vm1=20G

  # a single host with a local scratch volume beside it
  tandem agent --data /var/lib/tandem --volume vm1=20G --volume scratch=50G,local

  # host n1 of three (run the same on n2 and n3 with their --name and --raft-listen)
  tandem agent --name n1 --data /var/lib/tandem --raft-listen 10.0.0.1:10810 \
    --nbd-listen 0.0.0.0:10809 \
    --peer n1,raft=10.0.0.1:10810,nbd=10.0.0.1:10809 \
    --peer n2,raft=10.0.0.2:10810,nbd=10.0.0.2:10809 \
    --peer n3,raft=10.0.0.3:10810,nbd=10.0.0.3:10809 \
    --volume vm1=20G,leader=n1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := loadAgentConfig(cmd, configPath, g); err != nil {
				return err
			}
			log, err := stderrLogger(g)
			if err != nil {
				return err
			}
			for _, p := range peers {
				peer, err := parsePeerFlag(p)
				if err != nil {
					return err
				}
				cfg.Peers = append(cfg.Peers, peer)
			}
			for _, v := range vols {
				spec, local, err := parseVolumeFlag(v)
				if err != nil {
					return err
				}
				if local {
					cfg.LocalVolumes = append(cfg.LocalVolumes, agent.LocalVolumeSpec{Name: spec.Name, Size: spec.Size, ReadOnly: spec.ReadOnly})
					continue
				}
				cfg.Volumes = append(cfg.Volumes, spec)
			}
			cfg.Certificates = map[string]*tlsfiles.Identity{}
			if cfg.NBD.TLS, cfg.Certificates["nbd"], err = tlsFlags.config(log); err != nil {
				return err
			}
			cfg.NBD.TLSRequired = tlsFlags.required
			if cfg.Replication.PeerTLS, err = peerTLSConfig(&peerTLS); err != nil {
				return err
			}
			if cfg.Replication.PeerTLS != nil && cfg.RaftAddr == "" {
				return errors.New("--peer-tls-cert protects the replication port: it needs --raft-listen")
			}
			if cfg.Cluster, err = cl.config(); err != nil {
				return err
			}
			if cfg.AdminTLS, cfg.AdminPeerTLS, cfg.Certificates["admin"], err = adminTLSConfig(&adminTLS, cfg.Cluster != nil, log); err != nil {
				return err
			}
			cfg.Certificates["peer"] = cfg.Replication.PeerTLS
			maps.DeleteFunc(cfg.Certificates, func(_ string, id *tlsfiles.Identity) bool { return id == nil })
			if cfg.AdminTLS != nil && cfg.AdminAddr == "" {
				return errors.New("--admin-tls-cert protects the admin API: it needs --admin-listen")
			}
			if diskReserve != "" {
				n, err := volume.ParseSize(diskReserve)
				if err != nil {
					return fmt.Errorf("--disk-reserve: %w", err)
				}
				cfg.Replication.DiskReserve = n
			}
			if checkpointBytes != "" {
				n, err := volume.ParseSize(checkpointBytes)
				if err != nil {
					return fmt.Errorf("--checkpoint-bytes: %w", err)
				}
				cfg.Replication.SnapshotBytes = n
			}
			// The election and leader-lease timeouts follow the heartbeat.
			r := &cfg.Replication
			r.ElectionTimeout, r.LeaderLeaseTimeout = r.HeartbeatTimeout, r.HeartbeatTimeout/2
			cfg.Logger = log
			cfg.Version = versionString()
			return agent.Run(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, configFlag, "", "YAML file of agent flags, keys named like the flags (the command line overrides it)")
	f.StringVar(&cfg.Name, "name", cfg.Name, "this host's name in the cluster")
	f.StringVar(&cfg.DataDir, "data", "", "data directory (required)")
	f.StringVar(&cfg.RaftAddr, "raft-listen", "", "replication address of this host (required with --peer)")
	f.StringArrayVar(&peers, "peer", nil, "a host of the cluster, NAME,raft=ADDR[,nbd=ADDR] (repeatable; list every host; nbd=, its NBD address, only fills in the volume URIs the admin API shows)")
	f.StringVar(&cfg.NBDAddr, "nbd-listen", cfg.NBDAddr, `TCP address for NBD ("" to disable)`)
	f.StringVar(&cfg.NBDSocket, "nbd-socket", "", "unix socket path for NBD")
	f.StringVar(&cfg.AdminAddr, "admin-listen", "", `address of the admin HTTP endpoint: /healthz, /readyz, /metrics, /v1/ ("" for none)`)
	f.StringArrayVar(&vols, "volume", nil, "volume to serve, NAME=SIZE[,ro][,replicas=H1+H2][,leader=H], or NAME=SIZE[,ro],local for a local volume (repeatable)")
	f.StringVar(&cfg.DefaultExport, "default-export", "", "volume served to clients asking for the empty export name")
	f.IntVar(&cfg.NBD.MaxInflight, "nbd-max-inflight", cfg.NBD.MaxInflight, "requests served at once per NBD connection")
	tlsFlags.register(f)
	peerTLS.register(f, "PEM certificate of this host on the replication port, naming its --raft-listen address; enables mutual TLS there (every host needs it)",
		"PEM CA bundle that signed every host's --peer-tls-cert",
		"PEM revocation list of --peer-tls-ca: refuse hosts whose certificate it lists (also in live-migration streams)")
	adminTLS.register(f, "PEM certificate of the admin API, naming its --admin-listen address; makes it HTTPS only",
		"cluster mode: PEM CA bundle that signed every agent's --admin-tls-cert, for the agents' calls to each other",
		"cluster mode: PEM revocation list of --admin-tls-ca: the agents' calls to each other refuse admin APIs whose certificate it lists")
	cl.register(f)
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "how long shutdown waits for requests in flight")
	f.DurationVar(&cfg.ReplicaRetry, "replica-retry", cfg.ReplicaRetry, "how long after a replica, or this agent's control-plane member, failed (a disk error, a full disk) the agent opens it again, doubling while it fails again, up to 30m; one that failed for a full disk also as soon as the disk has room (0: only at a restart)")
	f.DurationVar(&cfg.Replication.HeartbeatTimeout, "heartbeat-timeout", cfg.Replication.HeartbeatTimeout, "how long followers wait for a silent leader before electing another")
	f.DurationVar(&cfg.Replication.StallTimeout, "stall-timeout", cfg.Replication.StallTimeout, "how long I/O waits for a leader before failing with EIO")
	f.DurationVar(&cfg.Replication.SnapshotInterval, "checkpoint-interval", cfg.Replication.SnapshotInterval, "how often a volume checkpoints (syncs its file and lets the log be trimmed)")
	f.Uint64Var(&cfg.Replication.SnapshotThreshold, "checkpoint-entries", cfg.Replication.SnapshotThreshold, "log entries between checkpoints")
	f.StringVar(&diskReserve, "disk-reserve", volume.FormatSize(cfg.Replication.DiskReserve), "free space of the data directory's file system that volume data and logs leave to the metadata: a replica that would write into it fails instead (0 for none)")
	f.StringVar(&checkpointBytes, "checkpoint-bytes", volume.FormatSize(cfg.Replication.SnapshotBytes), "bytes written to a volume after which it checkpoints at once (0 for never)")
	f.Uint64Var(&cfg.Replication.TrailingLogs, "trailing-entries", cfg.Replication.TrailingLogs, "log entries kept after a checkpoint for replicas that fall behind")
	return cmd
}

// parseVolumeFlag parses NAME=SIZE[,ro][,replicas=A+B][,leader=A] and
// NAME=SIZE[,ro],local (a local volume: local is true).
func parseVolumeFlag(s string) (spec agent.VolumeSpec, local bool, err error) {
	const want = "NAME=SIZE[,ro][,replicas=H1+H2][,leader=H] or NAME=SIZE[,ro],local"
	name, rest, ok := strings.Cut(s, "=")
	if !ok {
		return agent.VolumeSpec{}, false, fmt.Errorf("--volume %q: want %s", s, want)
	}
	if err := volume.ValidateName(name); err != nil {
		return agent.VolumeSpec{}, false, fmt.Errorf("--volume %q: %w", s, err)
	}
	parts := strings.Split(rest, ",")
	size, err := volume.ParseSize(parts[0])
	if err != nil {
		return agent.VolumeSpec{}, false, fmt.Errorf("--volume %q: %w", s, err)
	}
	spec = agent.VolumeSpec{Name: name, Size: size}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		switch {
		case p == "ro":
			spec.ReadOnly = true
		case p == "local":
			local = true
		case k == "replicas" && v != "":
			spec.Replicas = strings.Split(v, "+")
		case k == "leader" && v != "":
			spec.PreferredLeader = v
		default:
			return agent.VolumeSpec{}, false, fmt.Errorf("--volume %q: unknown option %q (known: ro, replicas=H1+H2, leader=H, local)", s, p)
		}
	}
	if local && (len(spec.Replicas) > 0 || spec.PreferredLeader != "") {
		return agent.VolumeSpec{}, false, fmt.Errorf("--volume %q: a local volume has no replicas and no leader", s)
	}
	return spec, local, nil
}

// parsePeerFlag parses NAME,raft=ADDR[,nbd=ADDR].
func parsePeerFlag(s string) (agent.Peer, error) {
	parts := strings.Split(s, ",")
	p := agent.Peer{ID: parts[0]}
	for _, kv := range parts[1:] {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "raft":
			p.Raft = v
		case "nbd":
			p.NBD = v
		default:
			return agent.Peer{}, fmt.Errorf("--peer %q: unknown field %q (want NAME,raft=ADDR[,nbd=ADDR])", s, k)
		}
	}
	if p.ID == "" || p.Raft == "" {
		return agent.Peer{}, fmt.Errorf("--peer %q: want NAME,raft=ADDR[,nbd=ADDR]", s)
	}
	return p, nil
}

// loadRevocations reads the PEM revocation list that flag names, issued by
// a CA of the bundle at caPath; nil for none.
func loadRevocations(flag, path, caPath string) (*tlsfiles.Revocations, error) {
	if path == "" {
		return nil, nil
	}
	rev, err := tlsfiles.LoadRevocations(path, caPath)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	return rev, nil
}

// loadCAPool reads the PEM CA bundle that flag names.
func loadCAPool(flag, path string) (*x509.CertPool, error) {
	pool, err := tlsfiles.LoadCAPool(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	return pool, nil
}

// tlsOptions are the NBD TLS flags.
type tlsOptions struct {
	cert, key, clientCA, clientCRL string
	required                       bool
}

func (o *tlsOptions) register(f *pflag.FlagSet) {
	f.StringVar(&o.cert, "tls-cert", "", "PEM certificate for NBD over TLS (STARTTLS); enables TLS (this and the other TLS files are read again when they change)")
	f.StringVar(&o.key, "tls-key", "", "PEM private key of --tls-cert")
	f.StringVar(&o.clientCA, "tls-client-ca", "", "PEM CA bundle: require NBD clients to present a certificate it signed")
	f.StringVar(&o.clientCRL, "tls-client-crl", "", "PEM revocation list of --tls-client-ca: refuse NBD clients whose certificate it lists")
	f.BoolVar(&o.required, "tls-required", false, "refuse NBD clients that do not upgrade to TLS")
}

// config builds the server TLS configuration and returns it with its
// identity, or nils without --tls-cert. The certificate and client CA
// follow their files (tlsfiles).
func (o *tlsOptions) config(log *slog.Logger) (*tls.Config, *tlsfiles.Identity, error) {
	if o.cert == "" && o.key == "" {
		if o.required || o.clientCA != "" || o.clientCRL != "" {
			return nil, nil, errors.New("--tls-required, --tls-client-ca and --tls-client-crl need --tls-cert and --tls-key")
		}
		return nil, nil, nil
	}
	if o.clientCRL != "" && o.clientCA == "" {
		return nil, nil, errors.New("--tls-client-crl needs --tls-client-ca, the CA that issued it")
	}
	if o.cert == "" || o.key == "" {
		return nil, nil, errors.New("--tls-cert and --tls-key go together")
	}
	pair, err := tls.LoadX509KeyPair(o.cert, o.key)
	if err != nil {
		return nil, nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	id := &tlsfiles.Identity{Cert: pair, Files: &tlsfiles.Files{Cert: o.cert, Key: o.key, CA: o.clientCA, CRL: o.clientCRL}}
	if o.clientCA != "" {
		if id.CA, err = loadCAPool("--tls-client-ca", o.clientCA); err != nil {
			return nil, nil, err
		}
	}
	if id.Revoked, err = loadRevocations("--tls-client-crl", o.clientCRL, o.clientCA); err != nil {
		return nil, nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cert, ca := id.Current(log)
		c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, VerifyConnection: id.VerifyConnection}
		if ca != nil {
			c.ClientCAs, c.ClientAuth = ca, tls.RequireAndVerifyClientCert
		}
		return c, nil
	}}, id, nil
}

// tlsFiles are the flags --PREFIX-cert, --PREFIX-key, --PREFIX-ca and
// --PREFIX-crl: a certificate, its key, a CA bundle and a revocation list
// of that CA, as PEM files.
type tlsFiles struct {
	prefix             string
	cert, key, ca, crl string
}

func (o *tlsFiles) register(f *pflag.FlagSet, certHelp, caHelp, crlHelp string) {
	f.StringVar(&o.cert, o.prefix+"-cert", "", certHelp)
	f.StringVar(&o.key, o.prefix+"-key", "", "PEM private key of --"+o.prefix+"-cert")
	f.StringVar(&o.ca, o.prefix+"-ca", "", caHelp)
	f.StringVar(&o.crl, o.prefix+"-crl", "", crlHelp)
}

// files are the identity's files, for tlsfiles.
func (o *tlsFiles) files() *tlsfiles.Files {
	return &tlsfiles.Files{Cert: o.cert, Key: o.key, CA: o.ca, CRL: o.crl}
}

// revocations loads --PREFIX-crl (nil without it, which needs
// --PREFIX-ca, its issuer).
func (o *tlsFiles) revocations() (*tlsfiles.Revocations, error) {
	if o.crl != "" && o.ca == "" {
		return nil, fmt.Errorf("%s needs %s, the CA that issued it", o.flag("crl"), o.flag("ca"))
	}
	return loadRevocations(o.flag("crl"), o.crl, o.ca)
}

// flag names one of the flags, e.g. flag("ca").
func (o *tlsFiles) flag(which string) string { return "--" + o.prefix + "-" + which }

// keyPair loads the certificate and its key.
func (o *tlsFiles) keyPair() (tls.Certificate, error) {
	pair, err := tls.LoadX509KeyPair(o.cert, o.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s/%s: %w", o.flag("cert"), o.flag("key"), err)
	}
	return pair, nil
}

// peerTLSConfig loads the host's identity on the replication port (mutual
// TLS between the hosts), or nil without the flags.
func peerTLSConfig(o *tlsFiles) (*mux.TLS, error) {
	if o.cert == "" && o.key == "" && o.ca == "" && o.crl == "" {
		return nil, nil
	}
	if o.cert == "" || o.key == "" || o.ca == "" {
		return nil, fmt.Errorf("%s, %s and %s go together", o.flag("cert"), o.flag("key"), o.flag("ca"))
	}
	pair, err := o.keyPair()
	if err != nil {
		return nil, err
	}
	pool, err := loadCAPool(o.flag("ca"), o.ca)
	if err != nil {
		return nil, err
	}
	rev, err := o.revocations()
	if err != nil {
		return nil, err
	}
	return &mux.TLS{Cert: pair, CA: pool, Revoked: rev, Files: o.files()}, nil
}

// adminTLSConfig returns the admin API's server configuration and the
// source of the client configuration of calls to the other agents' admin
// APIs (nil, nil without the flags). Both follow their files (tlsfiles).
func adminTLSConfig(o *tlsFiles, cluster bool, log *slog.Logger) (server *tls.Config, peers func() *tls.Config, id *tlsfiles.Identity, err error) {
	switch {
	case o.cert == "" && o.key == "" && o.ca == "" && o.crl == "":
		return nil, nil, nil, nil
	case o.cert == "" || o.key == "":
		return nil, nil, nil, fmt.Errorf("%s and %s go together", o.flag("cert"), o.flag("key"))
	case cluster && o.ca == "":
		return nil, nil, nil, fmt.Errorf("%s in cluster mode needs %s: the agents call each other's admin APIs", o.flag("cert"), o.flag("ca"))
	case !cluster && o.ca != "":
		return nil, nil, nil, fmt.Errorf("%s is for cluster mode (--control-voters), where the agents call each other's admin APIs", o.flag("ca"))
	}
	pair, err := o.keyPair()
	if err != nil {
		return nil, nil, nil, err
	}
	id = &tlsfiles.Identity{Cert: pair, Files: o.files()}
	if id.Revoked, err = o.revocations(); err != nil {
		return nil, nil, nil, err
	}
	server = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		cert, _ := id.Current(log)
		return &cert, nil
	}}
	if o.ca != "" {
		if id.CA, err = loadCAPool(o.flag("ca"), o.ca); err != nil {
			return nil, nil, nil, err
		}
		peers = func() *tls.Config {
			_, ca := id.Current(log)
			return &tls.Config{RootCAs: ca, MinVersion: tls.VersionTLS12, VerifyConnection: id.VerifyConnection}
		}
	}
	return server, peers, id, nil
}

// clusterFlags are the flags of cluster mode.
type clusterFlags struct {
	voters, join             []string
	gossip, keyFile          string
	insecure, fast           bool
	capacity                 string
	token, tokenFile, volume string
	healAfter                time.Duration
	verifyEvery              time.Duration
	verifyRate               string
}

func (c *clusterFlags) register(f *pflag.FlagSet) {
	f.StringSliceVar(&c.voters, "control-voters", nil, "cluster mode: names of the 1, 3 or 5 agents that vote in the control plane (the same list on every agent)")
	f.StringSliceVar(&c.join, "join", nil, "cluster mode: gossip addresses of other agents to join (retried until one answers)")
	f.StringVar(&c.gossip, "gossip-listen", "", "cluster mode: gossip address (TCP and UDP), e.g. 10.0.0.1:7946")
	f.StringVar(&c.keyFile, "gossip-key-file", "", "cluster mode: file holding the gossip encryption key (base64 of 16, 24 or 32 bytes)")
	f.BoolVar(&c.insecure, "insecure-gossip", false, "cluster mode: gossip unencrypted (loopback tests only)")
	f.BoolVar(&c.fast, "fast-gossip", false, "cluster mode: detect failures within about a second (loopback clusters)")
	f.StringVar(&c.capacity, "capacity", "", "cluster mode: bytes offered for volume replicas, e.g. 500G (default: the data filesystem's size)")
	f.DurationVar(&c.healAfter, "heal-after", 10*time.Minute, "cluster mode: how long a host stays failed, or a replica out of service after a disk failure, before the replicas are rebuilt on other hosts (0: never; the control leader's setting applies)")
	f.DurationVar(&c.verifyEvery, "verify-every", 7*24*time.Hour, "cluster mode: how often each volume's replicas are compared with the leader's, range by range (tandem volume verify), one volume at a time (0: never; the control leader's setting applies)")
	f.StringVar(&c.verifyRate, "verify-max-rate", "64M", "cluster mode: how fast a scheduled verification reads each replica, in bytes per second (0: no limit)")
	f.StringVar(&c.token, "admin-token", "", "cluster mode: token required by state-changing admin requests (prefer --admin-token-file)")
	f.StringVar(&c.tokenFile, "admin-token-file", "", "cluster mode: file holding the admin token")
	f.StringVar(&c.volume, "initial-volume", "", "cluster mode: volume NAME=SIZE the control leader creates if it does not exist")
	_ = f.MarkHidden("fast-gossip")
}

// config returns the cluster configuration, or nil without --control-voters.
func (c *clusterFlags) config() (*agent.ClusterConfig, error) {
	if len(c.voters) == 0 {
		if len(c.join) > 0 || c.gossip != "" || c.keyFile != "" || c.tokenFile != "" || c.token != "" {
			return nil, errors.New("--join, --gossip-listen, --gossip-key-file and --admin-token[-file] belong to cluster mode: add --control-voters")
		}
		return nil, nil
	}
	cc := &agent.ClusterConfig{GossipAddr: c.gossip, Join: c.join, InsecureGossip: c.insecure, FastGossip: c.fast, ControlVoters: c.voters, HealAfter: c.healAfter,
		VerifyEvery: c.verifyEvery}
	if c.verifyRate != "0" {
		n, err := volume.ParseSize(c.verifyRate)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("--verify-max-rate %q: want bytes per second such as 64M, or 0 for no limit", c.verifyRate)
		}
		cc.VerifyRate = n
	}
	if c.capacity != "" {
		n, err := volume.ParseSize(c.capacity)
		if err != nil {
			return nil, fmt.Errorf("--capacity: %w", err)
		}
		cc.Capacity = n
	}
	if c.keyFile != "" {
		b, err := os.ReadFile(c.keyFile)
		if err != nil {
			return nil, fmt.Errorf("--gossip-key-file: %w", err)
		}
		if cc.GossipKey, err = base64.StdEncoding.DecodeString(strings.TrimSpace(string(b))); err != nil {
			return nil, fmt.Errorf("--gossip-key-file %s: not base64: %w", c.keyFile, err)
		}
	}
	switch {
	case c.token != "" && c.tokenFile != "":
		return nil, errors.New("--admin-token and --admin-token-file: give one")
	case c.tokenFile != "":
		b, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--admin-token-file: %w", err)
		}
		cc.AdminToken = strings.TrimSpace(string(b))
		if cc.AdminToken == "" {
			return nil, fmt.Errorf("--admin-token-file %s is empty", c.tokenFile)
		}
	default:
		cc.AdminToken = c.token
	}
	if c.volume != "" {
		spec, local, err := parseVolumeFlag(c.volume)
		if err != nil {
			return nil, fmt.Errorf("--initial-volume: %w", err)
		}
		if local {
			return nil, fmt.Errorf("--initial-volume %q: the catalog holds replicated volumes only (local volumes are for fixed mode)", c.volume)
		}
		cc.InitialVolumes = []agent.InitialVolume{{Name: spec.Name, Size: spec.Size, PreferredLeader: spec.PreferredLeader, Replicas: len(spec.Replicas)}}
	}
	return cc, nil
}
