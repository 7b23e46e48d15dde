package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/admin/client"
	"github.com/tandem-project/tandem/volume"
)

// maxReplicas bounds --replicas, as the API does.
const maxReplicas = 5

func newVolumeCmd() *cobra.Command {
	a := &adminFlags{}
	cmd := &cobra.Command{
		Use:     "volume",
		Aliases: []string{"vol"},
		Short:   "Create, list, show, resize and delete volumes",
		Long: `Manage the cluster's volumes through the admin API of one of its agents.
A volume is a virtual disk replicated on 1 to 5 hosts; every agent serves
every volume over NBD.

Volume names are 1 to 63 lowercase letters, digits, '.', '_' or '-',
starting with a letter or digit. Sizes are bytes or have a binary suffix:
512M, 20G, 1TiB.
` + adminHelp,
		Example: `  export TANDEM_ADMIN_TOKEN=$(cat ~/.cache/tandem/dev/admin-token)
  tandem volume create vm1 --size 20G
  tandem volume list
  tandem volume show vm1
  tandem volume resize vm1 --size 40G
  tandem volume verify vm1
  tandem volume delete vm1`,
	}
	a.register(cmd.PersistentFlags())
	cmd.AddCommand(newVolumeCreateCmd(a), newVolumeListCmd(a), newVolumeShowCmd(a),
		newVolumeResizeCmd(a), newVolumeDeleteCmd(a))
	cmd.AddCommand(newVolumeMoveCmd(a), newVolumeVerifyCmd(a), newVolumeRebuildCmd(a))
	return cmd
}

func newVolumeCreateCmd(a *adminFlags) *cobra.Command {
	var (
		size     string
		replicas int
	)
	cmd := &cobra.Command{
		Use:   "create NAME --size SIZE [--replicas N]",
		Short: "Create a replicated volume",
		Long: `Create volume NAME of --size bytes with --replicas replicas (default 3,
or every host if the cluster has fewer). The cluster places the replicas
on hosts with free capacity and picks the preferred leader. The command
prints the new volume and its NBD URI.

The API refuses (409) an existing name, and a replica count the cluster
has too few hosts for.
` + adminHelp,
		Example: `  tandem volume create vm1 --size 20G
  tandem volume create scratch --size 512M --replicas 1 --token-file ./admin-token`,
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.validate(); err != nil {
				return err
			}
			req := admin.CreateVolume{Name: args[0]}
			if size == "" {
				return errors.New("--size is required, e.g. --size 20G")
			}
			n, err := parseVolumeSize(size)
			if err != nil {
				return err
			}
			req.Size = admin.Size(n)
			if cmd.Flags().Changed("replicas") {
				if replicas < 1 || replicas > maxReplicas {
					return fmt.Errorf("--replicas %d: want 1 to %d", replicas, maxReplicas)
				}
				req.Replicas = replicas
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				v, err := c.CreateVolume(ctx, req)
				if err != nil {
					return err
				}
				if a.output == outputJSON {
					return printJSON(cmd.OutOrStdout(), v)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Created volume %s (%s on %s).\n\n", v.Name, humanSize(v.Size), hostList(v.Hosts))
				return renderVolume(cmd.OutOrStdout(), v)
			})
		},
	}
	cmd.Flags().StringVar(&size, "size", "", "volume size, e.g. 20G, 512MiB (required)")
	cmd.Flags().IntVar(&replicas, "replicas", 0, "replica count, 1 to 5 (default: 3, or every host if fewer)")
	return cmd
}

