package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/admin/client"
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
		Use:   "move NAME --from HOST --to HOST | --to HOST,HOST,HOST | --cancel",
		Short: "Move one replica of a volume, or all of them, to other hosts, live",
		Long: `Move volume NAME's replica on host --from to host --to while clients
keep using the volume. Without --from, --to lists the volume's replica set
after the move (as many hosts as it has replicas): each replica on a host
not listed moves to a listed host without one, one move after the other,
the preferred leader's replica last; a move that fails or is cancelled
drops the rest. The new replica joins the volume's raft group as a
non-voter, receives the volume as a stream and then the log, becomes a
voter once caught up, and its content is compared with the leader's range
by range; then leadership leaves --from if it led, --from leaves the group
and its replica is removed (docs/mirror.md).

The command follows the move and shows its progress (phase, bytes copied,
rate, lag in log entries) on standard error, then prints the result and
the integrity check. --no-wait returns once the move is recorded.
--cancel cancels a move before the source starts leaving the group: the
destination leaves it again and its replica is removed.

NBD clients keep their connections through every agent, those of --from
and --to included: when the move completes, their agent's export of the
volume switches between its replica and a proxy under them.
` + adminHelp,
		Example: `  tandem volume move vm1 --from n1 --to n4
  tandem volume move vm1 --from n1 --to n4 --max-rate 100M --no-wait
  tandem volume move vm1 --to n4,n5,n6      # the whole replica set
  tandem volume move vm1 --cancel`,
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if cancel == (from != "" || to != "") || (!cancel && to == "") {
				return errors.New("give either --from HOST --to HOST (move one replica), --to HOST,HOST,... (move the replica set) or --cancel (cancel a move)")
			}
			var hosts []string
			if from == "" && !cancel {
				hosts = strings.Split(to, ",")
				if slices.Contains(hosts, "") {
					return fmt.Errorf("--to %q: want HOST,HOST,... (no empty names)", to)
				}
			} else if strings.Contains(to, ",") {
				return fmt.Errorf("--to %q: with --from, --to is one host", to)
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
				if hosts != nil {
					req = admin.MoveVolume{Hosts: hosts}
				}
				if req.MaxRate, err = parseRate("max-rate", rate); err != nil {
					return err
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
				} else if m := start.Move; m != nil {
					_, err = fmt.Fprintf(out, "Moving volume %s's replica from %s to %s, %d more planned (follow it with: tandem volume show %s).\n", name, m.From, m.To, len(start.PlannedMoves), name)
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
			if r.Result != "completed" || r.Error != "" {
				return fmt.Errorf("move of volume %s's replica from %s to %s %s: %s (replicas: %s)", name, r.From, r.To, r.Result, orDash(r.Error), strings.Join(v.Hosts, ", "))
			}
			rateS := orDash(copyRate(r.Bytes, r.Copy))
			check := checkSummary(r.Check)
			what := "Moved volume %s's replica from %s to %s in %v"
			if hosts != nil {
				what = "Moved volume %s's replicas in " + strconv.Itoa(1+len(start.PlannedMoves)) + " moves, the last from %s to %s in %v"
			}
			_, err = fmt.Fprintf(out, what+": %s copied in %v (%s); integrity check: %s. Replicas: %s.\n",
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
	cmd.Flags().StringVar(&rate, "max-rate", "", "limit the volume copy and the integrity check after it, in bytes per second (e.g. 100M; default: no limit)")
	return cmd
}

// followMove polls the volume until the move that start records, and the
// moves planned after it, have ended, drawing their progress on w, and
// returns the volume then.
func followMove(ctx context.Context, c *client.Client, start admin.Volume, w io.Writer) (admin.Volume, error) {
	if start.Move == nil {
		return admin.Volume{}, fmt.Errorf("the API did not record a move of volume %s", start.Name)
	}
	first, total := start.Move.ID, 1+len(start.PlannedMoves)
	get := func(ctx context.Context) (admin.Volume, error) { return c.Volume(ctx, start.Name) }
	return follow(ctx, w, "the move of volume "+start.Name, "tandem volume show "+start.Name, get, func(v admin.Volume) (string, bool, error) {
		if v.Move != nil && v.Move.ID >= first {
			line := moveProgressLine(*v.Move)
			if total > 1 {
				line = fmt.Sprintf("move %d of %d: %s", total-len(v.PlannedMoves), total, line)
			}
			return line, false, nil
		}
		if v.LastMove == nil || v.LastMove.ID < first {
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
	case m.Phase == "evicting":
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
