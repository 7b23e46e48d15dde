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

func newVMMoveDiskCmd(a *adminFlags) *cobra.Command {
	var (
		toVolume, toFile, toNBD, format string
		maxRate                         string
		cancel, noWait                  bool
		wait                            time.Duration
	)
	cmd := &cobra.Command{
		Use:   "move-disk NAME DISK (--to-volume VOL | --to-file PATH [--format raw|qcow2] | --to-nbd URI | --cancel)",
		Short: "Move a running VM's disk into a volume, or out to a file or NBD server",
		Long: `Move disk DISK of running VM NAME while the guest keeps running: import a
disk that is an image file on the VM's host or another NBD server's export
into a Tandem volume, or export a disk out to a new image file or an NBD
export. DISK is the disk's index (0 for the first) or its name as
tandem vm show lists it (a volume name, raw:/path, qcow2:/path, nbd://...).

The agent of the VM's host mirrors the disk to the target with QEMU's
blockdev-mirror in write-blocking mode (once the copy is ready, every
guest write completes on both sides), records the pivot in the catalog,
then switches the VM's disk to the target; the old disk is closed and
left as it is. See docs/move-disk.md.

  --to-volume VOL  an existing volume of exactly the disk's size that is
                   no VM's disk (tandem volume create VOL --size ...)
  --to-file PATH   a new image file on the VM's host (absolute path; never
                   overwritten), raw or qcow2 (--format; default qcow2
                   for a path ending in .qcow2, else raw)
  --to-nbd URI     nbd://host[:port]/export of another NBD server, at
                   least the disk's size

--max-rate limits the background copy (QEMU's mirror speed); the guest's
own writes go to both sides at once and are never held back.

The command follows the move and shows its progress (bytes copied, rate)
on standard error, then prints the result. --no-wait returns once the
move is recorded. --cancel cancels a move before its pivot: the mirror
stops, the target is closed (a file the move created is removed) and the
VM keeps its disk; once pivoting, it is too late.
` + adminHelp,
		Example: `  tandem volume create web-root --size 8G
  tandem vm move-disk web 0 --to-volume web-root
  tandem vm move-disk web web-root --to-file /var/lib/vms/web.qcow2 --max-rate 200M
  tandem vm move-disk web 0 --cancel`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return fmt.Errorf("want a VM name and a disk (its index, or its name), e.g. tandem vm move-disk web 0 --to-volume web-root; got %d arguments", len(args))
			}
			return catalog.ValidateVMName(args[0])
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name, diskArg := args[0], args[1]
			to, err := moveDiskTarget(toVolume, toFile, toNBD, format, cancel)
			if err != nil {
				return err
			}
			req := admin.MoveDisk{To: to}
			if maxRate != "" {
				n, err := volume.ParseSize(maxRate)
				if err != nil || n <= 0 || cancel {
					return fmt.Errorf("--max-rate %q: want bytes per second such as 100M, with a target", maxRate)
				}
				req.MaxRate = admin.Size(n)
			}
			var c *client.Client
			var start admin.VM
			var n int
			err = a.call(cmd, func(ctx context.Context, cl *client.Client) error {
				c = cl
				vm, err := cl.VM(ctx, name)
				if err != nil {
					return err
				}
				if n, err = diskIndexOf(vm, diskArg); err != nil {
					return err
				}
				if cancel {
					start, err = cl.CancelDiskMove(ctx, name, n)
				} else {
					start, err = cl.MoveDisk(ctx, name, n, req)
				}
				return err
			})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch {
			case cancel:
				if a.output == outputJSON {
					return printJSON(out, start)
				}
				_, err := fmt.Fprintf(out, "Cancelled the move of disk %d of VM %s; it stays %s.\n", n, name, diskName(start.Disks[n]))
				return err
			case noWait:
				if a.output == outputJSON {
					return printJSON(out, start)
				}
				_, err := fmt.Fprintf(out, "Moving disk %d of VM %s to %s (follow it with: tandem vm show %s).\n", n, name, to, name)
				return err
			}
			ctx, stop := context.WithTimeout(cmd.Context(), wait)
			defer stop()
			vm, err := followDiskMove(ctx, c, start, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if a.output == outputJSON {
				return printJSON(out, vm)
			}
			r := vm.LastDiskMove
			if r.Result != "completed" {
				return fmt.Errorf("move of disk %d of VM %s to %s %s: %s (the disk is still %s)", r.Disk, name, r.To, r.Result, orDash(r.Error), r.From)
			}
			rate := ""
			if cr := copyRate(r.Bytes, r.Copy); cr != "" {
				rate = " (" + cr + ")"
			}
			_, err = fmt.Fprintf(out, "Moved disk %d of VM %s from %s to %s: %s copied in %v%s, pivot %v.\n",
				r.Disk, name, r.From, r.To, humanSize(r.Bytes), r.Copy.Round(time.Millisecond), rate, r.Pivot.Round(time.Millisecond))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&toVolume, "to-volume", "", "import: the volume to move the disk into (it must exist, the disk's size, and be no VM's disk)")
	f.StringVar(&toFile, "to-file", "", "export: a new image file on the VM's host (absolute path)")
	f.StringVar(&format, "format", "", "the --to-file's format: raw or qcow2 (default: qcow2 for a .qcow2 path, else raw)")
	f.StringVar(&toNBD, "to-nbd", "", "export: nbd://host[:port]/export of another NBD server")
	f.StringVar(&maxRate, "max-rate", "", "limit the background copy, in bytes per second (e.g. 100M; the guest's writes are never held back)")
	f.BoolVar(&cancel, "cancel", false, "cancel the disk's move (before its pivot)")
	f.BoolVar(&noWait, "no-wait", false, "return once the move is recorded")
	f.DurationVar(&wait, "wait-timeout", 30*time.Minute, "how long to follow the move")
	return cmd
}

