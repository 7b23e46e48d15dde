package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/admin/client"
	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/volume"
)

func newVMCmd() *cobra.Command {
	a := &adminFlags{}
	cmd := &cobra.Command{
		Use:   "vm",
		Short: "Create, list, show, start, stop, migrate, move disks of and delete VMs",
		Long: `Manage the cluster's VMs through the admin API of one of its agents.
A VM is a catalog record: its vCPUs, memory, boot method and disks
(volumes of the cluster, each a disk of at most one VM, or external
sources: image files on the VM's host, other NBD servers' exports), the
host it runs on and whether it should run. Starting a VM gives it a new writer epoch:
its disks then refuse writes from any other run of the VM.

VM names follow the rules of volume names: 1 to 63 lowercase letters,
digits, '.', '_' or '-', starting with a letter or digit.
` + adminHelp,
		Example: `  export TANDEM_ADMIN_TOKEN=$(cat ~/.cache/tandem/dev/admin-token)
  tandem volume create web-root --size 8G
  tandem vm create web --disk web-root --vcpus 2 --memory 1G
  tandem vm start web
  tandem vm list
  tandem vm show web
  tandem vm stop web
  tandem vm delete web`,
	}
	a.register(cmd.PersistentFlags())
	cmd.AddCommand(newVMCreateCmd(a), newVMListCmd(a), newVMShowCmd(a),
		newVMStartCmd(a), newVMStopCmd(a), newVMDeleteCmd(a), newVMMigrateCmd(a), newVMMoveDiskCmd(a))
	return cmd
}

func newVMCreateCmd(a *adminFlags) *cobra.Command {
	var (
		disks                   []string
		vcpus                   int
		memory                  string
		kernel, initrd, cmdline string
	)
	cmd := &cobra.Command{
		Use:   "create NAME --disk DISK [--disk DISK...] [--vcpus N] [--memory SIZE] [--kernel FILE [--initrd FILE] [--cmdline S]]",
		Short: "Create a VM (stopped) on existing volumes or external disks",
		Long: `Create VM NAME, stopped, with the disks given by --disk, in that order
(the guest sees the first one first and boots from it). A disk is

  VOLUME                     a volume of the cluster: it must exist and be
                             a disk of no other VM
  raw:/abs/path              a raw image file on the host the VM runs on
  qcow2:/abs/path            a qcow2 image file on the host the VM runs on
  nbd://HOST[:PORT]/EXPORT   an export of another NBD server (port 10809
                             by default)

External disks are not replicated or fenced by Tandem; bring them in with
tandem vm move-disk. A VM with an image file disk runs on one host: it
does not live-migrate and starts again only where it last ran.

--vcpus is 1 to 16 (default 1); --memory a whole number of MiB from 16M
to 64G (default 256M).

With --kernel the VM boots that kernel instead of its first disk, with
--initrd and the kernel command line --cmdline: absolute paths of files
on the host the VM runs on.

The API refuses (409) an existing name and a disk of another VM, and
(400) a volume that does not exist.
` + adminHelp,
		Example: `  tandem vm create web --disk web-root --disk web-data --vcpus 2 --memory 1G
  tandem vm create legacy --disk raw:/var/lib/vms/legacy.img --disk nbd://10.0.0.9/data
  tandem vm create tiny --disk tiny-root --memory 128M \
      --kernel /srv/images/vmlinuz --initrd /srv/images/initrd.img --cmdline "console=ttyS0"`,
		Args: vmNameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.validate(); err != nil {
				return err
			}
			req, err := vmCreateRequest(cmd, args[0], disks, vcpus, memory, kernel, initrd, cmdline)
			if err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				vm, err := c.CreateVM(ctx, req)
				if err != nil {
					return err
				}
				if a.output == outputJSON {
					return printJSON(cmd.OutOrStdout(), vm)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Created VM %s (stopped; start it with: tandem vm start %s).\n\n", vm.Name, vm.Name)
				return renderVM(cmd.OutOrStdout(), vm)
			})
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&disks, "disk", nil, "a disk: a volume, raw:/path, qcow2:/path or nbd://host[:port]/export (required; repeat or separate with commas; the first is the boot disk)")
	f.IntVar(&vcpus, "vcpus", 0, fmt.Sprintf("virtual CPUs, %d to %d (default 1)", catalog.MinVCPUs, catalog.MaxVCPUs))
	f.StringVar(&memory, "memory", "", "memory, e.g. 512M or 2G: whole MiB from 16M to 64G (default 256M)")
	f.StringVar(&kernel, "kernel", "", "boot this kernel file of the VM's host instead of the first disk (absolute path)")
	f.StringVar(&initrd, "initrd", "", "initrd file of the VM's host, with --kernel (absolute path)")
	f.StringVar(&cmdline, "cmdline", "", "kernel command line, with --kernel")
	return cmd
}

