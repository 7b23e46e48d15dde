package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/admin/client"
)

// adminHelp ends the Long help of the commands that use the admin API.
const adminHelp = `
Any agent's admin API answers for the whole cluster: --admin (default
$TANDEM_ADMIN, else 127.0.0.1:7480, host n1 of "tandem dev"). Commands that
change anything need the admin token: --token, --token-file or
$TANDEM_ADMIN_TOKEN. An admin API with TLS (agents started with
--admin-tls-cert) takes https:// and --admin-ca (or $TANDEM_ADMIN_CA), the
CA that signed the agents' certificates. --output json prints the API's
JSON.`

func newClusterCmd() *cobra.Command {
	a := &adminFlags{}
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Inspect the Tandem cluster",
		Long: `Inspect the Tandem cluster through the admin API of one of its agents.
` + adminHelp,
		Example: `  tandem cluster status
  tandem cluster status --admin 10.0.0.2:7480 -o json`,
	}
	a.register(cmd.PersistentFlags())
	cmd.AddCommand(newClusterStatusCmd(a))
	return cmd
}

func newClusterStatusCmd(a *adminFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the cluster's control plane, host and volume counts",
		Long: `Show the cluster's status: the host that answered, the control plane's
leader, voters, term and applied index, how many hosts are in the catalog
and how many of them are alive, and how many volumes there are. The API
answers 503 while the cluster has no control leader (too few hosts up).
` + adminHelp,
		Example: `  tandem cluster status
  TANDEM_ADMIN=10.0.0.1:7480 tandem cluster status -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				st, err := c.Cluster(ctx)
				if err != nil {
					return err
				}
				if a.output == outputJSON {
					return printJSON(cmd.OutOrStdout(), st)
				}
				return renderCluster(cmd.OutOrStdout(), st)
			})
		},
	}
}

// renderCluster writes the cluster's status as key/value lines.
func renderCluster(w io.Writer, st admin.ClusterStatus) error {
	kv := [][2]string{{"Host", orDash(st.Host)}}
	if st.Via != "" {
		kv = append(kv, [2]string{"Via", st.Via})
	}
	kv = append(kv,
		[2]string{"Version", orDash(st.Version)},
		[2]string{"Control leader", orDash(st.ControlLeader)},
		[2]string{"Control voters", joinOrDash(st.ControlVoters, ", ")},
		[2]string{"Control term", fmt.Sprint(st.ControlTerm)},
		[2]string{"Control index", fmt.Sprint(st.ControlIndex)},
		[2]string{"Hosts", fmt.Sprintf("%d (%d alive)", st.Hosts, st.HostsAlive)},
		[2]string{"Volumes", fmt.Sprint(st.Volumes)},
	)
	return keyValues(w, kv)
}
