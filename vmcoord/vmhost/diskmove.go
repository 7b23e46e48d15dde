package vmhost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/vmcoord/qemu"
	"github.com/tandem-project/tandem/volume"
)

// DiskMover is what a Process needs to move a running VM's disk
// (*qemu.Process implements it; see package qemu's block jobs).
type DiskMover interface {
	Disk(ctx context.Context, i int) (qemu.DiskInfo, error)
	BlockdevAdd(ctx context.Context, opts map[string]any) error
	BlockdevDel(ctx context.Context, node string) error
	Mirror(ctx context.Context, a qemu.MirrorArgs) error
	Job(ctx context.Context, id string) (qemu.Job, bool, error)
	JobComplete(ctx context.Context, id string) error
	JobCancel(ctx context.Context, id string) error
	JobDismiss(ctx context.Context, id string) error
}

// pivotOverride makes a relaunch of the VM open the target of a disk
// move this run recorded as pivoting, even before the catalog this host
// reconciles with shows it (a QEMU that dies right after the pivoting
// commit must not boot from the source).
type pivotOverride struct {
	disk     int
	fromNode string
	to       Disk
}

// withPivot returns spec with r's pivot override applied; r.mu is held.
func (r *run) withPivot(spec Spec) Spec {
	o := r.pivot
	if o == nil || o.disk >= len(spec.Disks) || spec.Disks[o.disk].Node != o.fromNode {
		return spec
	}
	spec.Disks = append([]Disk(nil), spec.Disks...)
	spec.Disks[o.disk] = o.to
	return spec
}

// setMoving records the disk move's progress.
func (r *run) setMoving(p *admin.DiskMoveProgress) {
	r.mu.Lock()
	r.moving = p
	r.mu.Unlock()
}

// moveNames are the QEMU names of one disk move: its job, the mirror's
// filter node, and the target's node.
type moveNames struct{ job, filter, target string }

func namesOf(mv catalog.DiskMove) moveNames {
	id := strconv.FormatUint(mv.ID, 10)
	return moveNames{job: "mv" + id, filter: "mvtop" + id, target: diskNode(mv.Disk, mv.To)}
}

// errGone is how a move ends when its QEMU exited under it.
var errGone = errors.New("the VM's QEMU exited")

// moveDisk drives disk move mv of r's VM in QEMU p (docs/move-disk.md):
// target, mirror, ready, pivoting recorded, job-complete, completed
// recorded, old node deleted. It first looks at what QEMU already does
// (an agent restarted during the move finds its job, or the device on the
// target) and goes on from there. ctx ends when the catalog no longer has
// the move (cancelled) or the Manager closes; before the pivoting commit,
// a cancelled move is undone in QEMU.
func (m *Manager) moveDisk(ctx context.Context, log *slog.Logger, r *run, p Process, mv catalog.DiskMove, size int64, epoch uint64) {
	defer r.setMoving(nil)
	dm, ok := p.(DiskMover)
	if !ok {
		m.endMove(log, r.name, mv, catalog.ResultFailed, "this host's VM runtime cannot move disks", nil)
		return
	}
	mover := &diskMove{m: m, log: log, r: r, p: p, dm: dm, mv: mv, size: size, epoch: epoch, names: namesOf(mv),
		target: launchDisk(mv.Disk, mv.To, epoch)}
	mover.run(ctx)
}

// diskMove is one run of moveDisk.
type diskMove struct {
	m      *Manager
	log    *slog.Logger
	r      *run
	p      Process
	dm     DiskMover
	mv     catalog.DiskMove
	size   int64 // the target volume's size (0: not a volume)
	epoch  uint64
	names  moveNames
	target Disk
	// srcNode is the node the device used before the move.
	srcNode string
	// created is the target file this run created (removed if the move
	// fails).
	created string
	started time.Time
	ready   time.Time
	bytes   int64
}

// qctx returns a context for one QMP command.
func qctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

func (d *diskMove) gone() bool {
	select {
	case <-d.p.Done():
		return true
	default:
		return false
	}
}

