package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/admin/client"
	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/raftlog/mux"
	"github.com/tandem-project/tandem/vmcoord/qemu"
	"github.com/tandem-project/tandem/vmcoord/vmhost"
	"github.com/tandem-project/tandem/volume"
)

// vmDir is where an agent keeps its VMs' run directories (QMP socket,
// serial log, QEMU's log and pid), under its data directory.
const vmDir = "vms"

// migrationTLSDir is where an agent with mutual TLS between the hosts
// keeps QEMU's credentials for migration streams, under its data
// directory.
const migrationTLSDir = "migration-tls"

// linkMigrationTLS lays out the host's peer certificate, key, CA and CA
// revocation list in dir as QEMU's tls-creds-x509 wants them, as symbolic
// links to the files, so that each migration reads them as they are then
// (renewed certificates and new revocations included). The certificate
// serves both as a destination (server) and as a source (client).
func linkMigrationTLS(dir string, f *mux.TLSFiles) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("agent: migration TLS: %w", err)
	}
	for src, names := range map[string][]string{
		f.CA:   {"ca-cert.pem"},
		f.Cert: {"server-cert.pem", "client-cert.pem"},
		f.Key:  {"server-key.pem", "client-key.pem"},
		f.CRL:  {"ca-crl.pem"}, // none: no link (a previous run's removed)
	} {
		for _, n := range names {
			link := filepath.Join(dir, n)
			if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("agent: migration TLS: %w", err)
			}
			if src == "" {
				continue
			}
			abs, err := filepath.Abs(src)
			if err != nil {
				return fmt.Errorf("agent: migration TLS: %w", err)
			}
			if err := os.Symlink(abs, link); err != nil {
				return fmt.Errorf("agent: migration TLS: %w", err)
			}
		}
	}
	return nil
}

// startVMs starts the VM runtime. QEMUs a previous run of this agent left
// are adopted or killed once the catalog is current (see reconcile).
func (a *clusterAgent) startVMs() error {
	dir := filepath.Join(a.cfg.DataDir, vmDir)
	migHost, _, err := net.SplitHostPort(a.host.RaftAddr())
	if err != nil {
		return fmt.Errorf("agent: the raft address %q: %w", a.host.RaftAddr(), err)
	}
	opts := qemu.Options{Logger: a.log}
	if t := a.cfg.Replication.PeerTLS; t != nil && t.Files != nil {
		opts.MigrationTLSDir = filepath.Join(a.cfg.DataDir, migrationTLSDir)
		if err := linkMigrationTLS(opts.MigrationTLSDir, t.Files); err != nil {
			return err
		}
	}
	a.vms = vmhost.New(vmhost.Config{
		Host:           a.cfg.Name,
		Dir:            dir,
		NBDAddr:        a.nbdAddr,
		MigrationHost:  migHost,
		Launcher:       vmhost.QEMULauncher{Options: opts, StorageReady: a.storageReady},
		Log:            a.log,
		Commit:         a.commitMigration,
		Fence:          a.fenceVolume,
		ExportReady:    func(name string) bool { _, err := a.exps.Lookup(name); return err == nil },
		WriterAttached: a.writerAttached,
	})
	return nil
}

