package bench

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Scenario names of the cluster scenarios.
const (
	ScenarioLeaderKill   = "leader-kill"
	ScenarioFollowerKill = "follower-kill"
)

// StallTarget is the longest I/O stall at the loss of a volume's leader
// that Tandem aims for (issue 3).
const StallTarget = 3 * time.Second

// LeaderKill runs a three-agent cluster (see Cluster), keeps the Go load
// generator reading and writing (verified) through an agent that does not
// lead the volume, kills the leader's agent with SIGKILL, and measures
// from the client the I/O gap while it is down, the failed requests (the
// design says none: the client's agent re-sends requests in flight to the
// new leader), the data read back, and when a surviving agent leads and
// serves. It then restarts the killed agent, checks that it catches up,
// and measures the gap when it comes back (it is the preferred leader, so
// leadership moves back to it).
type LeaderKill struct {
	// Timing; zero values take the defaults of FailoverTiming.
	FailoverTiming
}

// FollowerKill runs a three-agent cluster, keeps the Go load generator
// reading and writing (verified) on the leader's agent, kills one of the
// two followers with SIGKILL, measures the client's I/O gap (expected ≈ 0:
// the leader and the other follower still form a majority), then restarts
// the follower and checks that it catches up.
type FollowerKill struct {
	// Timing; zero values take the defaults of FailoverTiming.
	FailoverTiming
}

// FailoverTiming sets the phases of LeaderKill and FollowerKill.
type FailoverTiming struct {
	// Before is how long the load runs before the kill (default 2 s).
	Before time.Duration
	// Down is how long the killed agent stays down once the client's I/O
	// has resumed (default 3 s).
	Down time.Duration
	// After is how long the load runs once the killed agent has caught up
	// (and, for LeaderKill, leadership has moved back to it) (default 1 s).
	After time.Duration
	// Resume bounds the wait for a new leader and for the client's I/O to
	// resume (default 60 s, the agents' stall timeout).
	Resume time.Duration
	// Rejoin bounds the wait for the restarted agent to catch up
	// (default 60 s).
	Rejoin time.Duration
	// Return bounds the wait for leadership to move back to the restarted
	// preferred leader (default 20 s: the leader retries the transfer
	// every 10 s).
	Return time.Duration
}

func (t FailoverTiming) withDefaults() FailoverTiming {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Before, 2*time.Second)
	def(&t.Down, 3*time.Second)
	def(&t.After, time.Second)
	def(&t.Resume, time.Minute)
	def(&t.Rejoin, time.Minute)
	def(&t.Return, 20*time.Second)
	return t
}

// Name implements Scenario.
func (LeaderKill) Name() string { return ScenarioLeaderKill }

// Description implements Scenario.
func (LeaderKill) Description() string {
	return "3 tandem agent processes; the client uses a non-leader agent; the volume leader's agent is killed with SIGKILL, later restarted"
}

// Run implements Scenario.
func (l LeaderKill) Run(ctx context.Context, env ScenarioEnv) (ScenarioResult, error) {
	return runFailover(ctx, env, l.Name(), l.Description(), true, l.FailoverTiming.withDefaults())
}

// Name implements Scenario.
func (FollowerKill) Name() string { return ScenarioFollowerKill }

// Description implements Scenario.
func (FollowerKill) Description() string {
	return "3 tandem agent processes; the client uses the leader's agent; a follower's agent is killed with SIGKILL, later restarted"
}

// Run implements Scenario.
func (f FollowerKill) Run(ctx context.Context, env ScenarioEnv) (ScenarioResult, error) {
	return runFailover(ctx, env, f.Name(), f.Description(), false, f.FailoverTiming.withDefaults())
}

// failoverRegion bounds the region of the cluster scenarios, so that most
// reads hit blocks the run wrote (and so are checked exactly).
const failoverRegion = 64 * mib

