package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/admin/client"
)

func newVolumeVerifyCmd(a *adminFlags) *cobra.Command {
	var (
		noWait, cancel bool
		wait           time.Duration
		rate           string
	)
	cmd := &cobra.Command{
		Use:   "verify NAME [--max-rate RATE] [--no-wait] | --cancel",
		Short: "Compare every replica of a volume with the leader's, live",
		Long: `Verify volume NAME's replicas while clients keep using it: the agent that
leads the volume compares each other replica with its own, range by range
(1 MiB), by checksums taken at a common log index, without copying data
and without stopping writes; ranges written during every read (a busy
journal) are hashed by every replica at one log index through the log
(docs/mirror.md, "Verifying a volume's replicas"). A replica that differs has been damaged behind the volume's
back (a disk that returned other bytes than it was given, a file changed
by hand): rebuild it in place (tandem volume rebuild NAME --host HOST)
or move it to another host (tandem volume move); both copy the leader's
data and check the copy. If every other replica differs from the
leader's, the leader's is the damaged one: its rebuild hands leadership
to another replica first.

The command waits for the result, prints it and fails if a replica
differs or could not be compared. --no-wait returns once the
verification is recorded; tandem volume show prints the last result.
--max-rate limits how fast each replica is read, so that the
verification leaves the disks to the VMs. --cancel stops a verification
(one asked for, or a scheduled one: see --verify-every of tandem agent).
` + adminHelp,
		Example: `  tandem volume verify vm1
  tandem volume verify vm1 --max-rate 200M --no-wait
  tandem volume verify vm1 --cancel`,
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if cancel {
				if noWait || rate != "" {
					return errors.New("--cancel takes no --no-wait or --max-rate")
				}
				var v admin.Volume
				err := a.call(cmd, func(ctx context.Context, cl *client.Client) error {
					var err error
					v, err = cl.CancelVerify(ctx, name)
					return err
				})
				if err != nil {
					return err
				}
				if a.output == outputJSON {
					return printJSON(cmd.OutOrStdout(), v)
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "Cancelled the verification of volume %s.\n", name)
				return err
			}
			var req admin.VerifyVolume
			var err error
			if req.MaxRate, err = parseRate("max-rate", rate); err != nil {
				return err
			}
			var c *client.Client
			var start admin.Volume
			err = a.call(cmd, func(ctx context.Context, cl *client.Client) error {
				c = cl
				var err error
				start, err = cl.VerifyVolume(ctx, name, req)
				return err
			})
			if err != nil {
				return err
			}
			if start.Verify == nil {
				return fmt.Errorf("the API did not record a verification of volume %s", name)
			}
			out := cmd.OutOrStdout()
			if noWait {
				if a.output == outputJSON {
					return printJSON(out, start)
				}
				_, err = fmt.Fprintf(out, "Verifying volume %s's replicas (see the result with: tandem volume show %s).\n", name, name)
				return err
			}
			ctx, stop := context.WithTimeout(cmd.Context(), wait)
			defer stop()
			id := start.Verify.ID
			get := func(ctx context.Context) (admin.Volume, error) { return c.Volume(ctx, name) }
			v, err := follow(ctx, cmd.ErrOrStderr(), "the verification of volume "+name, "tandem volume show "+name, get, func(v admin.Volume) (string, bool, error) {
				if v.Verify != nil && v.Verify.ID == id {
					return fmt.Sprintf("verifying, leader %s", orDash(v.Leader)), false, nil
				}
				if v.LastVerify == nil || v.LastVerify.ID != id {
					return "", true, fmt.Errorf("the verification of volume %s ended without a result", name)
				}
				return "", true, nil
			})
			if err != nil {
				return err
			}
			if v.LastVerify.Cancelled {
				return fmt.Errorf("the verification of volume %s was cancelled", name)
			}
			if a.output == outputJSON {
				if err := printJSON(out, v); err != nil {
					return err
				}
			} else if _, err := fmt.Fprintln(out, verifyLine(v.Name, *v.LastVerify)); err != nil {
				return err
			}
			if !v.LastVerify.OK {
				return fmt.Errorf("volume %s: replicas differ or could not be compared: %s", name, orDash(v.LastVerify.Error))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the verification is recorded")
	cmd.Flags().BoolVar(&cancel, "cancel", false, "cancel the volume's verification")
	cmd.Flags().DurationVar(&wait, "wait-timeout", 6*time.Hour, "how long to wait for the result")
	cmd.Flags().StringVar(&rate, "max-rate", "", "limit how fast each replica is read, in bytes per second (e.g. 200M; default: no limit)")
	return cmd
}

// verifyLine renders a verification's result on one line.
func verifyLine(name string, r admin.VerifyResult) string {
	var parts []string
	for _, vr := range r.Replicas {
		ck := vr.Check
		switch {
		case ck.OK:
			parts = append(parts, fmt.Sprintf("%s identical (%d ranges of %s at log index %d%s)", vr.Host, ck.Ranges, humanSize(ck.RangeBytes), ck.Index, pinnedNote(&ck)))
		case ck.Mismatched > 0:
			parts = append(parts, fmt.Sprintf("%s DIFFERS in %d of %d ranges (%s)", vr.Host, ck.Mismatched, ck.Ranges, ck.Error))
		default:
			parts = append(parts, fmt.Sprintf("%s not compared (%s)", vr.Host, orDash(ck.Error)))
		}
	}
	verdict := "every replica matches"
	if !r.OK {
		verdict = "REPLICAS DIFFER OR WERE NOT COMPARED"
	}
	return fmt.Sprintf("Verified volume %s in %v against leader %s's replica: %s: %s.", name,
		r.Finished.Sub(r.Started).Round(time.Millisecond), r.Leader, verdict, strings.Join(parts, "; "))
}

// lastVerifySummary renders how a volume's last verification ended, for
// tandem volume show.
func lastVerifySummary(r *admin.VerifyResult) string {
	switch {
	case r.OK:
		return fmt.Sprintf("passed %s: %d replicas identical to leader %s's", formatTime(r.Finished), len(r.Replicas), r.Leader)
	case r.Cancelled:
		return fmt.Sprintf("cancelled %s", formatTime(r.Finished))
	}
	return fmt.Sprintf("FAILED %s: %s (leader %s)", formatTime(r.Finished), orDash(r.Error), r.Leader)
}