// storageReady reports whether the volumes of a VM paused by a disk error
// are expected to take writes again (vmhost.QEMULauncher.StorageReady), so
// that its supervisor resumes it then rather than retrying blindly: each
// write a volume cannot take keeps the VM paused for ten heartbeat
// timeouts more before its ENOSPC. A volume whose replica here is open
// and healthy is ready once it knows a leader. Otherwise (no replica
// here, or a failed one) it is ready unless the hosts short of disk space
// (this one as it sees itself, the others as they gossip) hold so many of
// its replicas that the others are no quorum.
//
// It waits up to storageReadyWait for them, looking every 100 ms, so that
// the VM resumes within a moment of their readiness instead of at the
// supervisor's next attempt (up to 2 s later).
func (a *clusterAgent) storageReady(ctx context.Context, vols []string) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	deadline := time.Now().Add(storageReadyWait)
	for {
		err := a.volumesReady(vols)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// storageReadyWait bounds one wait of storageReady.
const storageReadyWait = 5 * time.Second

// volumesReady is one look of storageReady at vols.
func (a *clusterAgent) volumesReady(vols []string) error {
	var st *catalog.State
	for _, name := range vols {
		a.mu.Lock()
		v := a.vols[name]
		a.mu.Unlock()
		if v != nil && v.Err() == nil {
			if v.Status().Leader == "" {
				return fmt.Errorf("volume %s has no leader", name)
			}
			continue
		}
		if st == nil {
			st = a.ctl.State()
		}
		cv := st.Volumes[name]
		if cv == nil {
			continue // not in this agent's catalog: QEMU's retry will tell
		}
		var failure error
		if v != nil {
			failure = v.Err()
		}
		if short, quorum := a.host.ShortOfRoom(cv.Replicas, failure); !quorum {
			return fmt.Errorf("volume %s: the disks of %s, %d of its %d replicas, are short of space", name, strings.Join(short, ", "), len(short), len(cv.Replicas))
		}
	}
	return nil
}

// writerAttached reports whether a client opened a volume under writer
// epoch (a VM run's) on this agent and is still connected. (Other agents
// forwarding to this one are on a server of their own.)
func (a *clusterAgent) writerAttached(epoch uint64) bool {
	for name := range a.srv.AttachedAs() {
		if _, e, err := volume.SplitExport(name); err == nil && e == epoch {
			return true
		}
	}
	return false
}

// commitMigration commits a migration or disk move step on the control
// leader.
func (a *clusterAgent) commitMigration(ctx context.Context, cmd catalog.Command) (uint64, error) {
	step := admin.MigrationStep{VM: cmd.Name, Kind: cmd.Kind, Epoch: cmd.Epoch, URI: cmd.URI, Result: apiMigrationResult(cmd.Result),
		DiskMove: apiDiskMoveStep(cmd.DiskMove)}
	return a.commitOnLeader(ctx, cmd, func(ctx context.Context, c *client.Client) (uint64, error) { return c.MigrationStep(ctx, step) })
}

// commitOnLeader commits cmd on the control leader: directly when this
// agent leads, else through remote, a request to the leader's admin API.
// It retries until ctx ends, except on the catalog's refusal.
func (a *clusterAgent) commitOnLeader(ctx context.Context, cmd catalog.Command, remote func(context.Context, *client.Client) (uint64, error)) (uint64, error) {
	for {
		var (
			idx uint64
			err error
		)
		if a.ctl.IsLeader() {
			idx, err = a.ctl.Commit(ctx, cmd)
		} else if addr, _, ok := a.Leader(); ok {
			var c *client.Client
			if c, err = a.adminClient(addr, 10*time.Second); err == nil {
				idx, err = remote(ctx, c)
			}
			// A refusal (409, 400) is the catalog's verdict: no retry.
			if s := client.StatusOf(err); s >= 400 && s < 500 {
				return 0, err
			}
		} else {
			err = errors.New("no control leader known")
		}
		if err == nil || errors.Is(err, catalog.ErrNoMigration) || errors.Is(err, catalog.ErrNoMove) || errors.Is(err, catalog.ErrNoDiskMove) || errors.Is(err, catalog.ErrNoVerify) ||
			errors.Is(err, catalog.ErrInvalid) || errors.Is(err, catalog.ErrNotFound) {
			return idx, err
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("agent: committing %s: %w (last error: %v)", cmd.Kind, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// apiMigrationResult and catalogMigrationResult convert a migration's
// result between the catalog and the API (nil for nil).
func apiMigrationResult(r *catalog.MigrationResult) *admin.MigrationResult {
	if r == nil {
		return nil
	}
	return &admin.MigrationResult{From: r.From, To: r.To, Result: r.Result, Error: r.Error, Downtime: r.Downtime,
		QEMUDowntime: r.QEMUDowntime, Total: r.Total, Bytes: r.Bytes, Passes: r.Passes, Finished: r.Finished}
}

func catalogMigrationResult(r *admin.MigrationResult) *catalog.MigrationResult {
	if r == nil {
		return nil
	}
	return &catalog.MigrationResult{From: r.From, To: r.To, Result: r.Result, Error: r.Error, Downtime: r.Downtime,
		QEMUDowntime: r.QEMUDowntime, Total: r.Total, Bytes: r.Bytes, Passes: r.Passes, Finished: r.Finished}
}

// MigrationStep implements admin.Cluster (on the control leader).
func (a *clusterAgent) MigrationStep(ctx context.Context, st admin.MigrationStep) (uint64, error) {
	switch st.Kind {
	case catalog.CmdMigrationReady, catalog.CmdSwitchVM, catalog.CmdEndMigration, catalog.CmdDiskMovePhase, catalog.CmdEndDiskMove:
	default:
		return 0, admin.Errorf(http.StatusBadRequest, "%q is not a migration or disk move step", st.Kind)
	}
	cmd := catalog.Command{Kind: st.Kind, Name: st.VM, Epoch: st.Epoch, URI: st.URI, Result: catalogMigrationResult(st.Result),
		DiskMove: catalogDiskMoveCommand(st.DiskMove)}
	idx, err := a.ctl.Commit(ctx, cmd)
	if err != nil {
		return 0, vmError(err, http.StatusNotFound)
	}
	return idx, nil
}

// FenceLocal implements admin.Cluster.
func (a *clusterAgent) FenceLocal(ctx context.Context, name string, req admin.Fence) error {
	a.mu.Lock()
	v := a.vols[name]
	a.mu.Unlock()
	if v == nil {
		return admin.Errorf(http.StatusNotFound, "no replica of volume %q on this host", name)
	}
	if v.Status().State != "Leader" {
		return admin.Errorf(http.StatusConflict, "this host does not lead volume %q", name)
	}
	if err := v.Fence(ctx, req.Gen, req.Epoch); err != nil {
		return admin.Errorf(http.StatusConflict, "%v", err)
	}
	if req.Leader != "" && slices.Contains(v.Status().Replicas, req.Leader) {
		v.TransferLeadership(req.Leader)
	}
	return nil
}

// fenceVolume puts the fence of generation gen for writer epoch into volume's
// log, through whichever agent leads it, and asks for its leadership to
// move to host leader; it retries until ctx ends.
func (a *clusterAgent) fenceVolume(ctx context.Context, volume string, gen, epoch uint64, leader string) error {
	req := admin.Fence{Gen: gen, Epoch: epoch, Leader: leader}
	var last error
	for {
		if last = a.FenceLocal(ctx, volume, req); last == nil {
			return nil
		}
		if cv, ok := a.ctl.State().Volumes[volume]; ok {
			for _, h := range cv.Replicas {
				host, ok := a.ctl.State().Hosts[h]
				if h == a.cfg.Name || !ok || host.AdminAddr == "" {
					continue
				}
				c, err := a.adminClient(host.AdminAddr, 5*time.Second)
				if err == nil {
					if err = c.Fence(ctx, volume, req); err == nil {
						return nil
					}
				}
				last = err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent: fencing volume %s at generation %d: %w (last error: %v)", volume, gen, ctx.Err(), last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