// moveDiskTarget checks move-disk's target flags and returns the target
// in the API's syntax ("" with --cancel).
func moveDiskTarget(toVolume, toFile, toNBD, format string, cancel bool) (string, error) {
	given := 0
	for _, s := range []string{toVolume, toFile, toNBD} {
		if s != "" {
			given++
		}
	}
	if cancel {
		if given > 0 || format != "" {
			return "", errors.New("--cancel takes no target")
		}
		return "", nil
	}
	if given != 1 {
		return "", errors.New("give one target: --to-volume VOL, --to-file PATH or --to-nbd URI (or --cancel)")
	}
	if format != "" && toFile == "" {
		return "", errors.New("--format goes with --to-file")
	}
	var to string
	switch {
	case toVolume != "":
		to = toVolume
		if strings.Contains(to, ":") {
			return "", fmt.Errorf("--to-volume %q: want a volume name (for a file use --to-file, for an NBD server --to-nbd)", to)
		}
	case toFile != "":
		if !filepath.IsAbs(toFile) {
			return "", fmt.Errorf("--to-file %q: want an absolute path of a new file on the VM's host", toFile)
		}
		switch format {
		case "":
			format = catalog.DiskRaw
			if strings.HasSuffix(toFile, ".qcow2") {
				format = catalog.DiskQcow2
			}
		case catalog.DiskRaw, catalog.DiskQcow2:
		default:
			return "", fmt.Errorf("--format %q: want raw or qcow2", format)
		}
		to = format + ":" + toFile
	default:
		to = toNBD
		if !strings.HasPrefix(to, "nbd://") {
			return "", fmt.Errorf("--to-nbd %q: want nbd://host[:port]/export", to)
		}
	}
	if _, err := catalog.ParseDisk(to); err != nil {
		return "", errors.New(strings.TrimPrefix(err.Error(), "catalog: invalid: "))
	}
	return to, nil
}

// diskIndexOf finds disk arg of vm: an index, or a disk's name.
func diskIndexOf(vm admin.VM, arg string) (int, error) {
	if n, err := strconv.Atoi(arg); err == nil {
		if n < 0 || n >= len(vm.Disks) {
			return 0, fmt.Errorf("VM %s has no disk %d (its disks are 0 to %d)", vm.Name, n, len(vm.Disks)-1)
		}
		return n, nil
	}
	for i, d := range vm.Disks {
		if diskName(d) == arg {
			return i, nil
		}
	}
	return 0, fmt.Errorf("VM %s has no disk %q (its disks: %s)", vm.Name, arg, strings.Join(vmDiskNames(vm), ", "))
}

// followDiskMove polls the VM until the disk move that start records has
// ended, drawing its progress on w, and returns the VM then.
func followDiskMove(ctx context.Context, c *client.Client, start admin.VM, w io.Writer) (admin.VM, error) {
	if start.DiskMove == nil {
		return admin.VM{}, fmt.Errorf("the API did not record a disk move of VM %s", start.Name)
	}
	m0 := start.DiskMove
	var lastBytes int64
	var lastAt time.Time
	var rate float64
	get := func(ctx context.Context) (admin.VM, error) { return c.VM(ctx, start.Name) }
	return follow(ctx, w, "the disk move of VM "+start.Name, "tandem vm show "+start.Name, get, func(vm admin.VM) (string, bool, error) {
		if m := vm.DiskMove; m != nil && m.ID == m0.ID {
			p := vm.Runtime.DiskMove
			if p == nil || p.Total == 0 {
				return fmt.Sprintf("disk %d %s -> %s: %s", m.Disk, m.From, m.To, m.Phase), false, nil
			}
			now := time.Now()
			if !lastAt.IsZero() && p.Copied >= lastBytes && now.Sub(lastAt) > 0 {
				rate = float64(p.Copied-lastBytes) / now.Sub(lastAt).Seconds()
			}
			lastBytes, lastAt = p.Copied, now
			frac := float64(p.Copied) / float64(p.Total)
			return fmt.Sprintf("disk %d -> %s %s %3.0f%% %s/%s %s/s, %s (%s)", m.Disk, m.To, bar(frac), min(100*frac, 100),
				humanSize(p.Copied), humanSize(p.Total), humanSize(int64(rate)), m.Phase, p.Status), false, nil
		}
		if vm.LastDiskMove == nil || vm.LastDiskMove.ID != m0.ID {
			return "", true, fmt.Errorf("the disk move of VM %s ended without a result", start.Name)
		}
		return "", true, nil
	})
}
