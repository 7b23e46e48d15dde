package catalog

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Replica moves (docs/mirror.md): one replica of a volume goes from one
// host to another through the volume's raft group. The catalog records
// the move and its phase; the volume's Replicas change only when the move
// completes, in the same command.

// Move phases.
const (
	// MoveEvicting: a rebuild's first phase (Move.Rebuild): the replica
	// leaves the volume's group; its host deletes it.
	MoveEvicting = "evicting"
	// MoveCopying: the destination joins the volume's group as a
	// non-voter and catches up (volume stream, then the log).
	MoveCopying = "copying"
	// MovePromoted: the destination is a voter; its content is being
	// compared with the leader's.
	MovePromoted = "promoted"
	// MoveRemoving: the check passed; the source leaves the group. From
	// here the move can only complete.
	MoveRemoving = "removing"
)

// Move reasons.
const (
	// MoveByOperator: asked for through the API.
	MoveByOperator = "operator"
	// MoveToDrain: the source host is drained.
	MoveToDrain = "drain"
	// MoveToHeal: the source host failed longer than the self-healing
	// delay.
	MoveToHeal = "heal"
	// MoveLost: a rebuild its host asked for, its replica's state lost.
	MoveLost = "lost"
)

// Move results.
const (
	MoveCompleted = "completed"
	MoveCancelled = "cancelled"
	MoveFailed    = "failed"
)

// Move commands.
const (
	// CmdMoveReplica starts a move of volume Name's replica (Move.From to
	// Move.To).
	CmdMoveReplica = "move_replica"
	// CmdMovePhase advances a move's phase (Move.ID, Move.Phase, and the
	// integrity check's result with MoveRemoving).
	CmdMovePhase = "move_phase"
	// CmdEndMove ends a move: completed (Replicas change), cancelled or
	// failed (nothing changes).
	CmdEndMove = "end_move"
)

// ErrNoMove: the command names a move that is not the volume's current
// one (it ended, or another began).
var ErrNoMove = errors.New("no such move")

// Move is a replica move in progress.
type Move struct {
	// ID is the catalog index of the move_replica command.
	ID   uint64 `json:"id"`
	From string `json:"from"`
	To   string `json:"to"`
	// Phase is copying, promoted or removing.
	Phase string `json:"phase"`
	// MaxRate limits the volume copy, in bytes per second (0: none).
	MaxRate int64     `json:"max_rate,omitempty"`
	Started time.Time `json:"started"`
	// Reason is why the move began: MoveByOperator, MoveToDrain or
	// MoveToHeal.
	Reason string `json:"reason,omitempty"`
	// Check is the integrity check's result, once it ran.
	Check *MoveCheck `json:"check,omitempty"`
}

