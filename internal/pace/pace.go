// Package pace holds bulk work (a volume copy, an integrity check) to a
// rate: the worker reports how much it has done since it started, and Wait
// sleeps until that is within the rate.
package pace

import (
	"context"
	"time"
)

// Wait returns once done bytes since start are within rate bytes a second
// (at once if rate ≤ 0), or with ctx's error when ctx ends first.
func Wait(ctx context.Context, start time.Time, done, rate int64) error {
	if rate <= 0 {
		return nil
	}
	wait := time.Until(start.Add(time.Duration(float64(done) / float64(rate) * float64(time.Second))))
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
