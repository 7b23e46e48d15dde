package bench

import (
	"context"
	"fmt"
	"time"
)

// Scenario is a fault or an operation performed on Tandem while the Go
// load generator drives it, measured from the client: how long I/O
// stopped, how many requests failed, and whether the data read back is
// what was written. Later scenarios (volume leader killed, live
// migration, FT failover) implement the same interface.
type Scenario interface {
	// Name identifies the scenario on the command line and in reports.
	Name() string
	// Description says what the scenario does, in one sentence.
	Description() string
	// Run performs the scenario. A scenario that cannot run in env (for
	// instance because the harness did not start Tandem) returns a result
	// with Skipped set rather than an error.
	Run(ctx context.Context, env ScenarioEnv) (ScenarioResult, error)
}

// ScenarioEnv is what a scenario acts on.
type ScenarioEnv struct {
	// Tandem is the system under test.
	Tandem *System
	// Region is the size of the region the workloads use on the export.
	Region int64
	// Progress reports a step on the progress stream.
	Progress func(format string, args ...any)
	// StartCluster starts a fresh three-agent cluster (see Cluster) for a
	// scenario that kills one agent; name labels its logs. The scenario
	// stops it when done (the harness also stops it when the run ends).
	// Nil when the harness cannot start Tandem (it was given by URI).
	StartCluster func(ctx context.Context, name string) (*Cluster, error)
}

// ScenarioResult is what a scenario measured, from the client's side.
type ScenarioResult struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	System      string `json:"system"`
	// Skipped says the scenario did not run, and SkipReason why.
	Skipped bool `json:"skipped"`
	// Round is the 1-based repetition of the scenario (Config.ScenarioRounds).
	Round      int    `json:"round"`
	SkipReason string `json:"skip_reason,omitempty"`
	// Workload is the load the client kept up during the scenario.
	Workload Workload `json:"workload"`
	// Load is the client's raw measurement over the whole scenario.
	Load *LoadResult `json:"load,omitempty"`
	// FaultAt is when the fault was injected, since the load started;
	// Phases times the steps of the fault (e.g. "kill", "restart").
	FaultAt time.Duration `json:"fault_at_ns"`
	Phases  []Phase       `json:"phases"`
	// FaultGap is the time without any successful I/O completion around
	// the fault: the longest gap that overlaps the time from the fault's
	// injection to the client's first completion after the restart (0 if
	// I/O never stopped for GapThreshold).
	FaultGap time.Duration `json:"fault_gap_ns"`
	// MaxGap is the longest time without any successful I/O completion in
	// the whole run, and MaxGapAt when it began relative to FaultAt
	// (negative: before the fault).
	MaxGap   time.Duration `json:"max_gap_ns"`
	MaxGapAt time.Duration `json:"max_gap_from_fault_ns"`
	// NoiseGap is the longest gap that ended before the fault: how long
	// I/O stalls on this machine without any fault (scheduling, other
	// load), to read FaultGap against.
	NoiseGap time.Duration `json:"noise_gap_ns"`
	// Errors counts requests that failed (the client does not retry them).
	Errors int64 `json:"errors"`
	// Reconnects counts the client's successful re-dials.
	Reconnects int `json:"reconnects"`
	// Verified and Mismatches count 4 KiB units checked on reads.
	Verified   int64 `json:"verified_units"`
	Mismatches int64 `json:"mismatches"`
	// Cluster scenarios (leader-kill, follower-kill): the agent that led
	// the volume before the fault, the one killed, the one the client
	// used, and the one that led after the fault.
	OldLeader   string `json:"old_leader,omitempty"`
	Killed      string `json:"killed,omitempty"`
	ClientAgent string `json:"client_agent,omitempty"`
	NewLeader   string `json:"new_leader,omitempty"`
	// LeaderServes is the time from the kill until a surviving agent's
	// admin API said it leads the volume and serves it (leader-kill).
	LeaderServes time.Duration `json:"leader_serves_after_ns,omitempty"`
	// DownGaps are the gaps of at least 100 ms while the killed agent was
	// down (At relative to the load's start, like LoadResult.Gaps).
	DownGaps []Gap `json:"down_gaps,omitempty"`
	// Rejoined says the restarted agent caught up with the leader, and
	// RejoinAfter how long after its restart.
	Rejoined    bool          `json:"rejoined,omitempty"`
	RejoinAfter time.Duration `json:"rejoin_after_ns,omitempty"`
	// LeaderReturned says leadership moved back to the restarted agent
	// when it is the volume's preferred leader.
	LeaderReturned bool `json:"leader_returned,omitempty"`
	// ReturnGap is the longest gap from the killed agent's restart to the
	// end of the load: its catch-up and, for the preferred leader,
	// leadership moving back to it.
	ReturnGap time.Duration `json:"return_gap_ns,omitempty"`
	// Checks are what the design promises for this scenario, and whether
	// this run kept it.
	Checks []Check `json:"checks,omitempty"`
	// Notes say what the figures do and do not show.
	Notes []string `json:"notes"`
}

