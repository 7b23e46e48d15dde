package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// globalFlags are the flags every command accepts.
type globalFlags struct {
	logLevel  string
	logFormat string
	pprof     string
}

func newRootCmd() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "tandem",
		Short: "Replicated VM disks over NBD",
		Long: `Tandem serves QEMU VM disks over NBD from a replicated block store.

Run "tandem dev" for a local cluster with one volume, or "tandem agent" on
each host of a real installation.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.PersistentFlags().StringVar(&g.pprof, "pprof", "", "serve Go profiling endpoints (/debug/pprof/) on this address, e.g. 127.0.0.1:6060")
	root.PersistentPreRunE = func(*cobra.Command, []string) error { return g.startPprof() }
	root.AddCommand(newVersionCmd(), newAgentCmd(g), newDevCmd(g), newBenchCmd(g), newClusterCmd(), newHostCmd(), newVolumeCmd(), newVMCmd())
	return root
}

// logger builds the process logger from the global flags.
func (g *globalFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(g.logFormat) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", g.logFormat)
}

// startPprof serves net/http/pprof on --pprof, if given.
func (g *globalFlags) startPprof() error {
	if g.pprof == "" {
		return nil
	}
	l, err := net.Listen("tcp", g.pprof)
	if err != nil {
		return fmt.Errorf("--pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	go http.Serve(l, mux) //nolint:errcheck // lives as long as the process
	return nil
}

func stderrLogger(g *globalFlags) (*slog.Logger, error) { return g.logger(os.Stderr) }