func (d *diskMove) run(ctx context.Context) {
	d.started = d.mv.Started
	if d.started.IsZero() {
		d.started = time.Now()
	}
	d.srcNode = diskNode(d.mv.Disk, d.mv.From)
	c, cancel := qctx()
	info, err := d.dm.Disk(c, d.mv.Disk)
	var job qemu.Job
	var hasJob bool
	if err == nil {
		job, hasJob, err = d.dm.Job(c, d.names.job)
	}
	cancel()
	if err != nil {
		d.fail(fmt.Errorf("looking at the VM's disk %d: %w", d.mv.Disk, err))
		return
	}
	switch {
	case info.Node == d.names.target:
		// The pivot happened (this run or an earlier one of the agent).
		d.log.Info("disk move: the device uses the target already")
		if hasJob {
			d.dismiss()
		}
		if d.mv.Phase == catalog.DiskMoveCopying {
			// Only a recorded pivot is followed by job-complete; the
			// device is on the target all the same, which is what counts.
			if err := d.commitPivoting(ctx); err != nil {
				d.log.Warn("disk move: recording the pivot", "err", err)
			}
		}
		d.complete()
		return
	case hasJob:
		d.log.Info("disk move: carrying on with QEMU's mirror job", "status", job.Status)
	case d.mv.Phase == catalog.DiskMovePivoting:
		// Recorded as pivoting, yet the mirror is gone and the device on
		// the source: the job ended without a pivot, and the guest wrote
		// on the source since. The source is authoritative.
		d.r.clearPivot()
		d.m.endMove(d.log, d.r.name, d.mv, catalog.ResultFailed, "the mirror ended without a pivot: the VM runs on the source", nil)
		return
	default:
		if info.Node != "" {
			d.srcNode = info.Node
		}
		if err := d.start(ctx, info); err != nil {
			d.undo()
			if ctx.Err() == nil {
				d.fail(err)
			}
			return
		}
	}
	d.follow(ctx)
}

// start prepares the target and starts the mirror.
func (d *diskMove) start(ctx context.Context, info qemu.DiskInfo) error {
	d.r.setMoving(&admin.DiskMoveProgress{Status: "preparing", Total: info.Size})
	if info.Size <= 0 {
		return fmt.Errorf("QEMU reports no size for disk %d", d.mv.Disk)
	}
	t := d.target
	switch {
	case t.Volume != "":
		if d.size != info.Size {
			return fmt.Errorf("target volume %s is %s (%d bytes), disk %d is %s (%d bytes): the sizes must match (create the volume with --size %d)",
				t.Volume, volume.FormatSize(d.size), d.size, d.mv.Disk, volume.FormatSize(info.Size), info.Size, info.Size)
		}
		// The VM's run writes the target under its epoch: the fence
		// (generation: the move_disk command) must be in the target's log
		// before QEMU writes.
		if err := d.m.cfg.Fence(ctx, t.Volume, d.mv.ID, d.epoch, d.m.cfg.Host); err != nil {
			return fmt.Errorf("setting the writer of volume %s: %w", t.Volume, err)
		}
	case t.File != "":
		if err := createImage(ctx, t.File, t.Format, info.Size); err != nil {
			return err
		}
		d.created = t.File
	}
	opts, err := qemuDisk(t, d.m.cfg.NBDAddr).BlockdevOptions(d.names.target, 0)
	if err != nil {
		return err
	}
	c, cancel := qctx()
	defer cancel()
	// A target node an earlier attempt left (its job failed) goes first.
	_ = d.dm.BlockdevDel(c, d.names.target)
	if err := d.dm.BlockdevAdd(c, opts); err != nil {
		return fmt.Errorf("opening the target %s: %w", d.mv.To, err)
	}
	if err := d.dm.Mirror(c, qemu.MirrorArgs{Job: d.names.job, Source: d.srcNode, Target: d.names.target, Filter: d.names.filter,
		Speed: d.mv.MaxRate}); err != nil {
		return fmt.Errorf("starting the mirror to %s: %w", d.mv.To, err)
	}
	d.log.Info("disk move: mirroring", "from", d.mv.From, "to", d.mv.To, "bytes", info.Size)
	return nil
}

