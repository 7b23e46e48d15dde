package bench

import (
	"context"
	"runtime"
	"time"
)

// Client kinds for Config.Client.
const (
	ClientAuto = "auto" // fio when installed, else the Go load generator
	ClientFio  = "fio"
	ClientGo   = "go"
)

// RunOptions are the per-run settings every client honours.
type RunOptions struct {
	// Runtime is the measured time; Warmup runs unmeasured before it.
	Runtime, Warmup time.Duration
	// Region limits I/O to the first Region bytes of the export.
	Region int64
	// Round is the 1-based repetition, recorded in the result and used as
	// the seed, so every system sees the same offsets in a round.
	Round int
	// Verify checks the data read (Go client only); Prefilled says every
	// block holds verifiable data already (see LoadSpec).
	Verify, Prefilled bool
}

// Client drives one workload against one export and measures it. The same
// client drives every system of a comparison.
type Client interface {
	// Name is "fio" or "go".
	Name() string
	// Version describes the client (e.g. "fio-3.33").
	Version() string
	// Run runs w against ep.
	Run(ctx context.Context, ep Endpoint, w Workload, o RunOptions) (Result, error)
}

// goClient is the built-in load generator (RunLoad).
type goClient struct{}

// Name implements Client.
func (goClient) Name() string { return ClientGo }

// Version implements Client.
func (goClient) Version() string {
	return "tandem Go load generator (nbd/nbdclient, " + runtime.Version() + ")"
}

// Run implements Client with RunLoad.
func (goClient) Run(ctx context.Context, ep Endpoint, w Workload, o RunOptions) (Result, error) {
	res, err := RunLoad(ctx, ep, LoadSpec{
		Workload: w, Duration: o.Runtime, Warmup: o.Warmup, Region: o.Region,
		Verify: o.Verify, Prefilled: o.Prefilled, Seed: uint64(o.Round),
	})
	if res == nil {
		return Result{Client: ClientGo, Round: o.Round}, err
	}
	res.Round = o.Round
	return res.Result, err
}
