package bench

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"
)

// NamedURI is an extra system given on the command line as NAME=URI.
type NamedURI struct {
	Name string `json:"name"`
	URI  string `json:"uri"`
}

// ParseNamedURI parses NAME=URI.
func ParseNamedURI(s string) (NamedURI, error) {
	name, uri, ok := strings.Cut(s, "=")
	if !ok || name == "" || uri == "" {
		return NamedURI{}, fmt.Errorf("%q: want NAME=URI, e.g. qemu-nbd=nbd://127.0.0.1:10810/", s)
	}
	if _, err := ParseURI(uri); err != nil {
		return NamedURI{}, err
	}
	return NamedURI{Name: name, URI: uri}, nil
}

// Config is the configuration of one benchmark run.
type Config struct {
	// Workloads names the workloads to run (see WorkloadNames); empty runs
	// the standard suite.
	Workloads []string
	// Repeat is how many rounds each workload runs on each system.
	Repeat int
	// Runtime is the measured time of each run; Warmup runs before it,
	// unmeasured.
	Runtime, Warmup time.Duration
	// Client is ClientAuto, ClientFio or ClientGo.
	Client string
	// Size is the size of the exports the harness starts, and of the region
	// the workloads use on every export (given exports must be at least
	// this large: the benchmark overwrites them).
	Size int64
	// TandemBinary is the tandem executable to run "tandem dev" with.
	// Unused with TandemURI.
	TandemBinary string
	// TandemURI benchmarks an existing Tandem export instead of starting
	// one. The scenarios need a Tandem the harness started: with a URI
	// they are skipped, unless TandemBinary is also given (the cluster
	// scenarios then start their own clusters with it).
	TandemURI string
	// TandemMode says how the harness runs the Tandem the workloads and
	// the agent-kill scenario use: TandemDev ("tandem dev": the three
	// agents of a cluster in one process) or TandemCluster (three "tandem
	// agent" processes, see Cluster). The leader-kill and follower-kill
	// scenarios always start clusters of their own.
	TandemMode string
	// Baselines names the baselines the harness starts itself:
	// BaselineNbdkit (required when listed) and BaselineNBDServer (skipped
	// with a note when it is not installed).
	Baselines []string
	// BaselineURIs adds baselines that are already running.
	BaselineURIs []NamedURI
	// Scenarios names the fault scenarios to run (see ScenarioNames), in
	// order; a name may be listed more than once.
	Scenarios []string
	// ScenarioRounds runs every scenario of Scenarios this many times
	// (0 means once); the report summarizes the rounds.
	ScenarioRounds int
	// Verify makes the Go load generator check every read (needs the Go
	// client).
	Verify bool
	// LogBound measures, after each round of a sequential durable write
	// workload, what three synced logs get from the filesystem at once: the
	// disk's bound on Tandem's dev cluster (LogBound; fio client only).
	LogBound bool
	// OutDir receives results.json, results.md, results.svg and the servers'
	// logs; "" means bench-results/<start time>.
	OutDir string
	// WorkDir holds Tandem's data and the baselines' files, all in one
	// filesystem; "" means a new temporary directory. It is removed at the
	// end unless KeepWorkDir is set.
	WorkDir     string
	KeepWorkDir bool
	// Progress receives one line per step ("[3/99] randread-4k-qd32 nbdkit
	// round 2/3 ... 54.1k IOPS"). Nil discards.
	Progress io.Writer
	// Logger receives diagnostics. Nil discards.
	Logger *slog.Logger
}

// Tandem modes for Config.TandemMode.
const (
	TandemDev     = "dev"
	TandemCluster = "cluster"
)

// DefaultConfig returns the standard suite: every workload, 3 rounds of 3 s
// after 0.5 s of warm-up, on 512 MiB exports, Tandem run as "tandem dev",
// against nbdkit and nbd-server, then the agent-kill, leader-kill and
// follower-kill scenarios. It runs in about 8 minutes on a 2-core machine.
func DefaultConfig() Config {
	return Config{
		Repeat:         3,
		Runtime:        3 * time.Second,
		Warmup:         500 * time.Millisecond,
		Client:         ClientAuto,
		Size:           512 * mib,
		TandemMode:     TandemDev,
		Baselines:      []string{BaselineNbdkit, BaselineNBDServer},
		Scenarios:      []string{ScenarioAgentKill, ScenarioLeaderKill, ScenarioFollowerKill},
		ScenarioRounds: 1,
		LogBound:       true,
	}
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	if _, err := SelectWorkloads(c.Workloads); err != nil {
		return err
	}
	switch {
	case c.Repeat < 1 || c.Repeat > 100:
		return fmt.Errorf("repeat %d: want 1 to 100 rounds", c.Repeat)
	case c.Runtime < 100*time.Millisecond || c.Runtime > time.Hour:
		return fmt.Errorf("runtime %v: want 100ms to 1h", c.Runtime)
	case c.Warmup < 0 || c.Warmup > time.Hour:
		return fmt.Errorf("warm-up %v: want 0 to 1h", c.Warmup)
	case c.Client != ClientAuto && c.Client != ClientFio && c.Client != ClientGo:
		return fmt.Errorf("client %q: want auto, fio or go", c.Client)
	case c.Size < mib || c.Size%mib != 0:
		return fmt.Errorf("size %d: want a whole number of MiB, at least 1 MiB", c.Size)
	case c.TandemURI == "" && c.TandemBinary == "":
		return errors.New("no Tandem: give the tandem binary to start or the URI of a running one")
	case c.Verify && c.Client == ClientFio:
		return errors.New("verification needs the Go client (--client go): fio runs unverified")
	case c.TandemMode != "" && c.TandemMode != TandemDev && c.TandemMode != TandemCluster:
		return fmt.Errorf("tandem mode %q: want %s or %s", c.TandemMode, TandemDev, TandemCluster)
	case c.ScenarioRounds < 0 || c.ScenarioRounds > 100:
		return fmt.Errorf("scenario rounds %d: want 1 to 100", c.ScenarioRounds)
	}
	if c.TandemURI != "" {
		if _, err := ParseURI(c.TandemURI); err != nil {
			return fmt.Errorf("tandem URI: %w", err)
		}
	}
	names := map[string]bool{"tandem": true}
	for _, b := range c.Baselines {
		if b != BaselineNbdkit && b != BaselineNBDServer {
			return fmt.Errorf("baseline %q: the harness can start %s and %s; give others with a URI", b, BaselineNbdkit, BaselineNBDServer)
		}
		if names[b] {
			return fmt.Errorf("baseline %q listed twice", b)
		}
		names[b] = true
	}
	for _, u := range c.BaselineURIs {
		if names[u.Name] {
			return fmt.Errorf("baseline name %q used twice", u.Name)
		}
		names[u.Name] = true
		if _, err := ParseURI(u.URI); err != nil {
			return fmt.Errorf("baseline %s: %w", u.Name, err)
		}
	}
	for _, s := range c.Scenarios {
		if !slices.Contains(ScenarioNames(), s) {
			return fmt.Errorf("scenario %q: known scenarios are %s", s, strings.Join(ScenarioNames(), ", "))
		}
	}
	return nil
}
