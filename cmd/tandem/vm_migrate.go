package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/admin/client"
)

func newVMMigrateCmd(a *adminFlags) *cobra.Command {
	var (
		to        string
		cancel    bool
		noWait    bool
		wait      time.Duration
		bandwidth string
	)
	cmd := &cobra.Command{
		Use:   "migrate NAME --to HOST | --cancel",
		Short: "Live-migrate a running VM to another host",
		Long: `Move running VM NAME to host --to with QEMU's live migration: the guest
keeps running while its memory is copied and pauses only for the
switchover. At the switchover the VM's disks take the destination's writer
epoch, so the source can never write them again (docs/fencing.md,
docs/migration.md).

The command follows the migration and shows its progress (memory copied,
passes, QEMU's expected downtime) on standard error, then prints the
result: downtime, total time and bytes sent. --no-wait returns once the
migration is recorded. --cancel cancels a migration before its switchover:
the VM keeps running on the source; after the switchover it is too late.
` + adminHelp,
		Example: `  tandem vm migrate web --to n2
  tandem vm migrate web --cancel`,
		Args: vmNameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if cancel == (to != "") {
				return errors.New("give either --to HOST (start a migration) or --cancel (cancel one)")
			}
			var c *client.Client
			var start admin.VM
			err := a.call(cmd, func(ctx context.Context, cl *client.Client) error {
				c = cl
				var err error
				if cancel {
					start, err = cl.CancelMigration(ctx, name)
				} else {
					req := admin.MigrateVM{To: to}
					if req.MaxBandwidth, err = parseRate("max-bandwidth", bandwidth); err != nil {
						return err
					}
					start, err = cl.MigrateVM(ctx, name, req)
				}
				return err
			})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if cancel {
				if a.output == outputJSON {
					return printJSON(out, start)
				}
				fmt.Fprintf(out, "Cancelled the migration of VM %s; it runs on %s.\n", start.Name, start.Host)
				return nil
			}
			if noWait {
				if a.output == outputJSON {
					return printJSON(out, start)
				}
				_, err := fmt.Fprintf(out, "Migrating VM %s from %s to %s (follow it with: tandem vm show %s).\n", name, start.Host, to, name)
				return err
			}
			ctx, stop := context.WithTimeout(cmd.Context(), wait)
			defer stop()
			vm, err := followMigration(ctx, c, start, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if a.output == outputJSON {
				return printJSON(out, vm)
			}
			r := vm.LastMigration
			if r.Result != "completed" {
				return fmt.Errorf("migration of VM %s to %s %s: %s (the VM runs on %s)", name, r.To, r.Result, orDash(r.Error), vm.Host)
			}
			_, err = fmt.Fprintf(out, "Migrated VM %s from %s to %s: downtime %v (QEMU: %v), total %v, %s sent in %d passes.\n",
				name, r.From, r.To, r.Downtime.Round(time.Millisecond/10), r.QEMUDowntime.Round(time.Millisecond/10),
				r.Total.Round(time.Millisecond), humanSize(r.Bytes), r.Passes)
			return err
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "destination host")
	cmd.Flags().BoolVar(&cancel, "cancel", false, "cancel the VM's migration (before its switchover)")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the migration is recorded")
	cmd.Flags().DurationVar(&wait, "wait-timeout", 10*time.Minute, "how long to follow the migration")
	cmd.Flags().StringVar(&bandwidth, "max-bandwidth", "", "limit the migration stream, in bytes per second (e.g. 100M; default: no limit)")
	return cmd
}

// followMigration polls the VM until the migration that start records
// has ended, drawing its progress on w, and returns the VM then.
func followMigration(ctx context.Context, c *client.Client, start admin.VM, w io.Writer) (admin.VM, error) {
	if start.Migration == nil {
		return admin.VM{}, fmt.Errorf("the API did not record a migration of VM %s", start.Name)
	}
	m0 := start.Migration
	get := func(ctx context.Context) (admin.VM, error) { return c.VM(ctx, start.Name) }
	return follow(ctx, w, "the migration of VM "+start.Name, "tandem vm show "+start.Name, get, func(vm admin.VM) (string, bool, error) {
		if vm.Migration != nil && vm.Migration.Epoch == m0.Epoch {
			return progressLine(vm), false, nil
		}
		if vm.LastMigration == nil || vm.LastMigration.Finished.Before(m0.Started) {
			return "", true, fmt.Errorf("the migration of VM %s ended without a result", start.Name)
		}
		return "", true, nil
	})
}

// progressLine renders a migration's progress on one line, with a bar of
// the memory sent.
func progressLine(vm admin.VM) string {
	m := vm.Migration
	p := vm.Runtime.Migration
	if p == nil || p.Total == 0 {
		return fmt.Sprintf("%s -> %s: %s", m.From, m.To, m.Phase)
	}
	pct := 100 * float64(p.Transferred) / float64(p.Total)
	return fmt.Sprintf("%s -> %s %s %3.0f%% %s/%s pass %d, expected downtime %v, %s",
		m.From, m.To, bar(pct/100), min(pct, 100),
		humanSize(p.Transferred), humanSize(p.Total), p.Passes, p.ExpectedDowntime.Round(time.Millisecond), p.Status)
}
