package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/tandem-project/tandem/vmcoord/qmp"
)

// The supervisor's backoff between attempts to resume a VM paused by a
// disk error.
const (
	resumeMinDelay = 100 * time.Millisecond
	resumeMaxDelay = 2 * time.Second
)

// blockIOError is the data of QEMU's BLOCK_IO_ERROR event.
type blockIOError struct {
	Device    string `json:"device"`
	NodeName  string `json:"node-name"`
	Operation string `json:"operation"` // "read" or "write"
	Action    string `json:"action"`    // "stop", "report" or "ignore"
	NoSpace   bool   `json:"nospace"`
	Reason    string `json:"reason"`
}

// supervise watches QEMU's events until ctx ends (QEMU exited, or Kill):
// when a disk error pauses the VM (BLOCK_IO_ERROR with action "stop"), it
// resumes it once the storage is back.
func (p *Process) supervise(ctx context.Context, sub *qmp.Subscription) {
	defer close(p.supervisorDone)
	defer func() { sub.Close() }()
	// A VM a disk error paused before this supervisor started (Attach,
	// after the agent was away longer than the disks' reconnect-delay)
	// sends no event: it is resumed as if the event came now.
	if st, err := p.Status(ctx); err == nil && st == StateIOError {
		p.log.Warn("VM found paused by a disk error; resuming it once its storage is ready")
		p.resume(ctx, sub)
	}
	for {
		ev, err := sub.Wait(ctx, "BLOCK_IO_ERROR")
		if err != nil {
			if ctx.Err() != nil || p.qmp.Err() != nil {
				return
			}
			// Dropped for falling behind (a long resume while QEMU sent
			// many events): subscribe again and look at the state.
			p.log.Warn("supervisor missed events; checking the VM's state", "err", err)
			sub = p.qmp.Subscribe()
		} else {
			var e blockIOError
			if err := json.Unmarshal(ev.Data, &e); err != nil {
				p.log.Error("undecodable BLOCK_IO_ERROR", "data", string(ev.Data), "err", err)
			}
			p.log.Warn("disk I/O error", "node", e.NodeName, "operation", e.Operation,
				"action", e.Action, "nospace", e.NoSpace, "reason", e.Reason)
			if e.Action != "stop" {
				continue
			}
		}
		p.resume(ctx, sub)
	}
}

// resume resumes a VM paused by a disk error: it waits for the storage
// (Options.StorageReady, or a delay), sends "cont" and, if the retried
// requests fail again within the delay (another BLOCK_IO_ERROR), tries
// again with a doubled delay (100 ms .. 2 s). It returns once the VM runs,
// is no longer paused by a disk error (someone else resumed or stopped it),
// or ctx ends.
func (p *Process) resume(ctx context.Context, sub *qmp.Subscription) {
	start := time.Now()
	delay := resumeMinDelay
	var notReadyLogged time.Time
	for attempt := 1; ; attempt++ {
		if !sleep(ctx, delay) {
			return
		}
		if ready := p.opts.StorageReady; ready != nil {
			if err := ready(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				// The first refusal, then one a minute at most: a VM
				// that stays paused shows in the log without a line
				// every 2 s.
				if notReadyLogged.IsZero() || time.Since(notReadyLogged) >= time.Minute {
					notReadyLogged = time.Now()
					p.log.Info("storage not ready; VM stays paused", "attempt", attempt, "paused", time.Since(start).Round(time.Second), "err", err)
				}
				delay = min(2*delay, resumeMaxDelay)
				continue
			}
		}
		st, err := p.Status(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, ErrExited) {
				return
			}
			p.log.Warn("query-status failed while resuming", "err", err)
			delay = min(2*delay, resumeMaxDelay)
			continue
		}
		if st != StateIOError {
			p.log.Info("VM no longer paused by a disk error; not resuming it", "state", st)
			return
		}
		if err := p.Cont(ctx); err != nil {
			if ctx.Err() != nil || errors.Is(err, ErrExited) {
				return
			}
			p.log.Warn("cont failed", "attempt", attempt, "err", err)
			delay = min(2*delay, resumeMaxDelay)
			continue
		}
		resumed := time.Now()
		// The retried requests either complete, or fail again at once (the
		// NBD client is not reconnected) or after its reconnect delay.
		wait, cancel := context.WithTimeout(ctx, delay)
		_, err = sub.Wait(wait, "BLOCK_IO_ERROR")
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			// Every tenth attempt at the longest delay says so, so that a
			// VM that stays paused shows in the log.
			if delay == resumeMaxDelay && attempt%10 == 0 {
				p.log.Warn("VM still paused: its disk fails again after each cont",
					"attempts", attempt, "paused", time.Since(start).Round(time.Second))
			} else {
				p.log.Debug("disk error again after cont", "attempt", attempt)
			}
			delay = min(2*delay, resumeMaxDelay)
			continue
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			return // the subscription ended; supervise sees why
		}
		p.log.Info("VM resumed after a disk error", "attempts", attempt,
			"paused", resumed.Sub(start).Round(time.Millisecond))
		return
	}
}

// sleep waits for d or until ctx ends, reporting whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
