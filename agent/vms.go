package agent

// VMs in the catalog, through the admin API: the clusterAgent's
// admin.Cluster methods for /v1/vms and /v1/local/vms, and the seam where
// a VM runtime (the code that runs QEMU for the VMs placed on this host)
// plugs in.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/cluster/control"
	"github.com/tandem-project/tandem/cluster/membership"
	"github.com/tandem-project/tandem/volume"
)

// VMRuntime runs the VMs that the catalog places on this host (QEMU
// processes on the VMs' disks) and reports on them. It is the seam
// between the catalog's VMs, which this file serves through the admin
// API, and the code that acts on them.
//
// Wiring: an agent's runtime is what (*clusterAgent).vmRuntime returns;
// nil means the agent runs no VMs, and then LocalVMs (GET /v1/local/vms)
// is empty and every VM body's runtime says "absent".
type VMRuntime interface {
	// Local reports the VMs this host's runtime knows: running, paused,
	// failed, or stopped but not yet forgotten, in any order. It is
	// called concurrently, from admin requests: it must answer from
	// memory, without waiting on QEMU. The caller owns the slice.
	Local() []admin.LocalVM
	// Reconciled returns the catalog index up to which Local reflects the
	// catalog's VM changes.
	Reconciled() uint64
}

// vmRuntime returns this agent's VM runtime (nil before it started).
func (a *clusterAgent) vmRuntime() VMRuntime {
	if a.vms == nil {
		return nil
	}
	return a.vms
}

// Defaults of a VM created without them.
const (
	defaultVCPUs     = 1
	defaultMemoryMiB = 256
)

// LocalVMs implements admin.Cluster.
func (a *clusterAgent) LocalVMs(ctx context.Context, minIndex uint64) ([]admin.LocalVM, error) {
	return localVMs(ctx, a.vmRuntime(), minIndex)
}

// localVMs returns rt's report once it reflects the catalog up to
// minIndex; a nil runtime reports no VM. Without that wait, a host that
// has not yet seen a VM's start would report it absent to a stop that
// came right after, while it is about to start its QEMU.
func localVMs(ctx context.Context, rt VMRuntime, minIndex uint64) ([]admin.LocalVM, error) {
	out := []admin.LocalVM{}
	if rt == nil {
		return out, nil
	}
	for at := rt.Reconciled(); at < minIndex; at = rt.Reconciled() {
		select {
		case <-ctx.Done():
			return nil, admin.Errorf(http.StatusServiceUnavailable, "this host's VM runtime has acted on the catalog up to index %d, not yet %d", at, minIndex)
		case <-time.After(10 * time.Millisecond):
		}
	}
	return append(out, rt.Local()...), nil
}

// VMs implements admin.Cluster.
func (a *clusterAgent) VMs(ctx context.Context) ([]admin.VM, error) {
	st := a.ctl.State()
	var hosts []string
	for _, vm := range st.VMs {
		if vm.Host != "" && !slices.Contains(hosts, vm.Host) {
			hosts = append(hosts, vm.Host)
		}
	}
	rt := a.gatherVMs(ctx, st, hosts)
	out := []admin.VM{}
	for _, name := range st.VMNames() {
		out = append(out, describeVM(st, st.VMs[name], rt))
	}
	return out, nil
}

// VM implements admin.Cluster.
func (a *clusterAgent) VM(ctx context.Context, name string) (admin.VM, error) {
	st := a.ctl.State()
	vm, ok := st.VMs[name]
	if !ok {
		return admin.VM{}, admin.Errorf(http.StatusNotFound, "no VM named %q", name)
	}
	var hosts []string
	if vm.Host != "" {
		hosts = []string{vm.Host}
	}
	return describeVM(st, vm, a.gatherVMs(ctx, st, hosts)), nil
}

// hostVMs is a host's runtime report, or why there is none.
type hostVMs struct {
	vms []admin.LocalVM
	err error
}

