package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/admin/client"
)

func newHostCmd() *cobra.Command {
	a := &adminFlags{}
	cmd := &cobra.Command{
		Use:   "host",
		Short: "Inspect, drain and undrain the cluster's hosts",
		Long: `Inspect the hosts of the Tandem cluster through the admin API of one of
its agents, and drain them for maintenance.
` + adminHelp,
		Example: `  tandem host list
  tandem host drain n2
  tandem host undrain n2`,
	}
	a.register(cmd.PersistentFlags())
	cmd.AddCommand(newHostListCmd(a), newHostDrainCmd(a, true), newHostDrainCmd(a, false))
	return cmd
}

func newHostDrainCmd(a *adminFlags, drain bool) *cobra.Command {
	var (
		noWait bool
		wait   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "drain HOST",
		Short: "Move every replica off a host (maintenance); it takes no new ones",
		Long: `Drain HOST: it takes no new replicas, and the control leader moves the
replicas it holds to other alive hosts, a few volumes at a time, each by a
live replica move (tandem volume move), leadership included. The command
follows the drain and shows how many replicas are left on the host;
--no-wait returns at once. "tandem host undrain HOST" puts the host back
in placement (its replicas do not move back by themselves).
` + adminHelp,
		Example: `  tandem host drain n2 && systemctl -H n2 stop tandem-agent`,
		Args:    cobra.ExactArgs(1),
	}
	if !drain {
		cmd.Use, cmd.Short = "undrain HOST", "Put a drained host back in placement"
		cmd.Long = `Undrain HOST: it takes new replicas again (volume creation, moves,
healing). Replicas moved away do not come back by themselves.
` + adminHelp
		cmd.Example = `  tandem host undrain n2`
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		name := args[0]
		var c *client.Client
		var h admin.Host
		err := a.call(cmd, func(ctx context.Context, cl *client.Client) error {
			c = cl
			var err error
			h, err = cl.DrainHost(ctx, name, drain)
			return err
		})
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		if !drain || noWait {
			if a.output == outputJSON {
				return printJSON(out, h)
			}
			state := "undrained"
			if drain {
				state = fmt.Sprintf("draining (%d replicas to move)", h.Replicas)
			}
			_, err := fmt.Fprintf(out, "Host %s %s.\n", name, state)
			return err
		}
		ctx, stop := context.WithTimeout(cmd.Context(), wait)
		defer stop()
		last := -1
		for h.Replicas > 0 {
			if h.Replicas != last {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: %d replicas left to move\n", name, h.Replicas)
				last = h.Replicas
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("draining %s: %w with %d replicas left (it goes on; see tandem host list)", name, ctx.Err(), h.Replicas)
			case <-time.After(500 * time.Millisecond):
			}
			hs, err := c.Hosts(ctx)
			if err != nil {
				continue
			}
			for _, x := range hs {
				if x.Name == name {
					h = x
				}
			}
		}
		if a.output == outputJSON {
			return printJSON(out, h)
		}
		_, err = fmt.Fprintf(out, "Host %s drained: it holds no replica.\n", name)
		return err
	}
	if drain {
		cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the drain is recorded")
		cmd.Flags().DurationVar(&wait, "wait-timeout", time.Hour, "how long to follow the drain")
	}
	return cmd
}

func newHostListCmd(a *adminFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the cluster's hosts, their state and capacity",
		Long: `List the hosts of the cluster's catalog:

  STATE      alive, failed or left, as membership sees the host (and for
             how long, if not alive), or revoked (shut out for a revoked
             peer certificate); drained if it is drained
  CONTROL    its role in the control plane: leader, voter or nonvoter
  NBD        its NBD address
  CAPACITY   the bytes it offers for volume replicas
  ALLOCATED  the bytes of the replicas placed on it
  FREE       the free space of its data filesystem, as it last reported
  REPLICAS   the volume replicas it holds
  VERSION    the build its agent runs (every agent of a cluster must run
             the same: README, "Upgrades")
` + adminHelp,
		Example: `  tandem host list
  tandem host list -o json | jq -r '.[] | select(.state != "alive") | .name'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				hosts, err := c.Hosts(ctx)
				if err != nil {
					return err
				}
				if a.output == outputJSON {
					if hosts == nil {
						hosts = []admin.Host{}
					}
					return printJSON(cmd.OutOrStdout(), hosts)
				}
				return renderHosts(cmd.OutOrStdout(), hosts)
			})
		},
	}
}

// renderHosts writes the hosts as a table.
func renderHosts(w io.Writer, hosts []admin.Host) error {
	if len(hosts) == 0 {
		_, err := fmt.Fprintln(w, "No hosts.")
		return err
	}
	tw := newTable(w)
	tableRow(tw, "NAME", "STATE", "CONTROL", "NBD", "CAPACITY", "ALLOCATED", "FREE", "REPLICAS", "VERSION")
	for _, h := range hosts {
		state := orDash(h.State)
		if h.State != "alive" && !h.Since.IsZero() {
			state += " " + time.Since(h.Since).Round(time.Second).String()
		}
		if h.Drained {
			state += ",drained"
		}
		tableRow(tw, h.Name, state, orDash(h.Control), orDash(h.NBDAddr),
			humanSize(h.Capacity), humanSize(h.Allocated), humanSize(h.DiskFree), h.Replicas, orDash(shortVersion(h.Version)))
	}
	return tw.Flush()
}

// shortVersion is the build of version string v ("tandem 664b51b (go1.26.8,
// linux/amd64)" gives 664b51b).
func shortVersion(v string) string {
	v, _, _ = strings.Cut(v, " (")
	return strings.TrimPrefix(v, "tandem ")
}