// createImage creates a new image file of size bytes at path: raw (a
// sparse file) or qcow2 (qemu-img). An existing file is never
// overwritten.
func createImage(ctx context.Context, path, format string, size int64) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("target file %s exists: give a new path (a move never overwrites a file)", path)
	}
	if format == catalog.DiskQcow2 {
		out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", path, strconv.FormatInt(size, 10)).CombinedOutput()
		if err != nil {
			return fmt.Errorf("creating %s with qemu-img: %v: %s", path, err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating the target file: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("creating the target file: %w", err)
	}
	return nil
}

// follow watches the mirror job: progress, ready (record pivoting, then
// job-complete), concluded (completed or failed).
func (d *diskMove) follow(ctx context.Context) {
	pivoting := d.mv.Phase == catalog.DiskMovePivoting
	completing := false
	var pivotStart time.Time
	for {
		if d.gone() {
			d.exited(pivoting)
			return
		}
		if ctx.Err() != nil {
			if d.closing() {
				return // the agent stops: the next run carries on
			}
			if !pivoting {
				d.log.Info("disk move cancelled: stopping the mirror")
				d.cancelJob()
				d.undo()
			}
			return
		}
		c, cancel := qctx()
		job, ok, err := d.dm.Job(c, d.names.job)
		cancel()
		switch {
		case err != nil && d.gone():
			continue
		case err != nil:
			d.log.Warn("disk move: query-jobs", "err", err)
		case !ok:
			// Only this driver dismisses the job: it ended unseen.
			c, cancel := qctx()
			info, err := d.dm.Disk(c, d.mv.Disk)
			cancel()
			switch {
			case err == nil && info.Node == d.names.target:
				d.complete()
			case pivoting:
				d.r.clearPivot()
				d.m.endMove(d.log, d.r.name, d.mv, catalog.ResultFailed, "the mirror ended without a pivot: the VM runs on the source", nil)
			default:
				d.undo()
				d.fail(fmt.Errorf("QEMU's mirror job %s vanished", d.names.job))
			}
			return
		default:
			d.r.setMoving(&admin.DiskMoveProgress{Status: job.Status, Copied: job.Current, Total: job.Total})
			switch {
			case job.Status == qemu.JobConcluded || job.Status == qemu.JobAborting || job.Status == qemu.JobNull:
				if job.Status != qemu.JobConcluded {
					break // wait for the conclusion
				}
				d.concluded(job, pivoting, pivotStart)
				return
			case job.Status == qemu.JobReady && !pivoting:
				d.bytes, d.ready = job.Total, time.Now()
				pivotStart = time.Now()
				// Every write acknowledged from now on is on both sides:
				// the target becomes authoritative, then QEMU pivots.
				if err := d.commitPivoting(ctx); err != nil {
					if ctx.Err() != nil {
						continue // cancelled: handled above
					}
					d.log.Warn("disk move: recording the pivot", "err", err)
					d.cancelJob()
					d.undo()
					d.fail(fmt.Errorf("recording the pivot: %w", err))
					return
				}
				pivoting = true
			case job.Status == qemu.JobReady && pivoting && !completing:
				if pivotStart.IsZero() {
					pivotStart = time.Now()
				}
				c, cancel := qctx()
				err := d.dm.JobComplete(c, d.names.job)
				cancel()
				if err != nil {
					d.log.Warn("disk move: job-complete", "err", err)
				} else {
					completing = true
				}
			}
		}
		// Once ready, every guest write waits for the target: poll
		// faster to keep that window (and the pivot) short.
		poll := 100 * time.Millisecond
		if pivoting {
			poll = 10 * time.Millisecond
		}
		select {
		case <-ctx.Done():
		case <-d.p.Done():
		case <-time.After(poll):
		}
	}
}

// closing reports whether the Manager is closing.
func (d *diskMove) closing() bool {
	select {
	case <-d.m.stop:
		return true
	default:
		return false
	}
}

// commitPivoting records the pivoting phase and makes a relaunch of the
// VM open the target.
func (d *diskMove) commitPivoting(ctx context.Context) error {
	d.r.mu.Lock()
	d.r.pivot = &pivotOverride{disk: d.mv.Disk, fromNode: diskNode(d.mv.Disk, d.mv.From), to: d.target}
	d.r.mu.Unlock()
	_, err := d.m.cfg.Commit(ctx, catalog.Command{Kind: catalog.CmdDiskMovePhase, Name: d.r.name,
		DiskMove: &catalog.DiskMoveCommand{ID: d.mv.ID, Phase: catalog.DiskMovePivoting}})
	if err != nil {
		d.r.clearPivot()
	}
	return err
}

// clearPivot drops r's pivot override.
func (r *run) clearPivot() {
	r.mu.Lock()
	r.pivot = nil
	r.mu.Unlock()
}

// concluded handles the mirror job's end.
func (d *diskMove) concluded(job qemu.Job, pivoting bool, pivotStart time.Time) {
	c, cancel := qctx()
	info, err := d.dm.Disk(c, d.mv.Disk)
	cancel()
	onTarget := err == nil && info.Node == d.names.target
	d.dismiss()
	switch {
	case onTarget:
		res := &catalog.DiskMoveResult{Bytes: d.bytes}
		if !d.ready.IsZero() {
			res.Copy = d.ready.Sub(d.started)
			res.Pivot = time.Since(pivotStart)
		}
		d.complete(res)
	case pivoting:
		// The job ended without a pivot (an error after ready): QEMU
		// writes the source only from then on.
		d.r.clearPivot()
		d.undo()
		d.m.endMove(d.log, d.r.name, d.mv, catalog.ResultFailed, "the mirror ended without a pivot: "+orUnknown(job.Error), nil)
	default:
		d.undo()
		d.fail(fmt.Errorf("the mirror failed: %s", orUnknown(job.Error)))
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "no error reported"
	}
	return s
}

// complete records the move as completed and closes the old node.
func (d *diskMove) complete(res ...*catalog.DiskMoveResult) {
	var r *catalog.DiskMoveResult
	if len(res) > 0 {
		r = res[0]
	}
	d.m.endMove(d.log, d.r.name, d.mv, catalog.ResultCompleted, "", r)
	c, cancel := qctx()
	defer cancel()
	if err := d.dm.BlockdevDel(c, d.srcNode); err != nil {
		d.log.Info("disk move: closing the old node", "node", d.srcNode, "err", err)
	}
}

// exited ends a move whose QEMU exited: before the pivot the source is
// authoritative (the VM starts again on it), from the pivot on the target
// is (the VM starts again on it: see Manager.spec and the pivot
// override).
func (d *diskMove) exited(pivoting bool) {
	if pivoting {
		d.m.endMove(d.log, d.r.name, d.mv, catalog.ResultCompleted, "the VM's QEMU exited during the pivot: it starts again on the target", nil)
		return
	}
	d.undoFile()
	d.fail(errGone)
}

// cancelJob cancels the mirror and waits for its end (at most 10 s).
func (d *diskMove) cancelJob() {
	c, cancel := qctx()
	defer cancel()
	if err := d.dm.JobCancel(c, d.names.job); err != nil {
		d.log.Info("disk move: job-cancel", "err", err)
	}
	for c.Err() == nil {
		job, ok, err := d.dm.Job(c, d.names.job)
		if err != nil || !ok || job.Status == qemu.JobConcluded {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.dismiss()
}

// dismiss forgets the concluded mirror job.
func (d *diskMove) dismiss() {
	c, cancel := qctx()
	defer cancel()
	if err := d.dm.JobDismiss(c, d.names.job); err != nil {
		d.log.Debug("disk move: job-dismiss", "err", err)
	}
}

// undo closes the target node and removes a target file this run
// created.
func (d *diskMove) undo() {
	c, cancel := qctx()
	err := d.dm.BlockdevDel(c, d.names.target)
	cancel()
	if err != nil {
		d.log.Debug("disk move: closing the target node", "err", err)
	}
	d.undoFile()
}

func (d *diskMove) undoFile() {
	if d.created != "" {
		if err := os.Remove(d.created); err != nil {
			d.log.Warn("disk move: removing the target file", "file", d.created, "err", err)
		}
		d.created = ""
	}
}

// fail records the move as failed (the disk stays the source).
func (d *diskMove) fail(err error) {
	d.m.endMove(d.log, d.r.name, d.mv, catalog.ResultFailed, err.Error(), nil)
}

// endMove records the end of disk move mv (a refusal, because it ended
// already, is fine).
func (m *Manager) endMove(log *slog.Logger, name string, mv catalog.DiskMove, result, why string, res *catalog.DiskMoveResult) {
	if res == nil {
		res = &catalog.DiskMoveResult{}
	}
	res.Result, res.Error = result, why
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := m.cfg.Commit(ctx, catalog.Command{Kind: catalog.CmdEndDiskMove, Name: name,
		DiskMove: &catalog.DiskMoveCommand{ID: mv.ID, Result: res}})
	log.Info("disk move ended", "to", mv.To, "result", result, "why", why, "commit_err", err)
}