// vmCreateRequest checks vm create's flags and builds its request; flags
// not given are left to the API's defaults.
func vmCreateRequest(cmd *cobra.Command, name string, disks []string, vcpus int, memory, kernel, initrd, cmdline string) (admin.CreateVM, error) {
	req := admin.CreateVM{Name: name}
	if len(disks) == 0 {
		return req, errors.New("--disk is required: the volumes the VM uses as disks, e.g. --disk web-root (tandem volume create makes one)")
	}
	for _, d := range disks {
		if _, err := catalog.ParseDisk(d); err != nil {
			return req, fmt.Errorf("--disk: %s", strings.TrimPrefix(err.Error(), "catalog: invalid: "))
		}
	}
	req.Disks = disks
	if cmd.Flags().Changed("vcpus") {
		if vcpus < catalog.MinVCPUs || vcpus > catalog.MaxVCPUs {
			return req, fmt.Errorf("--vcpus %d: want %d to %d", vcpus, catalog.MinVCPUs, catalog.MaxVCPUs)
		}
		req.VCPUs = vcpus
	}
	if cmd.Flags().Changed("memory") {
		n, err := volume.ParseSize(memory)
		if err != nil {
			return req, fmt.Errorf("--memory: %w", err)
		}
		if n%(1<<20) != 0 || n < catalog.MinMemoryMiB<<20 || n > catalog.MaxMemoryMiB<<20 {
			return req, fmt.Errorf("--memory %s: want whole MiB from %s to %s, e.g. 256M or 2G", memory,
				humanSize(catalog.MinMemoryMiB<<20), humanSize(catalog.MaxMemoryMiB<<20))
		}
		req.Memory = admin.Size(n)
	}
	if kernel == "" {
		if initrd != "" || cmdline != "" {
			return req, errors.New("--initrd and --cmdline go with --kernel (without it the VM boots from its first disk)")
		}
		return req, nil
	}
	for _, p := range [][2]string{{"kernel", kernel}, {"initrd", initrd}} {
		if p[1] != "" && !filepath.IsAbs(p[1]) {
			return req, fmt.Errorf("--%s %s: want an absolute path of a file on the VM's host", p[0], p[1])
		}
	}
	req.Boot = admin.Boot{Kind: admin.BootKernel, Kernel: kernel, Initrd: initrd, Cmdline: cmdline}
	return req, nil
}

func newVMListCmd(a *adminFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the VMs",
		Long: `List the cluster's VMs: the state the catalog records (running or
stopped), the host, the writer epoch of the current run, vCPUs, memory,
disks, and the state of the VM's QEMU process as its host's agent reports
it (RUNTIME: running, paused, io-error..., absent when no process runs it,
unknown when the host did not answer).
` + adminHelp,
		Example: `  tandem vm list
  tandem vm list -o json | jq -r '.[] | select(.state != .runtime.state) | .name'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				vms, err := c.VMs(ctx)
				if err != nil {
					return err
				}
				if a.output == outputJSON {
					if vms == nil {
						vms = []admin.VM{}
					}
					return printJSON(cmd.OutOrStdout(), vms)
				}
				return renderVMs(cmd.OutOrStdout(), vms)
			})
		},
	}
}

func newVMShowCmd(a *adminFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "show NAME",
		Aliases: []string{"get"},
		Short:   "Show a VM, its disks' writer epochs and its QEMU process",
		Long: `Show VM NAME: the catalog's record (state, host, writer epoch, shape,
boot), its QEMU process as its host's agent reports it (state, pid, QMP
socket, serial log, last error), then each disk with its writer epoch and
the catalog index that set it.
` + adminHelp,
		Example: `  tandem vm show web
  tandem vm show web -o json | jq .epoch`,
		Args: vmNameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				vm, err := c.VM(ctx, args[0])
				if err != nil {
					return err
				}
				if a.output == outputJSON {
					return printJSON(cmd.OutOrStdout(), vm)
				}
				return renderVM(cmd.OutOrStdout(), vm)
			})
		},
	}
}

func newVMStartCmd(a *adminFlags) *cobra.Command {
	var host string
	cmd := &cobra.Command{
		Use:   "start NAME [--host HOST]",
		Short: "Start a VM on a host, under a new writer epoch",
		Long: `Start VM NAME on --host: the catalog records it running there under a new