// MoveCheck is the result of comparing the new replica with the leader's
// range by range (docs/mirror.md, "Integrity check").
type MoveCheck struct {
	// Index is the barrier index both replicas had applied.
	Index uint64 `json:"index"`
	// Ranges is the number of ranges of RangeBytes; Compared those whose
	// two checksums describe a common log index, Mismatched those of them
	// that differ.
	Ranges     int64 `json:"ranges"`
	RangeBytes int64 `json:"range_bytes"`
	Compared   int64 `json:"compared"`
	Mismatched int64 `json:"mismatched"`
	// Pinned counts the compared ranges that changed during every read
	// and were compared by checksum entries, each at its own later log
	// index (raftlog.Volume.PinChecksums).
	Pinned int64 `json:"pinned,omitempty"`
	// OK: every range compared, none differs.
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// MoveResult is how a volume's last move ended.
type MoveResult struct {
	ID     uint64 `json:"id"`
	From   string `json:"from"`
	To     string `json:"to"`
	Reason string `json:"reason,omitempty"`
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
	// Check is the integrity check's result (completed moves).
	Check *MoveCheck `json:"check,omitempty"`
	// Bytes is the volume data the destination received by stream, Copy
	// how long that took.
	Bytes    int64         `json:"bytes,omitempty"`
	Copy     time.Duration `json:"copy_ns,omitempty"`
	Started  time.Time     `json:"started"`
	Finished time.Time     `json:"finished"`
}

// PlannedMove is a replica move that starts when the volume's current
// one completes.
type PlannedMove struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// MoveCommand carries the fields of the move commands (Command.Move).
type MoveCommand struct {
	// ID names the move (move_phase, end_move).
	ID   uint64 `json:"id,omitempty"`
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	// Hosts, instead of From and To, is the volume's replica set after
	// the moves (move_replica): each replica on a host not in Hosts moves
	// to a host of Hosts without one, one move after the other.
	Hosts   []string `json:"hosts,omitempty"`
	MaxRate int64    `json:"max_rate,omitempty"`
	Phase   string   `json:"phase,omitempty"`
	// Reason is why the move begins (move_replica; "" is
	// MoveByOperator).
	Reason string `json:"reason,omitempty"`
	// Check is the integrity check's result (move_phase to removing).
	Check *MoveCheck `json:"check,omitempty"`
	// Leader is the volume's new preferred leader when the source was it
	// (move_phase to removing, end_move completed: a replica that stays;
	// "" for the destination).
	Leader string `json:"leader,omitempty"`
	// Result is how the move ended (end_move).
	Result *MoveResult `json:"result,omitempty"`
}

// CheckMove reports why volume name's replica on from cannot move to to
// now.
func (s *State) CheckMove(name, from, to string) error {
	v, ok := s.Volumes[name]
	if !ok {
		return fmt.Errorf("catalog: volume %q: %w", name, ErrNotFound)
	}
	if v.Move != nil {
		return fmt.Errorf("catalog: volume %q: %w: moving its replica from %s to %s already (cancel it first)", name, ErrExists, v.Move.From, v.Move.To)
	}
	if from == "" || to == "" {
		return fmt.Errorf("catalog: volume %q: %w: a move needs a source and a destination host", name, ErrInvalid)
	}
	if from == to {
		return s.checkRebuild(v, from)
	}
	if !slices.Contains(v.Replicas, from) {
		return fmt.Errorf("catalog: volume %q: %w: host %s holds no replica of it (replicas: %v)", name, ErrInvalid, from, v.Replicas)
	}
	if slices.Contains(v.Replicas, to) {
		return fmt.Errorf("catalog: volume %q: %w: host %s holds a replica already", name, ErrInvalid, to)
	}
	return s.checkDestination(name, to)
}

// checkRebuild reports why host's replica of volume v cannot be rebuilt in
// place now. The replica leaves the group before it is copied again: the
// other replicas must then be a quorum of the group without it and still
// keep a majority of the one with it, so at least three replicas.
func (s *State) checkRebuild(v *Volume, host string) error {
	if !slices.Contains(v.Replicas, host) {
		return fmt.Errorf("catalog: volume %q: %w: host %s holds no replica of it (replicas: %v)", v.Name, ErrInvalid, host, v.Replicas)
	}
	if len(v.Replicas) < 3 {
		return fmt.Errorf("catalog: volume %q: %w: a volume of %d replicas cannot rebuild one in place (the others alone are no majority): move it to another host", v.Name, ErrInvalid, len(v.Replicas))
	}
	return s.checkDestination(v.Name, host)
}

// checkDestination reports why host to cannot take a replica of volume
// name by a move.
func (s *State) checkDestination(name, to string) error {
	h, ok := s.Hosts[to]
	if !ok {
		return fmt.Errorf("catalog: volume %q: host %q: %w", name, to, ErrNotFound)
	}
	if h.State != "alive" {
		return fmt.Errorf("catalog: volume %q: %w: host %s is %s, not alive", name, ErrInvalid, to, h.State)
	}
	if h.Drained {
		return fmt.Errorf("catalog: volume %q: %w: host %s is drained", name, ErrInvalid, to)
	}
	return nil
}

// PlanMoves returns the moves that make hosts volume name's replica set,
// in the order they run: the preferred leader's replica last, so that
// leadership moves once.
func (s *State) PlanMoves(name string, hosts []string) ([]PlannedMove, error) {
	v, ok := s.Volumes[name]
	if !ok {
		return nil, fmt.Errorf("catalog: volume %q: %w", name, ErrNotFound)
	}
	if len(hosts) != len(v.Replicas) {
		return nil, fmt.Errorf("catalog: volume %q: %w: %d hosts for %d replicas", name, ErrInvalid, len(hosts), len(v.Replicas))
	}
	var to []string
	for i, h := range hosts {
		if slices.Contains(hosts[:i], h) {
			return nil, fmt.Errorf("catalog: volume %q: %w: host %s named twice", name, ErrInvalid, h)
		}
		if !slices.Contains(v.Replicas, h) {
			to = append(to, h)
		}
	}
	var from []string
	for _, h := range v.Replicas {
		if !slices.Contains(hosts, h) && h != v.PreferredLeader {
			from = append(from, h)
		}
	}
	if v.PreferredLeader != "" && !slices.Contains(hosts, v.PreferredLeader) && slices.Contains(v.Replicas, v.PreferredLeader) {
		from = append(from, v.PreferredLeader)
	}
	if len(to) == 0 {
		return nil, fmt.Errorf("catalog: volume %q: %w: its replicas are on %v already", name, ErrInvalid, v.Replicas)
	}
	plan := make([]PlannedMove, len(to))
	for i := range to {
		plan[i] = PlannedMove{From: from[i], To: to[i]}
	}
	return plan, nil
}

// applyMove applies the move commands.
func (s *State) applyMove(index uint64, c Command) error {
	mc := c.Move
	if mc == nil {
		return fmt.Errorf("catalog: %w: %s without a move", ErrInvalid, c.Kind)
	}
	if c.Kind == CmdMoveReplica {
		from, to := mc.From, mc.To
		var plan []PlannedMove
		if len(mc.Hosts) > 0 {
			if mc.From != "" || mc.To != "" {
				return fmt.Errorf("catalog: volume %q: %w: a move names either from and to or the hosts", c.Name, ErrInvalid)
			}
			var err error
			if plan, err = s.PlanMoves(c.Name, mc.Hosts); err != nil {
				return err
			}
			for _, p := range plan {
				if err := s.checkDestination(c.Name, p.To); err != nil {
					return err
				}
			}
			from, to, plan = plan[0].From, plan[0].To, plan[1:]
		}
		if err := s.CheckMove(c.Name, from, to); err != nil {
			return err
		}
		if mc.MaxRate < 0 {
			return fmt.Errorf("catalog: volume %q: %w: negative copy rate", c.Name, ErrInvalid)
		}
		reason := mc.Reason
		switch reason {
		case "":
			reason = MoveByOperator
		case MoveByOperator, MoveToDrain, MoveToHeal:
		case MoveLost:
			if from != to {
				return fmt.Errorf("catalog: volume %q: %w: only a rebuild is for a lost replica", c.Name, ErrInvalid)
			}
		default:
			return fmt.Errorf("catalog: volume %q: %w: unknown move reason %q", c.Name, ErrInvalid, mc.Reason)
		}
		v := s.Volumes[c.Name]
		phase := MoveCopying
		if from == to {
			phase = MoveEvicting
		}
		v.Move = &Move{ID: index, From: from, To: to, Phase: phase, MaxRate: mc.MaxRate, Started: c.At, Reason: reason}
		v.Planned = plan
		v.Changed = index
		return nil
	}
	v, ok := s.Volumes[c.Name]
	if !ok {
		return fmt.Errorf("catalog: volume %q: %w", c.Name, ErrNotFound)
	}
	if v.Move == nil || v.Move.ID != mc.ID {
		return fmt.Errorf("catalog: volume %q: move %d: %w", c.Name, mc.ID, ErrNoMove)
	}
	// Moves are replaced, never changed in place: clones of the state
	// share them.
	m := *v.Move
	switch c.Kind {
	case CmdMovePhase:
		order := []string{MoveCopying, MovePromoted, MoveRemoving}
		if m.Rebuild() {
			order = []string{MoveEvicting, MoveCopying, MovePromoted}
		}
		cur, next := slices.Index(order, m.Phase), slices.Index(order, mc.Phase)
		switch {
		case next < 0:
			return fmt.Errorf("catalog: volume %q: %w: unknown move phase %q", c.Name, ErrInvalid, mc.Phase)
		case next == cur:
			return nil // a step recorded again (its driver restarted)
		case next != cur+1:
			return fmt.Errorf("catalog: volume %q: %w: move phase %s after %s", c.Name, ErrInvalid, mc.Phase, m.Phase)
		case mc.Phase == MoveRemoving && (mc.Check == nil || !mc.Check.OK):
			return fmt.Errorf("catalog: volume %q: %w: the source leaves only after a passed integrity check", c.Name, ErrInvalid)
		}
		m.Phase = mc.Phase
		// The source stops being the preferred leader as it starts to
		// leave, so that leadership does not come back to it.
		if m.Phase == MoveRemoving && v.PreferredLeader == m.From && mc.Leader != m.From && slices.Contains(v.Replicas, mc.Leader) {
			v.PreferredLeader = mc.Leader
		}
		if mc.Check != nil {
			ck := *mc.Check
			m.Check = &ck
		}
		v.Move = &m
	case CmdEndMove:
		r := mc.Result
		if r == nil {
			return fmt.Errorf("catalog: volume %q: %w: end of move without a result", c.Name, ErrInvalid)
		}
		switch {
		case r.Result == MoveCompleted && m.Rebuild() && (m.Phase != MovePromoted || r.Check == nil || !r.Check.OK):
			return fmt.Errorf("catalog: volume %q: %w: a rebuild completes only promoted and checked", c.Name, ErrInvalid)
		case r.Result == MoveCompleted && !m.Rebuild() && m.Phase != MoveRemoving:
			return fmt.Errorf("catalog: volume %q: %w: completed in phase %s", c.Name, ErrInvalid, m.Phase)
		case (r.Result == MoveCancelled || r.Result == MoveFailed) && m.Phase == MoveRemoving:
			return fmt.Errorf("catalog: volume %q: %w: too late to stop the move, %s is leaving the volume's group", c.Name, ErrInvalid, m.From)
		case r.Result != MoveCompleted && r.Result != MoveCancelled && r.Result != MoveFailed:
			return fmt.Errorf("catalog: volume %q: %w: unknown move result %q", c.Name, ErrInvalid, r.Result)
		}
		if r.Result == MoveCompleted && !m.Rebuild() {
			reps := slices.Clone(v.Replicas)
			reps[slices.Index(reps, m.From)] = m.To
			v.Replicas = reps
			// The destination created its replica (it joined the group);
			// the source's is gone.
			opened := slices.DeleteFunc(slices.Clone(v.Opened), func(h string) bool { return h == m.From || h == m.To })
			v.Opened = append(opened, m.To)
			if v.PreferredLeader == m.From {
				v.PreferredLeader = m.To
				if mc.Leader != "" && slices.Contains(reps, mc.Leader) {
					v.PreferredLeader = mc.Leader
				}
			}
		}
		res := *r
		res.ID, res.From, res.To, res.Reason, res.Started, res.Finished = m.ID, m.From, m.To, m.Reason, m.Started, c.At
		if res.Check == nil {
			res.Check = m.Check
		}
		v.Move, v.LastMove = nil, &res
		// The next planned move starts in the same command; a move that
		// did not complete ends the plan.
		plan := v.Planned
		v.Planned = nil
		switch {
		case len(plan) > 0 && r.Result != MoveCompleted:
			res.Error = strings.TrimPrefix(res.Error+fmt.Sprintf("; %d planned moves dropped", len(plan)), "; ")
		case len(plan) > 0:
			next := plan[0]
			if err := s.CheckMove(c.Name, next.From, next.To); err != nil {
				res.Error = fmt.Sprintf("the next planned move (%s to %s) cannot start: %v", next.From, next.To, strings.TrimPrefix(err.Error(), "catalog: "))
				break
			}
			v.Move = &Move{ID: index, From: next.From, To: next.To, Phase: MoveCopying, MaxRate: m.MaxRate, Started: c.At, Reason: m.Reason}
			v.Planned = plan[1:]
		}
	default:
		return fmt.Errorf("catalog: %w: unknown command %q", ErrInvalid, c.Kind)
	}
	v.Changed = index
	return nil
}
