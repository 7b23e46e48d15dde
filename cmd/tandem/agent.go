package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tandem-project/tandem/agent"
	"github.com/tandem-project/tandem/volume"
)

func newAgentCmd(g *globalFlags) *cobra.Command {
	cfg := agent.DefaultConfig()
	var vols []string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the Tandem agent of this host",
		Long: `Run the Tandem agent of this host: it serves the host's volumes as NBD
exports until it receives SIGINT or SIGTERM, then lets requests in flight
finish, flushes the volumes and exits.

Each --volume is NAME=SIZE[,ro]; a writable volume's file is created under
--data/volumes on first use and grown when SIZE grows (volumes never
shrink). A read-only volume must already exist. One agent at a time may use
a data directory.`,
		Example: `  tandem agent --data /var/lib/tandem --volume vm1=20G --volume iso=4G,ro
  qemu-io -f raw nbd://127.0.0.1:10809/vm1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := stderrLogger(g)
			if err != nil {
				return err
			}
			for _, v := range vols {
				spec, err := parseVolumeFlag(v)
				if err != nil {
					return err
				}
				cfg.Volumes = append(cfg.Volumes, spec)
			}
			cfg.Logger = log
			return agent.Run(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data", "", "data directory (required)")
	f.StringVar(&cfg.NBDAddr, "nbd-listen", cfg.NBDAddr, `TCP address for NBD ("" to disable)`)
	f.StringVar(&cfg.NBDSocket, "nbd-socket", "", "unix socket path for NBD")
	f.StringArrayVar(&vols, "volume", nil, "volume to serve, NAME=SIZE[,ro] (repeatable)")
	f.StringVar(&cfg.DefaultExport, "default-export", "", "volume served to clients asking for the empty export name")
	f.IntVar(&cfg.NBD.MaxInflight, "nbd-max-inflight", cfg.NBD.MaxInflight, "requests served at once per NBD connection")
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "how long shutdown waits for requests in flight")
	return cmd
}

// parseVolumeFlag parses NAME=SIZE[,ro].
func parseVolumeFlag(s string) (agent.VolumeSpec, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok {
		return agent.VolumeSpec{}, fmt.Errorf("--volume %q: want NAME=SIZE[,ro]", s)
	}
	if err := volume.ValidateName(name); err != nil {
		return agent.VolumeSpec{}, fmt.Errorf("--volume %q: %w", s, err)
	}
	parts := strings.Split(rest, ",")
	size, err := volume.ParseSize(parts[0])
	if err != nil {
		return agent.VolumeSpec{}, fmt.Errorf("--volume %q: %w", s, err)
	}
	spec := agent.VolumeSpec{Name: name, Size: size}
	for _, p := range parts[1:] {
		switch p {
		case "ro":
			spec.ReadOnly = true
		default:
			return agent.VolumeSpec{}, fmt.Errorf("--volume %q: unknown option %q (known: ro)", s, p)
		}
	}
	return spec, nil
}
