package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/tandem-project/tandem/agent"
	"github.com/tandem-project/tandem/volume"
)

func newDevCmd(g *globalFlags) *cobra.Command {
	var (
		dataDir string
		size    string
		listen  string
	)
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local Tandem with volume vol0 for trying it out",
		Long: `Run Tandem on this machine with one volume, vol0, served over NBD at
nbd://127.0.0.1:10809/vol0, and print the commands to attach it with
qemu-io and QEMU. Data lives under --data and survives restarts.
Ctrl-C stops it cleanly.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := stderrLogger(g)
			if err != nil {
				return err
			}
			if dataDir == "" {
				cache, err := os.UserCacheDir()
				if err != nil {
					return fmt.Errorf("no --data given and no user cache directory: %w", err)
				}
				dataDir = filepath.Join(cache, "tandem", "dev")
			}
			n, err := volume.ParseSize(size)
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			cfg := agent.DefaultConfig()
			cfg.DataDir = dataDir
			cfg.NBDAddr = listen
			cfg.Volumes = []agent.VolumeSpec{{Name: "vol0", Size: n}}
			cfg.DefaultExport = "vol0"
			cfg.Logger = log
			out := cmd.OutOrStdout()
			cfg.Ready = func(l agent.Listening) {
				host, port, _ := net.SplitHostPort(l.NBDAddr.String())
				uri := fmt.Sprintf("nbd://%s/vol0", net.JoinHostPort(host, port))
				fmt.Fprintf(out, `
Tandem dev is running (data in %s). Volume vol0 (%s) is at:

    %s

Try it:
    qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' %s
    qemu-system-x86_64 -m 512 -drive file=%s,format=raw,if=virtio,cache=none,aio=threads ...

Press Ctrl-C to stop.
`, dataDir, volume.FormatSize(n), uri, uri, uri)
			}
			return agent.Run(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&dataDir, "data", "", "data directory (default: tandem/dev under the user cache directory)")
	f.StringVar(&size, "size", "1GiB", "size of vol0")
	f.StringVar(&listen, "nbd-listen", "127.0.0.1:10809", "TCP address for NBD")
	return cmd
}