// gatherVMs asks the agents of hosts for their runtime's VMs, in
// parallel, each bounded by 2 s.
func (a *clusterAgent) gatherVMs(ctx context.Context, st *catalog.State, hosts []string) map[string]hostVMs {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var mu sync.Mutex
	out := map[string]hostVMs{}
	var wg sync.WaitGroup
	for _, name := range hosts {
		h, ok := st.Hosts[name]
		switch {
		case name == a.cfg.Name:
			vms, err := a.LocalVMs(ctx, st.Index)
			out[name] = hostVMs{vms: vms, err: err}
			continue
		case !ok || h.AdminAddr == "":
			out[name] = hostVMs{err: fmt.Errorf("host %s: no known admin address", name)}
			continue
		case h.State == string(membership.Failed) || h.State == string(membership.Left):
			out[name] = hostVMs{err: fmt.Errorf("host %s is %s", name, h.State)}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			vms, err := a.fetchLocalVMs(ctx, h.AdminAddr, st.Index)
			if err != nil {
				err = fmt.Errorf("host %s: %w", name, err)
			}
			mu.Lock()
			out[name] = hostVMs{vms: vms, err: err}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// fetchLocalVMs reads GET /v1/local/vms of the agent at addr.
func (a *clusterAgent) fetchLocalVMs(ctx context.Context, addr string, minIndex uint64) ([]admin.LocalVM, error) {
	var vms []admin.LocalVM
	err := a.getLocal(ctx, addr, fmt.Sprintf("/v1/local/vms?min_index=%d", minIndex), &vms)
	return vms, err
}

// describeVM builds a VM's API view from the catalog and its host's
// runtime report.
func describeVM(st *catalog.State, vm *catalog.VM, rt map[string]hostVMs) admin.VM {
	out := admin.VM{Name: vm.Name, ID: vm.ID, VCPUs: vm.VCPUs, MemoryMiB: vm.MemoryMiB, Disks: []admin.VMDisk{},
		Boot:  admin.Boot{Kind: vm.Boot.Kind, Kernel: vm.Boot.Kernel, Initrd: vm.Boot.Initrd, Cmdline: vm.Boot.Cmdline},
		State: vm.State, Host: vm.Host, Epoch: vm.Epoch, Created: vm.Created, Changed: vm.Changed,
		Runtime: admin.LocalVM{Name: vm.Name, State: admin.VMAbsent}}
	for _, d := range vm.Disks {
		out.Disks = append(out.Disks, apiDisk(st, d))
	}
	if m := vm.DiskMove; m != nil {
		out.DiskMove = &admin.DiskMove{ID: m.ID, Disk: m.Disk, From: m.From, To: m.To, Phase: m.Phase, MaxRate: m.MaxRate, Started: m.Started}
	}
	out.LastDiskMove = apiDiskMoveResult(vm.LastDiskMove)
	if m := vm.Migration; m != nil {
		out.Migration = &admin.Migration{From: m.From, To: m.To, Epoch: m.Epoch, Phase: m.Phase, Started: m.Started, MaxBandwidth: m.MaxBandwidth}
	}
	out.LastMigration = apiMigrationResult(vm.LastMigration)
	if vm.Host == "" {
		return out
	}
	rep, ok := rt[vm.Host]
	switch {
	case !ok:
		out.Runtime.State, out.Runtime.Error = admin.VMUnknown, fmt.Sprintf("host %s was not asked", vm.Host)
	case rep.err != nil:
		out.Runtime.State, out.Runtime.Error = admin.VMUnknown, rep.err.Error()
	default:
		for _, l := range rep.vms {
			if l.Name == vm.Name {
				out.Runtime = l
			}
		}
	}
	return out
}

// VolumeWriters implements admin.Cluster.
func (a *clusterAgent) VolumeWriters(ctx context.Context) (map[string]admin.VolumeWriter, error) {
	return volumeWriters(a.ctl.State()), nil
}

func volumeWriters(st *catalog.State) map[string]admin.VolumeWriter {
	out := make(map[string]admin.VolumeWriter, len(st.Volumes))
	for name, v := range st.Volumes {
		out[name] = admin.VolumeWriter{WriterEpoch: v.Writer, WriterGen: v.WriterGen}
	}
	for name, vm := range st.VMs {
		for _, d := range vm.Disks {
			if _, ok := st.Volumes[d]; !ok {
				continue // an external disk
			}
			w := out[d]
			w.VM = name
			out[d] = w
		}
	}
	return out
}

// CreateVM implements admin.Cluster.
func (a *clusterAgent) CreateVM(ctx context.Context, req admin.CreateVM) (admin.VM, error) {
	vm, err := vmFromRequest(req)
	if err != nil {
		return admin.VM{}, err
	}
	// A disk that is not a volume is bad input here, not a missing VM.
	if err := a.ctl.State().CheckNewVM(vm); err != nil {
		return admin.VM{}, vmError(err, http.StatusBadRequest)
	}
	if err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdCreateVM, VM: &vm}); err != nil {
		return admin.VM{}, vmError(err, http.StatusBadRequest)
	}
	return a.VM(ctx, vm.Name)
}

// vmFromRequest turns a create request into the catalog's VM, with the
// defaults filled in; the catalog checks the rest (CheckNewVM).
func vmFromRequest(req admin.CreateVM) (catalog.VM, error) {
	vm := catalog.VM{Name: req.Name, VCPUs: req.VCPUs, MemoryMiB: defaultMemoryMiB, Disks: slices.Clone(req.Disks),
		Boot: catalog.Boot{Kind: req.Boot.Kind, Kernel: req.Boot.Kernel, Initrd: req.Boot.Initrd, Cmdline: req.Boot.Cmdline}}
	if err := catalog.ValidateVMName(req.Name); err != nil {
		return vm, admin.Errorf(http.StatusBadRequest, "%v", err)
	}
	if vm.VCPUs == 0 {
		vm.VCPUs = defaultVCPUs
	}
	switch m := int64(req.Memory); {
	case m < 0:
		return vm, admin.Errorf(http.StatusBadRequest, "memory: %d is negative: want a size such as \"256M\"", m)
	case m%(1<<20) != 0:
		return vm, admin.Errorf(http.StatusBadRequest, "memory: %d bytes is not a whole number of MiB: want a size such as \"256M\" or \"1G\"", m)
	case m > int64(catalog.MaxMemoryMiB)<<20:
		return vm, admin.Errorf(http.StatusBadRequest, "memory: %s, want %s to %s", volume.FormatSize(m),
			volume.FormatSize(catalog.MinMemoryMiB<<20), volume.FormatSize(catalog.MaxMemoryMiB<<20))
	case m > 0:
		vm.MemoryMiB = int(m >> 20)
	}
	if vm.Boot.Kind == "" {
		vm.Boot.Kind = catalog.BootDisk
		if vm.Boot.Kernel != "" {
			vm.Boot.Kind = catalog.BootKernel
		}
	}
	return vm, nil
}

// StartVM implements admin.Cluster.
func (a *clusterAgent) StartVM(ctx context.Context, name string, req admin.StartVM) (admin.VM, error) {
	st := a.ctl.State()
	vm, ok := st.VMs[name]
	if !ok {
		return admin.VM{}, admin.Errorf(http.StatusNotFound, "no VM named %q", name)
	}
	if vm.State == catalog.VMRunning {
		return admin.VM{}, admin.Errorf(http.StatusConflict, "VM %q is already running on %s (epoch %d)", name, vm.Host, vm.Epoch)
	}
	host, err := startHost(st, vm, req.Host, a.cfg.Name, a.memberState)
	if err != nil {
		return admin.VM{}, err
	}
	// The host and the VM were checked: a refusal now is a race (a
	// concurrent start, a deletion), a conflict.
	if err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdStartVM, Name: name, Target: host}); err != nil {
		return admin.VM{}, vmError(err, http.StatusConflict)
	}
	return a.VM(ctx, name)
}

