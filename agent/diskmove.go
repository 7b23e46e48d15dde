package agent

// Disk moves (docs/move-disk.md): the admin.Cluster methods that record
// them, and the conversions between the catalog's and the API's records.

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/cluster/membership"
)

// MoveDisk implements admin.Cluster.
func (a *clusterAgent) MoveDisk(ctx context.Context, name string, n int, req admin.MoveDisk) (admin.VM, error) {
	st := a.ctl.State()
	vm, ok := st.VMs[name]
	if !ok {
		return admin.VM{}, admin.Errorf(http.StatusNotFound, "no VM named %q", name)
	}
	if req.To == "" {
		return admin.VM{}, admin.Errorf(http.StatusBadRequest, "no target: give a volume, raw:/path, qcow2:/path or nbd://host:port/export (\"to\"; tandem vm move-disk --to-volume, --to-file or --to-nbd)")
	}
	if req.MaxRate < 0 {
		return admin.VM{}, admin.Errorf(http.StatusBadRequest, "max_rate %d: want a positive number of bytes per second", req.MaxRate)
	}
	if vm.State == catalog.VMRunning {
		if s := a.memberState(vm.Host); s != string(membership.Alive) {
			return admin.VM{}, admin.Errorf(http.StatusConflict, "the VM's host %s is %s: a disk moves through its running QEMU", vm.Host, stateOrUnknown(s))
		}
	}
	// A target volume that does not exist is bad input, not a missing VM.
	if err := st.CheckMoveDisk(name, n, req.To); err != nil {
		return admin.VM{}, vmError(err, http.StatusBadRequest)
	}
	err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdMoveDisk, Name: name, DiskMove: &catalog.DiskMoveCommand{Disk: n, To: req.To, MaxRate: int64(req.MaxRate)}})
	if err != nil {
		return admin.VM{}, vmError(err, http.StatusBadRequest)
	}
	return a.VM(ctx, name)
}

// CancelDiskMove implements admin.Cluster: the catalog ends the move
// unless its pivot was recorded first (then 409).
func (a *clusterAgent) CancelDiskMove(ctx context.Context, name string, n int) (admin.VM, error) {
	vm, ok := a.ctl.State().VMs[name]
	if !ok {
		return admin.VM{}, admin.Errorf(http.StatusNotFound, "no VM named %q", name)
	}
	m := vm.DiskMove
	if m == nil || m.Disk != n {
		return admin.VM{}, admin.Errorf(http.StatusConflict, "disk %d of VM %q is not moving", n, name)
	}
	err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdEndDiskMove, Name: name, DiskMove: &catalog.DiskMoveCommand{ID: m.ID,
		Result: &catalog.DiskMoveResult{Result: catalog.ResultCancelled, Error: "cancelled by the operator"}}})
	if err != nil {
		if errors.Is(err, catalog.ErrInvalid) || errors.Is(err, catalog.ErrNoDiskMove) {
			return admin.VM{}, admin.Errorf(http.StatusConflict, "too late to cancel: %s", strings.TrimPrefix(err.Error(), "catalog: "))
		}
		return admin.VM{}, vmError(err, http.StatusNotFound)
	}
	return a.VM(ctx, name)
}

// apiDiskMoveResult and catalogDiskMoveResult convert a disk move's result
// between the catalog and the API (nil for nil).
func apiDiskMoveResult(r *catalog.DiskMoveResult) *admin.DiskMoveResult {
	if r == nil {
		return nil
	}
	return &admin.DiskMoveResult{ID: r.ID, Disk: r.Disk, From: r.From, To: r.To, Result: r.Result, Error: r.Error,
		Bytes: r.Bytes, Copy: r.Copy, Pivot: r.Pivot, Started: r.Started, Finished: r.Finished}
}

func catalogDiskMoveResult(r *admin.DiskMoveResult) *catalog.DiskMoveResult {
	if r == nil {
		return nil
	}
	return &catalog.DiskMoveResult{ID: r.ID, Disk: r.Disk, From: r.From, To: r.To, Result: r.Result, Error: r.Error,
		Bytes: r.Bytes, Copy: r.Copy, Pivot: r.Pivot, Started: r.Started, Finished: r.Finished}
}

// apiDiskMoveStep and catalogDiskMoveCommand convert a disk move step
// (nil for nil).
func apiDiskMoveStep(c *catalog.DiskMoveCommand) *admin.DiskMoveStep {
	if c == nil {
		return nil
	}
	return &admin.DiskMoveStep{ID: c.ID, Phase: c.Phase, Result: apiDiskMoveResult(c.Result)}
}

func catalogDiskMoveCommand(s *admin.DiskMoveStep) *catalog.DiskMoveCommand {
	if s == nil {
		return nil
	}
	return &catalog.DiskMoveCommand{ID: s.ID, Phase: s.Phase, Result: catalogDiskMoveResult(s.Result)}
}

// apiDisk describes VM disk d.
func apiDisk(st *catalog.State, d string) admin.VMDisk {
	disk := admin.VMDisk{Disk: d, Kind: catalog.DiskVolume}
	if p, err := catalog.ParseDisk(d); err == nil {
		disk.Kind = p.Kind
	}
	if disk.Kind == catalog.DiskVolume {
		disk.Volume = d
		if v, ok := st.Volumes[d]; ok {
			disk.WriterEpoch, disk.WriterGen = v.Writer, v.WriterGen
		}
	}
	return disk
}
