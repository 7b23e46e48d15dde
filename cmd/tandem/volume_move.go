package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/admin/client"
	"github.com/tandem-project/tandem/volume"
)

func newVolumeMoveCmd(a *adminFlags) *cobra.Command {
	var (
		from, to string
		cancel   bool
		noWait   bool
		wait     time.Duration
		rate     string
	)
	cmd := &cobra.Command{
		Use:   "move NAME --from HOST --to HOST | --cancel",
		Short: "Move one replica of a volume to another host, live",
		Long: `Move volume NAME's replica on host --from to host --to while clients
keep using the volume. The new replica joins the volume's raft group as a
non-voter, receives the volume as a stream and then the log, becomes a
voter once caught up, and its content is compared with the leader's range
by range; then leadership leaves --from if it led, --from leaves the group
and its replica is removed (docs/mirror.md).

The command follows the move and shows its progress (phase, bytes copied,
rate, lag in log entries) on standard error, then prints the result and
the integrity check. --no-wait returns once the move is recorded.
--cancel cancels a move before the source starts leaving the group: the
destination leaves it again and its replica is removed.

NBD clients attached through the agent of --from or --to are disconnected
when the move completes (their agent's export changes from replica to proxy
or back): QEMU reconnects; clients on other agents see no interruption.
` + adminHelp,
		Example: `  tandem volume move vm1 --from n1 --to n4
  tandem volume move vm1 --from n1 --to n4 --max-rate 100M --no-wait
  tandem volume move vm1 --cancel`,
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if cancel == (from != "" || to != "") || (!cancel && (from == "" || to == "")) {
				return errors.New("give either --from HOST --to HOST (start a move) or --cancel (cancel one)")
			}
			var c *client.Client
			var start admin.Volume
			err := a.call(cmd, func(ctx context.Context, cl *client.Client) error {
				c = cl
				var err error
				if cancel {
					start, err = cl.CancelMove(ctx, name)
					return err
				}
				req := admin.MoveVolume{From: from, To: to}
				if rate != "" {
					n, err := volume.ParseSize(rate)
					if err != nil || n <= 0 {
						return fmt.Errorf("--max-rate %q: want bytes per second such as 100M", rate)
					}
					req.MaxRate = admin.Size(n)
				}
				start, err = cl.MoveVolume(ctx, name, req)
				return err
			})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if cancel || noWait {
				if a.output == outputJSON {
					return printJSON(out, start)
				}
				if cancel {
					_, err = fmt.Fprintf(out, "Cancelled the replica move of volume %s; its replicas stay on %s.\n", name, strings.Join(start.Hosts, ", "))
				} else {
					_, err = fmt.Fprintf(out, "Moving volume %s's replica from %s to %s (follow it with: tandem volume show %s).\n", name, from, to, name)
				}
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
			if r.Result != "completed" {
				return fmt.Errorf("move of volume %s's replica from %s to %s %s: %s (replicas: %s)", name, r.From, r.To, r.Result, orDash(r.Error), strings.Join(v.Hosts, ", "))
			}
			rateS := "-"
			if r.Copy > 0 {
				rateS = humanSize(int64(float64(r.Bytes)/r.Copy.Seconds())) + "/s"
			}
			check := "not run"
			if ck := r.Check; ck != nil {
				check = fmt.Sprintf("%d of %d ranges of %s identical at log index %d", ck.Compared-ck.Mismatched, ck.Ranges, humanSize(ck.RangeBytes), ck.Index)
			}
			_, err = fmt.Fprintf(out, "Moved volume %s's replica from %s to %s in %v: %s copied in %v (%s); integrity check: %s. Replicas: %s.\n",
				name, r.From, r.To, r.Finished.Sub(r.Started).Round(time.Millisecond), humanSize(r.Bytes), r.Copy.Round(time.Millisecond), rateS,
				check, strings.Join(v.Hosts, ", "))
			return err
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "host whose replica moves")
	cmd.Flags().StringVar(&to, "to", "", "destination host (alive, without a replica of the volume)")
	cmd.Flags().BoolVar(&cancel, "cancel", false, "cancel the volume's replica move")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the move is recorded")
	cmd.Flags().DurationVar(&wait, "wait-timeout", 30*time.Minute, "how long to follow the move")
	cmd.Flags().StringVar(&rate, "max-rate", "", "limit the volume copy, in bytes per second (e.g. 100M; default: no limit)")
	return cmd
}

// followMove polls the volume until the move that start records has
// ended, drawing its progress on w, and returns the volume then.
func followMove(ctx context.Context, c *client.Client, start admin.Volume, w io.Writer) (admin.Volume, error) {
	if start.Move == nil {
		return admin.Volume{}, fmt.Errorf("the API did not record a move of volume %s", start.Name)
	}
	id := start.Move.ID
	get := func(ctx context.Context) (admin.Volume, error) { return c.Volume(ctx, start.Name) }
	return follow(ctx, w, "the move of volume "+start.Name, "tandem volume show "+start.Name, get, func(v admin.Volume) (string, bool, error) {
		if v.Move != nil && v.Move.ID == id {
			return moveProgressLine(*v.Move), false, nil
		}
		if v.LastMove == nil || v.LastMove.ID != id {
			return "", true, fmt.Errorf("the move of volume %s ended without a result", start.Name)
		}
		return "", true, nil
	})
}

// moveProgressLine renders a move's progress on one line, with a bar of
// the volume copied.
func moveProgressLine(m admin.VolumeMove) string {
	frac := 0.0
	switch {
	case m.Phase != "copying":
		frac = 1
	case m.Size > 0:
		frac = min(1, float64(m.Done)/float64(m.Size))
	}
	line := fmt.Sprintf("%s -> %s %s %s, %s copied", m.From, m.To, bar(frac), m.Phase, humanSize(m.Copied))
	if m.Rate > 0 {
		line += fmt.Sprintf(" at %s/s", humanSize(m.Rate))
	}
	if m.Copying && m.Rate > 0 && m.Done > 0 && m.Size > m.Done {
		// The rest of the volume holds data in the proportion seen so far.
		left := float64(m.Size-m.Done) * float64(m.Copied) / float64(m.Done)
		line += fmt.Sprintf(", ETA %v", time.Duration(left/float64(m.Rate)*float64(time.Second)).Round(time.Second))
	}
	return line + fmt.Sprintf(", lag %d entries", m.Lag)
}
