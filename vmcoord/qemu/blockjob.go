package qemu

import (
	"context"
	"fmt"
	"strings"
)

// Block jobs: moving a running VM's disk to another backend with
// blockdev-mirror (docs/move-disk.md). The sequence:
//
//	p.BlockdevAdd(ctx, target)                          // the target node
//	p.Mirror(ctx, MirrorArgs{Job: "mv7", Device: 0, Source: src, Target: "t7"})
//	p.Job(ctx, "mv7")                                   // ... until Ready
//	// the caller records that the target is authoritative
//	p.JobComplete(ctx, "mv7")                           // pivot: the device writes the target only
//	p.Job(ctx, "mv7")                                   // ... until Concluded
//	p.JobDismiss(ctx, "mv7"); p.BlockdevDel(ctx, src)
//
// The mirror copies in copy-mode write-blocking: once it is ready, a guest
// write completes only when it is on both the source and the target, so
// either one holds every acknowledged write until the pivot. Its jobs are
// not dismissed automatically, so that their end (and error) can be read
// after an agent restart.

// Job states (QEMU's JobStatus) a mirror goes through.
const (
	JobCreated   = "created"
	JobRunning   = "running"
	JobReady     = "ready"
	JobWaiting   = "waiting"
	JobPending   = "pending"
	JobAborting  = "aborting"
	JobConcluded = "concluded"
	JobNull      = "null"
	JobPaused    = "paused"
	JobStandby   = "standby"
)

// Job is query-jobs' report of one job.
type Job struct {
	ID     string `json:"id"`
	Type   string `json:"type"`
	Status string `json:"status"`
	// Current and Total are the job's progress (bytes for a mirror; Total
	// grows while the guest writes).
	Current int64 `json:"current-progress"`
	Total   int64 `json:"total-progress"`
	// Error is set on a job that failed or was cancelled.
	Error string `json:"error,omitempty"`
}

// BlockdevAdd adds a block node (blockdev-add) with options opts (see
// Disk.BlockdevOptions).
func (p *Process) BlockdevAdd(ctx context.Context, opts map[string]any) error {
	return p.execute(ctx, "blockdev-add", opts, nil)
}

// BlockdevDel removes block node node (blockdev-del), which nothing may
// use any more.
func (p *Process) BlockdevDel(ctx context.Context, node string) error {
	return p.execute(ctx, "blockdev-del", map[string]any{"node-name": node}, nil)
}

// MirrorArgs names a mirror job's parts.
type MirrorArgs struct {
	// Job is the job's id.
	Job string
	// Source is the node the device uses now; Target the node added for
	// the copy (the same size); Filter the name of the filter node the
	// mirror puts above Source while it runs (optional).
	Source, Target, Filter string
	// Speed limits the background copy in bytes per second (0: none).
	Speed int64
}

// Mirror starts copying Source to Target (blockdev-mirror, sync full,
// copy-mode write-blocking, not dismissed automatically).
func (p *Process) Mirror(ctx context.Context, a MirrorArgs) error {
	args := map[string]any{"job-id": a.Job, "device": a.Source, "target": a.Target, "sync": "full",
		"copy-mode": "write-blocking", "auto-dismiss": false}
	if a.Filter != "" {
		args["filter-node-name"] = a.Filter
	}
	if a.Speed > 0 {
		// The limit applies between iterations, each of up to buf-size
		// bytes (16 MiB by default): smaller ones make it smooth.
		args["speed"], args["buf-size"] = a.Speed, mirrorBuf(a.Speed)
	}
	return p.execute(ctx, "blockdev-mirror", args, nil)
}

// mirrorBuf returns the mirror's buffer for a copy limited to speed bytes
// per second: about a tenth of a second's worth, a power of two from
// 64 KiB to 16 MiB.
func mirrorBuf(speed int64) int64 {
	b := int64(64 << 10)
	for b < 16<<20 && b*2 <= speed/10 {
		b *= 2
	}
	return b
}

// Jobs returns QEMU's jobs (query-jobs).
func (p *Process) Jobs(ctx context.Context) ([]Job, error) {
	var jobs []Job
	if err := p.execute(ctx, "query-jobs", nil, &jobs); err != nil {
		return nil, err
	}
	return jobs, nil
}

// Job returns job id, and false if QEMU has no such job.
func (p *Process) Job(ctx context.Context, id string) (Job, bool, error) {
	jobs, err := p.Jobs(ctx)
	if err != nil {
		return Job{}, false, err
	}
	for _, j := range jobs {
		if j.ID == id {
			return j, true, nil
		}
	}
	return Job{}, false, nil
}

// JobComplete completes job id (job-complete): a ready mirror pivots, the
// device then uses the target.
func (p *Process) JobComplete(ctx context.Context, id string) error {
	return p.execute(ctx, "job-complete", map[string]any{"id": id}, nil)
}

// JobCancel cancels job id (job-cancel): a mirror stops without pivoting,
// the device keeps its source.
func (p *Process) JobCancel(ctx context.Context, id string) error {
	return p.execute(ctx, "job-cancel", map[string]any{"id": id}, nil)
}

// JobDismiss forgets concluded job id (job-dismiss).
func (p *Process) JobDismiss(ctx context.Context, id string) error {
	return p.execute(ctx, "job-dismiss", map[string]any{"id": id}, nil)
}

// DiskInfo is what query-block says of one disk device.
type DiskInfo struct {
	// Node is the node the device uses (during a mirror, the mirror's
	// filter); Size the image's virtual size in bytes.
	Node string
	Size int64
}

// blockInfo is one entry of query-block's reply.
type blockInfo struct {
	Device   string `json:"device"`
	QDev     string `json:"qdev"`
	Inserted *struct {
		NodeName string `json:"node-name"`
		Image    struct {
			VirtualSize int64 `json:"virtual-size"`
		} `json:"image"`
	} `json:"inserted"`
}

// Disk returns what the device of disk i (Spec.Disks[i]) uses.
func (p *Process) Disk(ctx context.Context, i int) (DiskInfo, error) {
	var blocks []blockInfo
	if err := p.execute(ctx, "query-block", nil, &blocks); err != nil {
		return DiskInfo{}, err
	}
	return diskOf(blocks, i)
}

// diskOf finds disk i's device in query-block's reply.
func diskOf(blocks []blockInfo, i int) (DiskInfo, error) {
	id := deviceID(i)
	for _, b := range blocks {
		if b.QDev == id || strings.HasPrefix(b.QDev, "/machine/peripheral/"+id+"/") {
			if b.Inserted == nil {
				return DiskInfo{}, fmt.Errorf("qemu: disk %d (%s): no medium", i, id)
			}
			return DiskInfo{Node: b.Inserted.NodeName, Size: b.Inserted.Image.VirtualSize}, nil
		}
	}
	return DiskInfo{}, fmt.Errorf("qemu: no disk device %s", id)
}
