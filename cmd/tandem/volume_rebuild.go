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

func newVolumeRebuildCmd(a *adminFlags) *cobra.Command {
	var (
		host   string
		noWait bool
		wait   time.Duration
		rate   string
	)
	cmd := &cobra.Command{
		Use:   "rebuild NAME --host HOST",
		Short: "Copy one replica of a volume anew from the leader, in place, live",
		Long: `Rebuild volume NAME's replica on HOST while clients keep using the volume:
the replica leaves the volume's raft group and its files are deleted, then
it joins the group again as a move's destination does (the volume as a
stream from the leader, then the log), becomes a voter once caught up, and
its content is compared with the leader's range by range (docs/mirror.md,
"Rebuilding a replica in place"). This repairs a replica that
tandem volume verify found different, when no other host can take it.

Meanwhile the volume runs on its other replicas, which must all be up:
with three replicas, two remain, and a write needs both. A rebuild needs
a volume of at least three replicas.

An agent rebuilds its replica by itself when it finds it without its
files (a replaced disk, files deleted): the replica does not come back as
an empty voter, which could lose acknowledged writes.

The command follows the rebuild like tandem volume move follows a move
(tandem volume move NAME --cancel cancels it; the agent then asks for a
new one later if its replica is lost).
` + adminHelp,
		Example: `  tandem volume rebuild vm1 --host n2
  tandem volume rebuild vm1 --host n2 --max-rate 100M --no-wait`,
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if host == "" {
				return errors.New("--host HOST is required: the host whose replica is rebuilt")
			}
			req := admin.MoveVolume{From: host, To: host}
			var err error
			if req.MaxRate, err = parseRate("max-rate", rate); err != nil {
				return err
			}
			var c *client.Client
			var start admin.Volume
			err = a.call(cmd, func(ctx context.Context, cl *client.Client) error {
				c = cl
				var err error
				start, err = cl.MoveVolume(ctx, name, req)
				return err
			})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if noWait {
				if a.output == outputJSON {
					return printJSON(out, start)
				}
				_, err = fmt.Fprintf(out, "Rebuilding volume %s's replica on %s (follow it with: tandem volume show %s).\n", name, host, name)
				return err
			}
			ctx, stop := context.WithTimeout(cmd.Context(), wait)
			defer stop()
			v, err := followMove(ctx, c, start, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if a.output == outputJSON {
				return printJSON(out, v)
			}
			r := v.LastMove
			if r.Result != "completed" || r.Error != "" {
				return fmt.Errorf("rebuild of volume %s's replica on %s %s: %s", name, host, r.Result, orDash(r.Error))
			}
			check := checkSummary(r.Check)
			_, err = fmt.Fprintf(out, "Rebuilt volume %s's replica on %s in %v: %s copied in %v (%s); integrity check: %s. Replicas: %s.\n",
				name, host, r.Finished.Sub(r.Started).Round(time.Millisecond), humanSize(r.Bytes), r.Copy.Round(time.Millisecond), orDash(copyRate(r.Bytes, r.Copy)),
				check, strings.Join(v.Hosts, ", "))
			return err
		},
	}
	cmd.Flags().StringVar(&host, "host", "", "host whose replica is rebuilt")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the rebuild is recorded")
	cmd.Flags().DurationVar(&wait, "wait-timeout", 30*time.Minute, "how long to follow the rebuild")
	cmd.Flags().StringVar(&rate, "max-rate", "", "limit the volume copy and the integrity check after it, in bytes per second (e.g. 100M; default: no limit)")
	return cmd
}