writer epoch, and its disks refuse writes from any other epoch. Without
--host it starts where it last ran, else on the preferred leader of its
first disk, else on the agent that answers. The host must be alive.

The command returns once the catalog records the start; the host's agent
then starts QEMU ("tandem vm show" reports the process). The API refuses
(409) a running VM and a host that is not alive.
` + adminHelp,
		Example: `  tandem vm start web
  tandem vm start web --host n2`,
		Args: vmNameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				vm, err := c.StartVM(ctx, args[0], host)
				if err != nil {
					return err
				}
				if a.output == outputJSON {
					return printJSON(cmd.OutOrStdout(), vm)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Started VM %s on %s (epoch %d).\n\n", vm.Name, vm.Host, vm.Epoch)
				return renderVM(cmd.OutOrStdout(), vm)
			})
		},
	}
	cmd.Flags().StringVar(&host, "host", "", "host to start the VM on (default: where it last ran, else its first disk's preferred leader)")
	return cmd
}

func newVMStopCmd(a *adminFlags) *cobra.Command {
	var (
		noWait bool
		wait   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "stop NAME",
		Short: "Stop a VM",
		Long: `Stop VM NAME: the catalog records it stopped, its writer epoch ends (its
disks accept any writer again) and its host's agent stops QEMU (QMP quit,
then SIGKILL if it has not exited in time). The command returns once the
host reports no QEMU process for the VM (its disks are then detached);
--no-wait returns once the stop is recorded. The VM keeps its host, where
"tandem vm start" starts it next. The API refuses (409) a VM that is
stopped already.
` + adminHelp,
		Example: `  tandem vm stop web
  tandem vm stop web && tandem volume delete web-data`,
		Args: vmNameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				vm, err := c.StopVM(ctx, args[0])
				if err != nil {
					return err
				}
				if !noWait {
					if vm, err = waitQEMUGone(ctx, c, vm, wait, cmd.ErrOrStderr()); err != nil {
						return err
					}
				}
				if a.output == outputJSON {
					return printJSON(cmd.OutOrStdout(), vm)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Stopped VM %s.\n\n", vm.Name)
				return renderVM(cmd.OutOrStdout(), vm)
			})
		},
	}
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the stop is recorded, without waiting for QEMU to exit")
	cmd.Flags().DurationVar(&wait, "wait-timeout", 2*time.Minute, "how long to wait for QEMU to exit")
	return cmd
}

// waitQEMUGone polls VM vm until its host reports no QEMU process for it,
// for at most timeout. A host that does not answer for unknownGrace (it
// may be down) ends the wait with a warning on warn.
func waitQEMUGone(ctx context.Context, c *client.Client, vm admin.VM, timeout time.Duration, warn io.Writer) (admin.VM, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var unknownSince time.Time
	for {
		// The stop's own answer does not ask the VM's host: poll.
		next, err := c.VM(ctx, vm.Name)
		if err != nil && ctx.Err() == nil {
			return vm, err
		}
		if err == nil {
			vm = next
		}
		switch st := vm.Runtime.State; {
		case st == admin.VMAbsent:
			return vm, nil
		case st == admin.VMUnknown && unknownSince.IsZero():
			unknownSince = time.Now()
		case st == admin.VMUnknown && time.Since(unknownSince) >= unknownGrace:
			fmt.Fprintf(warn, "warning: host %s does not answer (%s): QEMU may still run VM %s there\n", vm.Host, oneLine(vm.Runtime.Error), vm.Name)
			return vm, nil
		case st != admin.VMUnknown:
			unknownSince = time.Time{}
		}
		select {
		case <-ctx.Done():
			return vm, fmt.Errorf("VM %s is recorded stopped but QEMU still runs on %s (state %s) after %v: see tandem vm show %s", vm.Name, vm.Host, vm.Runtime.State, timeout, vm.Name)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// unknownGrace is how long vm stop waits for a VM's host that does not
// answer.
const unknownGrace = 10 * time.Second

func newVMDeleteCmd(a *adminFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete a stopped VM (its disks stay)",
		Long: `Delete VM NAME from the catalog. Its disks are volumes and stay, with
