package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/admin/client"
)

func newHostCmd() *cobra.Command {
	a := &adminFlags{}
	cmd := &cobra.Command{
		Use:   "host",
		Short: "Inspect the cluster's hosts",
		Long: `Inspect the hosts of the Tandem cluster through the admin API of one of
its agents.
` + adminHelp,
		Example: `  tandem host list`,
	}
	a.register(cmd.PersistentFlags())
	cmd.AddCommand(newHostListCmd(a))
	return cmd
}

func newHostListCmd(a *adminFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the cluster's hosts, their state and capacity",
		Long: `List the hosts of the cluster's catalog:

  STATE      alive, failed or left, as membership sees the host
  CONTROL    its role in the control plane: leader, voter or nonvoter
  NBD        its NBD address
  CAPACITY   the bytes it offers for volume replicas
  ALLOCATED  the bytes of the replicas placed on it
  FREE       the free space of its data filesystem, as it last reported
  REPLICAS   the volume replicas it holds
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
	tableRow(tw, "NAME", "STATE", "CONTROL", "NBD", "CAPACITY", "ALLOCATED", "FREE", "REPLICAS")
	for _, h := range hosts {
		tableRow(tw, h.Name, orDash(h.State), orDash(h.Control), orDash(h.NBDAddr),
			humanSize(h.Capacity), humanSize(h.Allocated), humanSize(h.DiskFree), h.Replicas)
	}
	return tw.Flush()
}