// memberState returns a host's membership state as this agent sees it
// ("" if gossip does not know it).
func (a *clusterAgent) memberState(name string) string {
	m, ok := a.members.Member(name)
	if !ok {
		return ""
	}
	return string(m.State)
}

// startHost chooses the host to start vm on: the one asked for, else the
// host it last ran on, else the preferred leader of its first disk, else
// self. The host must be in the catalog (else 400) and alive in
// membership (else 409).
func startHost(st *catalog.State, vm *catalog.VM, asked, self string, state func(string) string) (string, error) {
	host, why := asked, ""
	switch {
	case asked != "":
		if _, ok := st.Hosts[asked]; !ok {
			return "", admin.Errorf(http.StatusBadRequest, "host %q is not a host of the cluster (see tandem host list)", asked)
		}
	case vm.Host != "":
		host, why = vm.Host, fmt.Sprintf("VM %q last ran on %s, which ", vm.Name, vm.Host)
	default:
		host = self
		if len(vm.Disks) > 0 {
			if v, ok := st.Volumes[vm.Disks[0]]; ok && v.PreferredLeader != "" {
				host = v.PreferredLeader
			}
		}
		why = fmt.Sprintf("VM %q would start on %s, which ", vm.Name, host)
	}
	if s := state(host); s != string(membership.Alive) {
		if s == "" {
			s = "not known to gossip"
		}
		if why == "" {
			why = fmt.Sprintf("host %s ", host)
		}
		return "", admin.Errorf(http.StatusConflict, "%sis %s: start the VM on an alive host (\"host\" in the body; tandem vm start --host)", why, s)
	}
	return host, nil
}

