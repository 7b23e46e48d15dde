package pace

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestWait checks when Wait lets the work go on: at once when
// there is no limit or the check is behind its rate, and only after a wait
// (here cut short by the context) when it is ahead.
func TestWait(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now().Add(-10 * time.Second)
	for _, tc := range []struct {
		name       string
		done, rate int64
		wantErr    error
	}{
		{"no limit", 1 << 40, 0, nil},
		{"behind the rate", 50 << 20, 10 << 20, nil},                 // 5 s of work in 10 s
		{"ahead of the rate", 200 << 20, 10 << 20, context.Canceled}, // 20 s of work in 10 s: waits
	} {
		// The context is already cancelled: Wait returns nil only if it
		// does not wait at all.
		if err := Wait(cancelled, start, tc.done, tc.rate); !errors.Is(err, tc.wantErr) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.wantErr)
		}
	}
}
