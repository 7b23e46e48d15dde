package catalog

import (
	"errors"
	"fmt"
	"time"
)

// Replica verification (docs/mirror.md, "Verifying a volume's replicas"):
// an operator asks for it, the agent that leads the volume compares every
// other replica with its own range by range, as a move's integrity check
// does, and records the result.

// Verification commands.
const (
	// CmdVerifyVolume asks for a verification of volume Name's replicas
	// (Verify.MaxRate).
	CmdVerifyVolume = "verify_volume"
	// CmdEndVerify records how verification Verify.ID ended
	// (Verify.Result).
	CmdEndVerify = "end_verify"
)

// ErrNoVerify: the command names a verification that is not the volume's
// current one (it ended, or another began).
var ErrNoVerify = errors.New("no such verification")

// Verify is a verification of a volume's replicas under way.
type Verify struct {
	// ID is the catalog index of the verify_volume command.
	ID uint64 `json:"id"`
	// MaxRate limits how fast each replica is read, in bytes per second
	// (0: no limit).
	MaxRate int64     `json:"max_rate,omitempty"`
	Started time.Time `json:"started"`
}

// VerifyResult is how a volume's last verification ended.
type VerifyResult struct {
	ID uint64 `json:"id"`
	// Leader is the host whose replica the others were compared with.
	Leader string `json:"leader"`
	// Replicas holds the comparison of each other replica with the
	// leader's, in the volume's replica order.
	Replicas []VerifiedReplica `json:"replicas"`
	// OK: every other replica was compared in full and none differs.
	OK bool `json:"ok"`
	// Cancelled: an operator cancelled it (OK is false).
	Cancelled bool `json:"cancelled,omitempty"`
	// Error says why it is not OK (the first replica that differs or
	// could not be compared), if it is not.
	Error    string    `json:"error,omitempty"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
}

// VerifiedReplica is the comparison of one replica with the leader's.
type VerifiedReplica struct {
	Host  string    `json:"host"`
	Check MoveCheck `json:"check"`
}

// VerifyCommand carries the verification commands' fields.
type VerifyCommand struct {
	// ID names the verification (end_verify).
	ID      uint64 `json:"id,omitempty"`
	MaxRate int64  `json:"max_rate,omitempty"`
	// Result is how it ended (end_verify).
	Result *VerifyResult `json:"result,omitempty"`
}

// applyVerify applies the verification commands.
func (s *State) applyVerify(index uint64, c Command) error {
	vc := c.Verify
	if vc == nil {
		return fmt.Errorf("catalog: %w: %s without its verification", ErrInvalid, c.Kind)
	}
	v, ok := s.Volumes[c.Name]
	if !ok {
		return fmt.Errorf("catalog: volume %q: %w", c.Name, ErrNotFound)
	}
	switch c.Kind {
	case CmdVerifyVolume:
		switch {
		case vc.MaxRate < 0:
			return fmt.Errorf("catalog: volume %q: %w: negative rate", c.Name, ErrInvalid)
		case v.Verify != nil:
			return fmt.Errorf("catalog: volume %q: %w: verification %d is running", c.Name, ErrInvalid, v.Verify.ID)
		case len(v.Replicas) < 2:
			return fmt.Errorf("catalog: volume %q: %w: it has one replica, nothing to compare it with", c.Name, ErrInvalid)
		}
		v.Verify = &Verify{ID: index, MaxRate: vc.MaxRate, Started: c.At}
	case CmdEndVerify:
		switch {
		case v.Verify == nil || v.Verify.ID != vc.ID:
			return fmt.Errorf("catalog: volume %q: verification %d: %w", c.Name, vc.ID, ErrNoVerify)
		case vc.Result == nil:
			return fmt.Errorf("catalog: volume %q: %w: end of verification without a result", c.Name, ErrInvalid)
		}
		// Results are replaced, never changed in place: clones of the
		// state share them.
		r := *vc.Result
		r.Replicas = append([]VerifiedReplica(nil), vc.Result.Replicas...)
		r.ID, r.Started, r.Finished = v.Verify.ID, v.Verify.Started, c.At
		v.Verify, v.LastVerify = nil, &r
	default:
		return fmt.Errorf("catalog: %w: unknown command %q", ErrInvalid, c.Kind)
	}
	v.Changed = index
	return nil
}