// StopVM implements admin.Cluster.
func (a *clusterAgent) StopVM(ctx context.Context, name string) (admin.VM, error) {
	if _, ok := a.ctl.State().VMs[name]; !ok {
		return admin.VM{}, admin.Errorf(http.StatusNotFound, "no VM named %q", name)
	}
	if err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdStopVM, Name: name}); err != nil {
		return admin.VM{}, vmError(err, http.StatusNotFound)
	}
	return a.VM(ctx, name)
}

// MigrateVM implements admin.Cluster.
func (a *clusterAgent) MigrateVM(ctx context.Context, name string, req admin.MigrateVM) (admin.VM, error) {
	st := a.ctl.State()
	vm, ok := st.VMs[name]
	if !ok {
		return admin.VM{}, admin.Errorf(http.StatusNotFound, "no VM named %q", name)
	}
	if req.To == "" {
		return admin.VM{}, admin.Errorf(http.StatusBadRequest, "no destination: give the host to migrate VM %q to (\"to\"; tandem vm migrate --to)", name)
	}
	if _, ok := st.Hosts[req.To]; !ok {
		return admin.VM{}, admin.Errorf(http.StatusBadRequest, "no host named %q", req.To)
	}
	if s := a.memberState(req.To); s != string(membership.Alive) {
		return admin.VM{}, admin.Errorf(http.StatusConflict, "host %s is %s: migrate to an alive host", req.To, stateOrUnknown(s))
	}
	if vm.State == catalog.VMRunning {
		if s := a.memberState(vm.Host); s != string(membership.Alive) {
			return admin.VM{}, admin.Errorf(http.StatusConflict, "the VM's host %s is %s: a live migration needs the source running", vm.Host, stateOrUnknown(s))
		}
	}
	if req.MaxBandwidth < 0 {
		return admin.VM{}, admin.Errorf(http.StatusBadRequest, "max_bandwidth %d: want a positive number of bytes per second", req.MaxBandwidth)
	}
	if err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdMigrateVM, Name: name, Target: req.To, Bandwidth: int64(req.MaxBandwidth)}); err != nil {
		return admin.VM{}, vmError(err, http.StatusNotFound)
	}
	return a.VM(ctx, name)
}

// stateOrUnknown names a membership state, "unknown to gossip" for none.
func stateOrUnknown(s string) string {
	if s == "" {
		return "unknown to gossip"
	}
	return s
}

// CancelMigration implements admin.Cluster: the catalog ends the
// migration unless the switchover was recorded first (then 409).
func (a *clusterAgent) CancelMigration(ctx context.Context, name string) (admin.VM, error) {
	vm, ok := a.ctl.State().VMs[name]
	if !ok {
		return admin.VM{}, admin.Errorf(http.StatusNotFound, "no VM named %q", name)
	}
	m := vm.Migration
	if m == nil {
		return admin.VM{}, admin.Errorf(http.StatusConflict, "VM %q is not migrating", name)
	}
	err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdEndMigration, Name: name, Epoch: m.Epoch,
		Result: &catalog.MigrationResult{Result: catalog.ResultCancelled, Error: "cancelled by the operator"}})
	if err != nil {
		if errors.Is(err, catalog.ErrInvalid) || errors.Is(err, catalog.ErrNoMigration) {
			return admin.VM{}, admin.Errorf(http.StatusConflict, "too late to cancel: %s", strings.TrimPrefix(err.Error(), "catalog: "))
		}
		return admin.VM{}, vmError(err, http.StatusNotFound)
	}
	return a.VM(ctx, name)
}

// DeleteVM implements admin.Cluster.
func (a *clusterAgent) DeleteVM(ctx context.Context, name string) error {
	if _, ok := a.ctl.State().VMs[name]; !ok {
		return admin.Errorf(http.StatusNotFound, "no VM named %q", name)
	}
	if err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdDeleteVM, Name: name}); err != nil {
		return vmError(err, http.StatusNotFound)
	}
	return nil
}

// vmError maps a refused VM command to an API error: a missing object is
// notFound (the VM of the URL: 404; a disk or host named in the body:
// 400 or 409), the others get their status from the catalog error
// (admin's handler maps package catalog's errors).
func vmError(err error, notFound int) error {
	msg := strings.TrimPrefix(err.Error(), "catalog: ")
	switch {
	case errors.Is(err, catalog.ErrNotFound):
		return admin.Errorf(notFound, "%s", msg)
	case errors.Is(err, control.ErrNotLeader):
		return admin.Errorf(http.StatusServiceUnavailable, "the control leader changed during the request; retry")
	}
	return err
}