their data: another VM may use them, or "tandem volume delete" deletes
them. The API refuses (409) to delete a running VM: stop it first.
` + adminHelp,
		Example: `  tandem vm stop web && tandem vm delete web`,
		Args:    vmNameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				if err := c.DeleteVM(ctx, name); err != nil {
					return err
				}
				if a.output == outputJSON {
					return printJSON(cmd.OutOrStdout(), map[string]string{"deleted": name})
				}
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "Deleted VM %s (its disks stay).\n", name)
				return err
			})
		},
	}
}

// vmNameArg accepts exactly one argument, a valid VM name.
func vmNameArg(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%s: want one VM NAME, got %d arguments", cmd.CommandPath(), len(args))
	}
	return catalog.ValidateVMName(args[0])
}

// renderVMs writes the VMs as a table.
func renderVMs(w io.Writer, vms []admin.VM) error {
	if len(vms) == 0 {
		_, err := fmt.Fprintln(w, "No VMs.")
		return err
	}
	tw := newTable(w)
	tableRow(tw, "NAME", "STATE", "HOST", "EPOCH", "VCPUS", "MEMORY", "DISKS", "RUNTIME")
	for _, vm := range vms {
		tableRow(tw, vm.Name, orDash(vm.State), orDash(vm.Host), epochOrDash(vm.Epoch), vm.VCPUs,
			humanSize(int64(vm.MemoryMiB)<<20), joinOrDash(vmDiskNames(vm), ","), orDash(vm.Runtime.State))
	}
	return tw.Flush()
}

// renderVM writes a VM as key/value lines, then its disks as a table.
func renderVM(w io.Writer, vm admin.VM) error {
	kv := [][2]string{
		{"Name", vm.Name},
		{"State", orDash(vm.State)},
		{"Host", orDash(vm.Host)},
		{"Epoch", epochOrDash(vm.Epoch)},
		{"VCPUs", fmt.Sprint(vm.VCPUs)},
		{"Memory", humanSize(int64(vm.MemoryMiB) << 20)},
	}
	switch vm.Boot.Kind {
	case admin.BootKernel:
		kv = append(kv, [2]string{"Boot", "kernel " + vm.Boot.Kernel})
		if vm.Boot.Initrd != "" {
			kv = append(kv, [2]string{"Initrd", vm.Boot.Initrd})
		}
		if vm.Boot.Cmdline != "" {
			kv = append(kv, [2]string{"Cmdline", strconv.Quote(vm.Boot.Cmdline)})
		}
	case admin.BootDisk:
		first := "-"
		if len(vm.Disks) > 0 {
			first = diskName(vm.Disks[0])
		}
		kv = append(kv, [2]string{"Boot", "disk " + first})
	default:
		kv = append(kv, [2]string{"Boot", orDash(vm.Boot.Kind)})
	}
	kv = append(kv, [2]string{"Created", formatTime(vm.Created)}, [2]string{"Changed", "catalog index " + fmt.Sprint(vm.Changed)})
	rt := vm.Runtime
	kv = append(kv, [2]string{"Runtime", runtimeSummary(rt)})
	if rt.QMPSocket != "" {
		kv = append(kv, [2]string{"QMP socket", rt.QMPSocket})
	}
	if rt.SerialLog != "" {
		kv = append(kv, [2]string{"Serial log", rt.SerialLog})
	}
	if rt.Error != "" {
		kv = append(kv, [2]string{"Runtime error", oneLine(rt.Error)})
	}
	if m := vm.Migration; m != nil {
		kv = append(kv, [2]string{"Migration", fmt.Sprintf("%s -> %s, %s (epoch %d, since %s)", m.From, m.To, m.Phase, m.Epoch, formatTime(m.Started))})
		if p := rt.Migration; p != nil {
			kv = append(kv, [2]string{"Progress", fmt.Sprintf("%s: %s of %s sent, %s left, pass %d, expected downtime %v", p.Status,
				humanSize(p.Transferred), humanSize(p.Total), humanSize(p.Remaining), p.Passes, p.ExpectedDowntime.Round(time.Millisecond))})
		}
	}
	if r := vm.LastMigration; r != nil {
		s := fmt.Sprintf("%s %s -> %s at %s", r.Result, r.From, r.To, formatTime(r.Finished))
		if r.Result == "completed" {
			s += fmt.Sprintf(": downtime %v (QEMU: %v), total %v, %s in %d passes", r.Downtime.Round(time.Millisecond/10),
				r.QEMUDowntime.Round(time.Millisecond/10), r.Total.Round(time.Millisecond), humanSize(r.Bytes), r.Passes)
		}
		if r.Error != "" {
			s += ": " + oneLine(r.Error)
		}
		kv = append(kv, [2]string{"Last migration", s})
	}
	if m := vm.DiskMove; m != nil {
		kv = append(kv, [2]string{"Disk move", fmt.Sprintf("disk %d %s -> %s, %s (since %s)", m.Disk, m.From, m.To, m.Phase, formatTime(m.Started))})
		if p := rt.DiskMove; p != nil {
			kv = append(kv, [2]string{"Progress", fmt.Sprintf("%s: %s of %s copied", p.Status, humanSize(p.Copied), humanSize(p.Total))})
		}
	}
	if r := vm.LastDiskMove; r != nil {
		s := fmt.Sprintf("%s: disk %d %s -> %s at %s", r.Result, r.Disk, r.From, r.To, formatTime(r.Finished))
		if r.Result == "completed" && r.Bytes > 0 {
			s += fmt.Sprintf(": %s copied in %v, pivot %v", humanSize(r.Bytes), r.Copy.Round(time.Millisecond), r.Pivot.Round(time.Millisecond))
		}
		if r.Error != "" {
			s += ": " + oneLine(r.Error)
		}
		kv = append(kv, [2]string{"Last disk move", s})
	}
	if err := keyValues(w, kv); err != nil {
		return err
	}
	if len(vm.Disks) == 0 {
		_, err := fmt.Fprintln(w, "\nNo disks.")
		return err
	}
	io.WriteString(w, "\n")
	tw := newTable(w)
	tableRow(tw, "DISK", "WRITER-EPOCH", "WRITER-GEN")
	for _, d := range vm.Disks {
		tableRow(tw, diskName(d), epochOrDash(d.WriterEpoch), epochOrDash(d.WriterGen))
	}
	return tw.Flush()
}

// runtimeSummary renders a VM's runtime report on one line: "running
// (pid 4242, epoch 57, since 2025-03-01T12:30:00Z)".
func runtimeSummary(rt admin.LocalVM) string {
	var details []string
	if rt.PID != 0 {
		details = append(details, fmt.Sprintf("pid %d", rt.PID))
	}
	if rt.Epoch != 0 {
		details = append(details, fmt.Sprintf("epoch %d", rt.Epoch))
	}
	if !rt.Started.IsZero() {
		details = append(details, "since "+formatTime(rt.Started))
	}
	s := orDash(rt.State)
	if len(details) > 0 {
		s += " (" + strings.Join(details, ", ") + ")"
	}
	return s
}

// vmDiskNames returns a VM's disks' names.
func vmDiskNames(vm admin.VM) []string {
	names := make([]string, len(vm.Disks))
	for i, d := range vm.Disks {
		names[i] = diskName(d)
	}
	return names
}

// diskName names a VM disk: its volume, or its external source.
func diskName(d admin.VMDisk) string {
	if d.Disk != "" {
		return d.Disk
	}
	return d.Volume
}

// epochOrDash renders a writer epoch or catalog index, "-" for 0 (none).
func epochOrDash(n uint64) string {
	if n == 0 {
		return "-"
	}
	return strconv.FormatUint(n, 10)
}

// writerSummary renders a volume's writer fields: "epoch 57 (since catalog
// index 57)", "any" when no epoch holds it.
func writerSummary(epoch, gen uint64) string {
	switch {
	case gen == 0:
		return "any"
	case epoch == 0:
		return fmt.Sprintf("any (since catalog index %d)", gen)
	}
	return fmt.Sprintf("epoch %d (since catalog index %d)", epoch, gen)
}