func newVolumeListCmd(a *adminFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the volumes",
		Long: `List the cluster's volumes: size, replica hosts (in placement order),
the replica leading each now, state (ready, degraded or unavailable), how
many NBD connections are attached to it and the VM it is a disk of.
` + adminHelp,
		Example: `  tandem volume list
  tandem volume list -o json | jq -r '.[] | select(.state != "ready") | .name'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				vols, err := c.Volumes(ctx)
				if err != nil {
					return err
				}
				if a.output == outputJSON {
					if vols == nil {
						vols = []admin.Volume{}
					}
					return printJSON(cmd.OutOrStdout(), vols)
				}
				return renderVolumes(cmd.OutOrStdout(), vols)
			})
		},
	}
}

func newVolumeShowCmd(a *adminFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "show NAME",
		Aliases: []string{"get"},
		Short:   "Show a volume and the status of its replicas",
		Long: `Show volume NAME: its size, state, leader, NBD URI, attached clients,
the VM it is a disk of and the writer epoch allowed to write it, then each
replica's raft state, term, commit and applied indexes, how many
entries it lags behind the leader's commit, and how long ago a follower
last heard from the leader.
` + adminHelp,
		Example: `  tandem volume show vm1
  tandem volume show vm1 -o json | jq .uri`,
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				v, err := c.Volume(ctx, args[0])
				if err != nil {
					return err
				}
				if a.output == outputJSON {
					return printJSON(cmd.OutOrStdout(), v)
				}
				return renderVolume(cmd.OutOrStdout(), v)
			})
		},
	}
}

func newVolumeResizeCmd(a *adminFlags) *cobra.Command {
	var size string
	cmd := &cobra.Command{
		Use:   "resize NAME --size SIZE",
		Short: "Grow a volume",
		Long: `Grow volume NAME to --size bytes. Volumes only grow: the API refuses
(400) a smaller size. NBD fixes the size when a connection starts: clients
see the new size when they reconnect.
` + adminHelp,
		Example: `  tandem volume resize vm1 --size 40G`,
		Args:    nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.validate(); err != nil {
				return err
			}
			if size == "" {
				return errors.New("--size is required, e.g. --size 40G")
			}
			n, err := parseVolumeSize(size)
			if err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				v, err := c.ResizeVolume(ctx, args[0], n)
				if err != nil {
					return err
				}
				if a.output == outputJSON {
					return printJSON(cmd.OutOrStdout(), v)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Resized volume %s to %s.\n\n", v.Name, humanSize(v.Size))
				return renderVolume(cmd.OutOrStdout(), v)
			})
		},
	}
	cmd.Flags().StringVar(&size, "size", "", "new volume size, e.g. 40G (required, not below the current size)")
	return cmd
}

func newVolumeDeleteCmd(a *adminFlags) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "delete NAME [--force]",
		Aliases: []string{"rm"},
		Short:   "Delete a volume and its data",
		Long: `Delete volume NAME and the data of all its replicas. This cannot be
undone. The API refuses (409) to delete a volume with NBD clients attached
unless --force is given, and a disk of a VM even then (delete the VM
first).
` + adminHelp,
		Example: `  tandem volume delete vm1
  tandem volume delete vm1 --force`,
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				err := c.DeleteVolume(ctx, name, force)
				if client.StatusOf(err) == http.StatusConflict && !force && mentions(err, "attached") && !mentions(err, "force") {
					return fmt.Errorf("%w (--force deletes it anyway)", err)
				}
				if err != nil {
					return err
				}
				if a.output == outputJSON {
					return printJSON(cmd.OutOrStdout(), map[string]string{"deleted": name})
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "Deleted volume %s.\n", name)
				return err
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete the volume even if NBD clients are attached")
	return cmd
}

// parseVolumeSize parses --size: a positive size.
func parseVolumeSize(s string) (int64, error) {
	n, err := volume.ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("--size: %w", err)
	}
	if n <= 0 {
		return 0, fmt.Errorf("--size %q: want a positive size such as 20G", s)
	}
	return n, nil
}

// renderVolumes writes the volumes as a table.
func renderVolumes(w io.Writer, vols []admin.Volume) error {
	if len(vols) == 0 {
		_, err := fmt.Fprintln(w, "No volumes.")
		return err
	}
	tw := newTable(w)
	tableRow(tw, "NAME", "SIZE", "REPLICAS", "LEADER", "STATE", "ATTACHED", "VM")
	for _, v := range vols {
		tableRow(tw, v.Name, humanSize(v.Size), joinOrDash(v.Hosts, ","), orDash(v.Leader), orDash(v.State), v.Attached, orDash(v.VM))
	}
	return tw.Flush()
}

// renderVolume writes a volume as key/value lines, then its replicas as a
// table.
func renderVolume(w io.Writer, v admin.Volume) error {
	kv := [][2]string{
		{"Name", v.Name},
		{"Size", fmt.Sprintf("%s (%d bytes)", humanSize(v.Size), v.Size)},
		{"State", orDash(v.State)},
		{"Leader", orDash(v.Leader)},
		{"Preferred leader", orDash(v.PreferredLeader)},
		{"URI", orDash(v.URI)},
		{"Attached", fmt.Sprint(v.Attached)},
		{"VM", orDash(v.VM)},
		{"Writer", writerSummary(v.WriterEpoch, v.WriterGen)},
		{"Created", formatTime(v.Created)},
	}
	if m := v.Move; m != nil {
		kv = append(kv, [2]string{"Move", moveSummary(m)})
	}
	if r := v.LastMove; r != nil {
		kv = append(kv, [2]string{"Last move", lastMoveSummary(r)})
	}
	if vf := v.Verify; vf != nil {
		kv = append(kv, [2]string{"Verification", fmt.Sprintf("running since %s (id %d)", formatTime(vf.Started), vf.ID)})
	}
	if r := v.LastVerify; r != nil {
		kv = append(kv, [2]string{"Last verification", lastVerifySummary(r)})
	}
	if err := keyValues(w, kv); err != nil {
		return err
	}
	if len(v.Replicas) == 0 {
		_, err := fmt.Fprintf(w, "\nNo replica status (hosts: %s).\n", joinOrDash(v.Hosts, ", "))
		return err
	}
	withErrors := false
	for _, r := range v.Replicas {
		withErrors = withErrors || r.Error != ""
	}
	io.WriteString(w, "\n")
	tw := newTable(w)
	header := []any{"HOST", "STATE", "TERM", "COMMIT", "APPLIED", "LAG", "LAST-CONTACT"}
	if withErrors {
		header = append(header, "ERROR")
	}
	tableRow(tw, header...)
	for _, r := range v.Replicas {
		cells := []any{r.Host, orDash(r.State), r.Term, r.CommitIndex, r.AppliedIndex, r.Lag, formatAgo(r.LastContact)}
		if r.Term == 0 {
			// Raft terms start at 1: the replica reported no raft status
			// (failed or unreachable).
			cells = []any{r.Host, orDash(r.State), "-", "-", "-", "-", "-"}
		}
		if withErrors {
			e := orDash(oneLine(r.Error))
			if !r.FailedSince.IsZero() {
				e = "since " + formatTime(r.FailedSince) + ": " + e
			}
			cells = append(cells, e)
		}
		tableRow(tw, cells...)
	}
	return tw.Flush()
}

// moveSummary renders a replica move in progress on one line.
func moveSummary(m *admin.VolumeMove) string {
	s := fmt.Sprintf("%s -> %s (%s), %s", m.From, m.To, orDash(m.Reason), m.Phase)
	if m.Phase == "copying" && m.Size > 0 {
		s += fmt.Sprintf(" %d%%, %s copied", m.Done*100/m.Size, humanSize(m.Copied))
		if m.Rate > 0 {
			s += " at " + humanSize(m.Rate) + "/s"
		}
		s += fmt.Sprintf(", lag %d", m.Lag)
	}
	if m.MaxRate > 0 {
		s += ", max " + humanSize(m.MaxRate) + "/s"
	}
	return s + ", since " + formatTime(m.Started)
}

// checkSummary renders a completed check of a move or rebuild.
func checkSummary(ck *admin.MoveCheck) string {
	if ck == nil {
		return "not run"
	}
	return fmt.Sprintf("%d of %d ranges of %s identical at log index %d%s", ck.Compared-ck.Mismatched, ck.Ranges, humanSize(ck.RangeBytes), ck.Index, pinnedNote(ck))
}

// pinnedNote says how many of a check's ranges were written during
// every read and compared by checksum entries instead.
func pinnedNote(ck *admin.MoveCheck) string {
	if ck.Pinned == 0 {
		return ""
	}
	return fmt.Sprintf(", %d of them, written throughout, by checksum entries at later indexes", ck.Pinned)
}

// lastMoveSummary renders how a volume's last replica move ended.
func lastMoveSummary(r *admin.MoveResult) string {
	s := fmt.Sprintf("%s -> %s (%s) %s %s", r.From, r.To, orDash(r.Reason), r.Result, formatTime(r.Finished))
	if r.Bytes > 0 {
		s += fmt.Sprintf(", %s copied in %v", humanSize(r.Bytes), r.Copy.Round(time.Millisecond))
	}
	if ck := r.Check; ck != nil {
		if ck.OK {
			s += fmt.Sprintf(", check: %d ranges identical at index %d%s", ck.Ranges, ck.Index, pinnedNote(ck))
		} else {
			s += fmt.Sprintf(", check: %d of %d ranges differ", ck.Mismatched, ck.Ranges)
		}
	}
	if r.Error != "" {
		s += ": " + oneLine(r.Error)
	}
	return s
}

// hostList renders host names for a sentence: "n1, n2 and n3".
func hostList(names []string) string {
	switch len(names) {
	case 0:
		return "no hosts"
	case 1:
		return names[0]
	}
	return strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
}

// oneLine keeps a table cell on one line and free of tabs.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