// summary renders the result on one line, for the progress stream.
func (s ScenarioResult) summary() string {
	out := fmt.Sprintf("I/O gap at the fault %s (longest in the run %s), %d failed requests, %d reconnects, %d mismatches",
		fmtGap(s.FaultGap), fmtLat(s.MaxGap), s.Errors, s.Reconnects, s.Mismatches)
	if s.Killed != "" {
		out = fmt.Sprintf("killed %s (client on %s): ", s.Killed, s.ClientAgent) + out
	}
	if s.LeaderServes > 0 {
		out += fmt.Sprintf(", new leader %s served %s after the kill", s.NewLeader, fmtLat(s.LeaderServes))
	}
	if s.Rejoined {
		out += fmt.Sprintf(", rejoined %s after its restart (gap then %s)", fmtLat(s.RejoinAfter), fmtGap(s.ReturnGap))
	}
	return out
}

// fmtGap renders an I/O gap; 0 means none of at least GapThreshold.
func fmtGap(d time.Duration) string {
	if d <= 0 {
		return "< " + fmtLat(GapThreshold)
	}
	return fmtLat(d)
}

// Check is one expectation of a scenario and whether the run met it.
type Check struct {
	What   string `json:"what"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// Unmet returns the checks the scenario did not meet.
func (s ScenarioResult) Unmet() []Check {
	var out []Check
	for _, c := range s.Checks {
		if !c.OK {
			out = append(out, c)
		}
	}
	return out
}

// Phase is one timed step of a scenario's fault.
type Phase struct {
	Name     string        `json:"name"`
	Duration time.Duration `json:"duration_ns"`
}

// ScenarioAgentKill names the AgentKill scenario.
const ScenarioAgentKill = "agent-kill"

// Scenarios returns every scenario the harness knows.
func Scenarios() []Scenario {
	return []Scenario{AgentKill{}, LeaderKill{}, FollowerKill{}}
}

// ScenarioNames lists the names of Scenarios.
func ScenarioNames() []string {
	var n []string
	for _, s := range Scenarios() {
		n = append(n, s.Name())
	}
	return n
}

// scenarioByName returns the scenario called name.
// setLoad records what the client saw in a scenario's load: when the
// fault came relative to the load's start, the longest gaps (in the whole
// run and before the fault), the failures, reconnects and verified data.
func (res *ScenarioResult) setLoad(r *LoadResult, loadStart, faultAt time.Time) {
	res.Load = r
	res.FaultAt = faultAt.Sub(r.Started)
	if d := r.Started.Sub(loadStart); d > time.Second {
		res.Notes = append(res.Notes, fmt.Sprintf("the load took %v to connect", d))
	}
	res.MaxGap, res.MaxGapAt = r.MaxGap, r.MaxGapAt-res.FaultAt
	for _, g := range r.Gaps {
		if g.At+g.Length < res.FaultAt {
			res.NoiseGap = max(res.NoiseGap, g.Length)
		}
	}
	res.Errors, res.Reconnects = r.Errors, r.Reconnects
	res.Verified, res.Mismatches = r.Verified, r.Mismatches
}

func scenarioByName(name string) (Scenario, error) {
	for _, s := range Scenarios() {
		if s.Name() == name {
			return s, nil
		}
	}
	return nil, fmt.Errorf("unknown scenario %q", name)
}

// AgentKill kills every Tandem process with SIGKILL while the client
// writes and reads (the "tandem dev" process, or the three agents of a
// cluster at once: a crash of the whole cluster), restarts them on the
// same data and addresses at once, and measures the client's I/O gap, its
// failed requests, and whether every read (before and after the crash)
// returns the last acknowledged write.
type AgentKill struct {
	// Before is how long the load runs before the kill, After how long it
	// runs once I/O has resumed (defaults 2 s each). Resume bounds the wait
	// for I/O to resume after the restart (default 60 s).
	Before, After, Resume time.Duration
}

// Name implements Scenario.
func (AgentKill) Name() string { return ScenarioAgentKill }

// Description implements Scenario.
func (AgentKill) Description() string {
	return "every tandem process (the whole cluster) killed with SIGKILL under load and restarted at once on the same data; the client reconnects"
}

// agentKillRegion bounds the scenario's region so that most reads hit
// blocks the run wrote (and so are checked exactly).
const agentKillRegion = 64 * mib

// Run implements Scenario.
func (a AgentKill) Run(ctx context.Context, env ScenarioEnv) (ScenarioResult, error) {
	w := Workload{
		Name: "agent-kill-randrw50-4k-qd16", Description: "4 KiB random 50/50 reads and writes, 16 in flight, verified",
		ReadPercent: 50, Random: true, BlockSize: 4 * kib, QueueDepth: 16, Conns: 1,
	}
	res := ScenarioResult{Name: a.Name(), Description: a.Description(), System: env.Tandem.Name, Workload: w}
	if !env.Tandem.CanRestart() {
		res.Skipped = true
		res.SkipReason = "Tandem was given by URI: the harness can only kill and restart a Tandem it started"
		return res, nil
	}
	before, after := a.Before, a.After
	if before <= 0 {
		before = 2 * time.Second
	}
	if after <= 0 {
		after = 2 * time.Second
	}
	resume := a.Resume
	if resume <= 0 {
		resume = time.Minute
	}
	region := min(int64(agentKillRegion), env.Region)
	ep := env.Tandem.Endpoint()

	// Known content first, so that every read can be checked.
	env.Progress("%s: writing %d MiB of verifiable data", a.Name(), region/mib)
	if _, err := RunLoad(ctx, ep, LoadSpec{
		Workload: Workload{Name: "agent-kill-fill", BlockSize: 1 * mib, QueueDepth: 8, Conns: 1},
		Region:   region, OnePass: true, Verify: true, Seed: 7,
	}); err != nil {
		return res, fmt.Errorf("%s: preparing the region: %w", a.Name(), err)
	}

	stop := make(chan struct{})
	type outcome struct {
		r   *LoadResult
		err error
	}
	done := make(chan outcome, 1)
	loadStart := time.Now()
	live := &Live{}
	go func() {
		r, err := RunLoad(ctx, ep, LoadSpec{
			Workload: w, Duration: before + resume + after + time.Minute, Region: region,
			Verify: true, Prefilled: true, Reconnect: true, Seed: 11, Stop: stop, Live: live,
		})
		done <- outcome{r, err}
	}()
	// A load that fails at once must not wait for the fault.
	select {
	case o := <-done:
		return res, fmt.Errorf("%s: the load ended before the fault: %v", a.Name(), o.err)
	case <-time.After(before):
	case <-ctx.Done():
		close(stop)
		<-done
		return res, ctx.Err()
	}

	env.Progress("%s: killing tandem (SIGKILL) under load", a.Name())
	faultAt := time.Now()
	killErr := env.Tandem.Kill()
	killed := time.Now()
	var restartErr error
	if killErr == nil {
		restartErr = env.Tandem.Restart(ctx)
	}
	restarted := time.Now()
	res.Phases = []Phase{{"kill (SIGKILL until the process is gone)", killed.Sub(faultAt)}, {"restart (exec until it serves NBD)", restarted.Sub(killed)}}
	var resumeErr error
	resumed := restarted
	if killErr == nil && restartErr == nil {
		env.Progress("%s: tandem serves again %v after the kill; waiting for the client's I/O to resume", a.Name(), restarted.Sub(faultAt).Round(time.Millisecond))
		t, err := waitResume(ctx, live, restarted, resume)
		if err != nil {
			resumeErr = err
		} else {
			resumed = t
			res.Phases = append(res.Phases, Phase{"client I/O resumed (restart until the first completion)", resumed.Sub(restarted)})
			env.Progress("%s: I/O resumed %v after the kill; running %v more", a.Name(), resumed.Sub(faultAt).Round(time.Millisecond), after)
			select {
			case <-time.After(after):
			case <-ctx.Done():
			}
		}
	}
	close(stop)
	o := <-done
	if err := firstErr(killErr, restartErr, o.err, resumeErr); err != nil {
		return res, fmt.Errorf("%s: %w", a.Name(), err)
	}
	r := o.r
	res.setLoad(r, loadStart, faultAt)
	res.FaultGap = longestGapIn(r.Gaps, res.FaultAt, resumed.Sub(r.Started))
	whole := "tandem dev runs its whole cluster in one process: killing it takes every host down at once"
	if env.Tandem.Cluster() != nil {
		whole = "the three agent processes are killed at once"
	}
	res.Notes = append(res.Notes,
		whole+", so the gap is the restart (a restarted agent waits one heartbeat timeout, 1 s, before its raft starts, then the cluster elects a leader) plus the client's reconnect (it retries every 10 ms), not a failover to a replica: leader-kill measures that.",
		"requests in flight at the kill fail and are counted as errors; this client does not retry them (QEMU with werror=stop/rerror=stop would pause the guest and retry them on cont).",
		"the data survives because the kill is of the process only: the page cache keeps its writes. A host crash (power loss) is not simulated here.",
	)
	if r.Mismatches == 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("every read (%d units of 4 KiB checked, before and after the restart) returned the last acknowledged write, or for a failed write either the old or the new data", r.Verified))
	} else {
		res.Notes = append(res.Notes, "DATA MISMATCH: "+r.FirstMismatch)
	}
	return res, nil
}

// waitResume waits until live shows a completion after since, for at most
// timeout, and returns its time.
func waitResume(ctx context.Context, live *Live, since time.Time, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		if t := live.LastCompletion(); t.After(since) {
			return t, nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("the client's I/O did not resume within %v of the restart", timeout)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// longestGapIn returns the length of the longest gap that overlaps the
// window [from, to] (the fault, from its injection to I/O resuming), or 0.
func longestGapIn(gaps []Gap, from, to time.Duration) time.Duration {
	var longest time.Duration
	for _, g := range gaps {
		if g.At <= to && g.At+g.Length >= from {
			longest = max(longest, g.Length)
		}
	}
	return longest
}

// firstErr returns the first non-nil error.
func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