// runFailover runs LeaderKill (killLeader) or FollowerKill.
func runFailover(ctx context.Context, env ScenarioEnv, name, desc string, killLeader bool, tm FailoverTiming) (ScenarioResult, error) {
	w := Workload{
		Name: name + "-randrw50-4k-qd16", Description: "4 KiB random 50/50 reads and writes, 16 in flight, verified",
		ReadPercent: 50, Random: true, BlockSize: 4 * kib, QueueDepth: 16, Conns: 1,
	}
	res := ScenarioResult{Name: name, Description: desc, System: "tandem (3 agents)", Workload: w}
	if env.StartCluster == nil {
		res.Skipped = true
		res.SkipReason = "Tandem was given by URI: the harness can only kill agents it started"
		return res, nil
	}
	region := min(int64(failoverRegion), env.Region)
	env.Progress("%s: starting 3 tandem agents", name)
	c, err := env.StartCluster(ctx, name)
	if err != nil {
		return res, fmt.Errorf("%s: %w", name, err)
	}
	defer c.Stop()
	res.System = "tandem (3 agent processes)"
	leader, _, err := c.WaitLeader(ctx, "", time.Minute)
	if err != nil {
		return res, fmt.Errorf("%s: %w", name, err)
	}
	var others []string
	for _, a := range c.Agents() {
		if a != leader {
			others = append(others, a)
		}
	}
	victim, via := others[0], leader
	if killLeader {
		victim, via = leader, others[0]
	}
	res.OldLeader, res.Killed, res.ClientAgent = leader, victim, via
	viaEP, err := c.Endpoint(via)
	if err != nil {
		return res, fmt.Errorf("%s: %w", name, err)
	}
	leaderEP, err := c.Endpoint(leader)
	if err != nil {
		return res, fmt.Errorf("%s: %w", name, err)
	}

	env.Progress("%s: writing %d MiB of verifiable data through the leader %s", name, region/mib, leader)
	if _, err := RunLoad(ctx, leaderEP, LoadSpec{
		Workload: Workload{Name: name + "-fill", BlockSize: 1 * mib, QueueDepth: 8, Conns: 1},
		Region:   region, OnePass: true, Verify: true, Seed: 7,
	}); err != nil {
		return res, fmt.Errorf("%s: preparing the region: %w", name, err)
	}

	stop := make(chan struct{})
	type outcome struct {
		r   *LoadResult
		err error
	}
	done := make(chan outcome, 1)
	live := &Live{}
	loadStart := time.Now()
	go func() {
		r, err := RunLoad(ctx, viaEP, LoadSpec{
			Workload: w, Duration: time.Hour, Region: region,
			Verify: true, Prefilled: true, Reconnect: true, Seed: 11, Stop: stop, Live: live,
		})
		done <- outcome{r, err}
	}()
	// wait waits for d, unless the load ends (an error) or ctx does.
	var early *outcome
	wait := func(d time.Duration) error {
		select {
		case o := <-done:
			early = &o
			return fmt.Errorf("the load ended early: %v", o.err)
		case <-time.After(d):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	finish := func() outcome {
		close(stop)
		if early != nil {
			return *early
		}
		return <-done
	}
	if err := wait(tm.Before); err != nil {
		finish()
		return res, fmt.Errorf("%s: before the kill: %w", name, err)
	}

	role := "follower"
	if killLeader {
		role = "leader"
	}
	if cur, _, err := c.Leader(ctx); err != nil || cur != leader {
		finish()
		return res, fmt.Errorf("%s: the leader was %s when the load started but is %q now (%v): the scenario needs a stable leader (see the agents' logs)", name, leader, cur, err)
	}
	env.Progress("%s: client on %s; killing the %s %s (SIGKILL)", name, via, role, victim)
	faultAt := time.Now()
	scErr := c.Kill(victim)
	killed := time.Now()
	res.Phases = append(res.Phases, Phase{"kill (SIGKILL until the process is gone)", killed.Sub(faultAt)})
	resumed := killed
	if scErr == nil && killLeader {
		var st VolumeStatus
		res.NewLeader, st, scErr = c.WaitLeader(ctx, victim, tm.Resume)
		if scErr == nil {
			elected := time.Now()
			res.LeaderServes = elected.Sub(faultAt)
			res.Phases = append(res.Phases, Phase{fmt.Sprintf("kill until %s's admin API says it leads (term %d) and serves", res.NewLeader, st.Term), res.LeaderServes})
			env.Progress("%s: %s leads and serves %v after the kill; waiting for the client's I/O", name, res.NewLeader, res.LeaderServes.Round(time.Millisecond))
			resumed, scErr = waitResume(ctx, live, elected, tm.Resume)
		}
	} else if scErr == nil {
		resumed, scErr = waitResume(ctx, live, killed, tm.Resume)
	}
	if scErr == nil {
		what := "kill until the client's first completion after it"
		if killLeader {
			what = "kill until the client's first completion once the new leader serves"
		}
		res.Phases = append(res.Phases, Phase{what, resumed.Sub(faultAt)})
		env.Progress("%s: client I/O resumed %v after the kill; %s stays down %v more", name, resumed.Sub(faultAt).Round(time.Millisecond), victim, tm.Down)
		scErr = wait(tm.Down)
	}
	var restartAt, rejoined time.Time
	if scErr == nil {
		restartAt = time.Now()
		res.Phases = append(res.Phases, Phase{victim + " down (kill until restart)", restartAt.Sub(faultAt)})
		env.Progress("%s: restarting %s", name, victim)
		scErr = c.Restart(ctx, victim)
	}
	if scErr == nil {
		serving := time.Now()
		res.Phases = append(res.Phases, Phase{"restart (exec until it serves NBD)", serving.Sub(restartAt)})
		var target uint64
		var lead string
		lead, target, scErr = c.WaitCaughtUp(ctx, victim, tm.Rejoin)
		if scErr == nil {
			rejoined = time.Now()
			res.Rejoined = true
			res.RejoinAfter = rejoined.Sub(restartAt)
			res.Phases = append(res.Phases, Phase{fmt.Sprintf("restart until %s follows %s and applied index %d (the leader's commit index once it served)", victim, lead, target), res.RejoinAfter})
			env.Progress("%s: %s caught up %v after its restart", name, victim, res.RejoinAfter.Round(time.Millisecond))
		} else {
			res.Notes = append(res.Notes, fmt.Sprintf("%s did not rejoin: %v", victim, scErr))
			scErr = nil // reported as a check, not an error of the harness
		}
	}
	if scErr == nil && res.Rejoined && victim == PreferredLeader {
		if _, _, err := waitLeaderIs(ctx, c, victim, tm.Return); err == nil {
			t := time.Now()
			res.LeaderReturned = true
			res.Phases = append(res.Phases, Phase{fmt.Sprintf("restart until leadership is back on %s (preferred leader)", victim), t.Sub(restartAt)})
			env.Progress("%s: leadership back on %s %v after its restart", name, victim, t.Sub(restartAt).Round(time.Millisecond))
		} else {
			res.Notes = append(res.Notes, fmt.Sprintf("leadership did not move back to the preferred leader %s within %v of it catching up (%v)", victim, tm.Return, err))
		}
	}
	if scErr == nil {
		scErr = wait(tm.After)
	}
	o := finish()
	if err := firstErr(scErr, o.err); err != nil {
		return res, fmt.Errorf("%s: %w", name, err)
	}
	r := o.r
	res.setLoad(r, loadStart, faultAt)
	downEnd := restartAt.Sub(r.Started)
	res.FaultGap = longestGapIn(r.Gaps, res.FaultAt, downEnd)
	res.ReturnGap = longestGapIn(r.Gaps, downEnd, r.Stopped)
	res.DownGaps = gapsIn(r.Gaps, res.FaultAt, downEnd, 100*time.Millisecond)

	// What the design promises, and whether this run kept it.
	if killLeader {
		res.Checks = append(res.Checks,
			Check{"no failed requests (requests in flight are re-sent to the new leader)", r.Errors == 0, errDetail(r)},
			Check{fmt.Sprintf("I/O gap while the leader is down ≤ %v (issue 3)", StallTarget), res.FaultGap <= StallTarget, "gap " + fmtLat(res.FaultGap)},
		)
	} else {
		res.Checks = append(res.Checks,
			Check{"no failed requests", r.Errors == 0, errDetail(r)},
			Check{fmt.Sprintf("I/O gap while the follower is down ≤ %v", StallTarget), res.FaultGap <= StallTarget, "gap " + fmtLat(res.FaultGap)},
		)
	}
	res.Checks = append(res.Checks,
		Check{"no data mismatch", r.Mismatches == 0, r.FirstMismatch},
		Check{"the client's connection stayed up (no reconnect)", r.Reconnects == 0, fmt.Sprintf("%d reconnects", r.Reconnects)},
		Check{"the killed agent rejoined (caught up with the leader)", res.Rejoined, ""},
	)
	if victim == PreferredLeader {
		res.Checks = append(res.Checks, Check{"leadership moved back to the preferred leader", res.LeaderReturned, ""})
	}

	if killLeader {
		switched := "the client's agent " + via + " forwarded to the new leader " + res.NewLeader
		if res.NewLeader == via {
			switched = "the client's agent " + via + " became the leader itself and served the re-sent requests locally"
		}
		res.Notes = append(res.Notes,
			fmt.Sprintf("the client used %s, which forwards to the leader %s; %s was killed; %s.", via, leader, leader, switched),
			"the gap at the fault is the longest time without any completion while the killed agent was down: the election (heartbeat timeout 650 ms, a randomised election timeout, then a vote) plus the new leader's barrier, and any later stall before the restart.",
		)
	} else {
		res.Notes = append(res.Notes,
			fmt.Sprintf("the client used the leader %s directly; the follower %s was killed; the leader and %s still form a majority, so commits should not wait.", via, victim, others[1]),
		)
	}
	if len(res.DownGaps) > 1 {
		var s []string
		for _, g := range res.DownGaps {
			s = append(s, fmt.Sprintf("%s at %s", fmtLat(g.Length), relTo(g.At-res.FaultAt)))
		}
		res.Notes = append(res.Notes, "gaps ≥ 100 ms while the agent was down: "+strings.Join(s, ", "))
	}
	if r.Mismatches == 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("every read (%d units of 4 KiB checked, before, during and after the fault) returned the last acknowledged write, or for a failed write either the old or the new data", r.Verified))
	} else {
		res.Notes = append(res.Notes, "DATA MISMATCH: "+r.FirstMismatch)
	}
	return res, nil
}

// waitLeaderIs waits until name leads the volume and serves it.
func waitLeaderIs(ctx context.Context, c *Cluster, name string, timeout time.Duration) (string, VolumeStatus, error) {
	deadline := time.Now().Add(timeout)
	for {
		l, st, err := c.Leader(ctx)
		if err == nil && l == name {
			return l, st, nil
		}
		if time.Now().After(deadline) {
			return l, st, fmt.Errorf("%s does not lead %s after %v (leader now: %q)", name, ClusterVolume, timeout, l)
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return "", VolumeStatus{}, err
		}
	}
}

// gapsIn returns the gaps of at least min that overlap [from, to].
func gapsIn(gaps []Gap, from, to, min time.Duration) []Gap {
	out := []Gap{}
	for _, g := range gaps {
		if g.Length >= min && g.At <= to && g.At+g.Length >= from {
			out = append(out, g)
		}
	}
	return out
}

// errDetail describes a load's failed requests.
func errDetail(r *LoadResult) string {
	if r.Errors == 0 {
		return "0 failed requests"
	}
	return fmt.Sprintf("%d failed requests between %s and %s into the load, first: %s", r.Errors, fmtLat(r.FirstErrorAt), fmtLat(r.LastErrorAt), r.FirstError)
}
