package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tandem-project/tandem/bench"
	"github.com/tandem-project/tandem/volume"
)

func newBenchCmd(g *globalFlags) *cobra.Command {
	cfg := bench.DefaultConfig()
	var (
		size      = volume.FormatSize(cfg.Size)
		baselines []string
		scenarios []string
		uris      []string
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Benchmark Tandem against baseline NBD servers, side by side",
		Long: `Benchmark Tandem the way a user would, against the NBD servers they would
use instead, in the same run.

The harness starts Tandem ("tandem dev", or with --tandem-mode cluster
three "tandem agent" processes; or uses --tandem-uri) and the baselines
(nbdkit's file plugin, and nbd-server when installed) on files in one
filesystem, fills every export with the same data, then runs each workload
on every system with the same client (fio's nbd engine when installed,
else the built-in Go load generator), interleaved A, B, A, B and repeated
--repeat times. It prints a Markdown table of medians, min–max and Tandem's
ratio to each baseline, and writes results.json, results.md, results.svg
and the servers' logs under --out. Then it runs the fault scenarios with
the Go load generator and reports what the client saw: leader-kill and
follower-kill start a cluster of three "tandem agent" processes on
127.0.0.1-3 and kill one agent with SIGKILL.

Exports given with --tandem-uri or --baseline-uri are overwritten.

Workloads (--workloads selects some, "none" for none):
  ` + strings.Join(bench.WorkloadNames(), "\n  ") + `
Scenarios (--scenarios, "none" for none):
` + scenarioHelp(),
		Example: `  make bench
  tandem bench --workloads randread-4k-qd32,randwrite-4k-qd1-durable --repeat 5
  tandem bench --client go --verify --runtime 2s
  tandem bench --workloads none --scenarios leader-kill --scenario-rounds 5
  tandem bench --baseline-uri qemu-nbd=nbd://127.0.0.1:10810/`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := stderrLogger(g)
			if err != nil {
				return err
			}
			if cfg.Size, err = volume.ParseSize(size); err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			cfg.Baselines = nil
			for _, b := range baselines {
				if b != "none" && b != "" {
					cfg.Baselines = append(cfg.Baselines, b)
				}
			}
			cfg.Scenarios = nil
			for _, s := range scenarios {
				if s != "none" && s != "" {
					cfg.Scenarios = append(cfg.Scenarios, s)
				}
			}
			for _, u := range uris {
				n, err := bench.ParseNamedURI(u)
				if err != nil {
					return fmt.Errorf("--baseline-uri: %w", err)
				}
				cfg.BaselineURIs = append(cfg.BaselineURIs, n)
			}
			if cfg.TandemURI == "" && cfg.TandemBinary == "" {
				if cfg.TandemBinary, err = os.Executable(); err != nil {
					return fmt.Errorf("finding the tandem binary to run: %w", err)
				}
			}
			cfg.Logger = log
			cfg.Progress = cmd.ErrOrStderr()
			if err := cfg.Validate(); err != nil {
				return err
			}
			rep, err := bench.Run(cmd.Context(), cfg)
			if rep != nil {
				fmt.Fprint(cmd.OutOrStdout(), rep.Markdown())
				fmt.Fprintf(cmd.ErrOrStderr(), "results: %s\n", rep.OutDir)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&cfg.Workloads, "workloads", nil, "workloads to run, comma-separated (default: the standard suite)")
	f.IntVar(&cfg.Repeat, "repeat", cfg.Repeat, "rounds of each workload on each system")
	f.DurationVar(&cfg.Runtime, "runtime", cfg.Runtime, "measured time of each run")
	f.DurationVar(&cfg.Warmup, "warmup", cfg.Warmup, "unmeasured warm-up before each run")
	f.StringVar(&cfg.Client, "client", cfg.Client, "client driving every system: auto (fio if installed), fio or go")
	f.StringVar(&size, "size", size, "size of the exports and of the region the workloads use")
	f.StringVar(&cfg.TandemURI, "tandem-uri", "", "benchmark a running Tandem export instead of starting one")
	f.StringVar(&cfg.TandemMode, "tandem-mode", cfg.TandemMode, `how the harness runs Tandem for the workloads and agent-kill: "dev" (tandem dev, one process) or "cluster" (3 tandem agent processes)`)
	f.StringVar(&cfg.TandemBinary, "tandem-bin", "", "tandem binary to start (default: this one)")
	f.StringSliceVar(&baselines, "baselines", cfg.Baselines, `baselines to start: nbdkit, nbd-server ("none" for none)`)
	f.StringArrayVar(&uris, "baseline-uri", nil, "add a running baseline, NAME=URI (repeatable)")
	f.StringSliceVar(&scenarios, "scenarios", cfg.Scenarios, `fault scenarios to run after the workloads ("none" for none)`)
	f.IntVar(&cfg.ScenarioRounds, "scenario-rounds", cfg.ScenarioRounds, "times each scenario runs (the report adds medians over the rounds)")
	f.BoolVar(&cfg.Verify, "verify", false, "check every read's data (Go client)")
	f.BoolVar(&cfg.LogBound, "log-bound", cfg.LogBound, "after each round of write-1m-qd8-durable, measure what 3 synced logs get from the filesystem at once (fio client)")
	f.StringVar(&cfg.OutDir, "out", "", "results directory (default bench-results/<timestamp>)")
	f.StringVar(&cfg.WorkDir, "work-dir", "", "where Tandem's data and the baselines' files go (default: a temporary directory)")
	f.BoolVar(&cfg.KeepWorkDir, "keep-work-dir", false, "keep the data files after the run")
	return cmd
}

// scenarioHelp lists the scenarios with their descriptions.
func scenarioHelp() string {
	var b strings.Builder
	for _, sc := range bench.Scenarios() {
		fmt.Fprintf(&b, "  %-14s %s\n", sc.Name(), sc.Description())
	}
	return strings.TrimRight(b.String(), "\n")
}
