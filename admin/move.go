package admin

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/raftlog"
)

// Replica moves (docs/mirror.md): POST /v1/volumes/{name}/move and
// /move/cancel for operators; the agents' internal POST /v1/internal/move
// (a move's step, on the control leader) and GET
// /v1/local/volumes/{name}/checksums (a replica's per-range checksums).

// Mover is what the move API needs from an agent in cluster mode, besides
// Cluster. An agent whose Cluster does not implement it answers 501.
type Mover interface {
	// MoveVolume records a move of one of volume name's replicas; the
	// agent that leads the volume carries it out.
	MoveVolume(ctx context.Context, name string, req MoveVolume) (Volume, error)
	// CancelMove ends the volume's move before its source leaves the
	// group (a 409 afterwards: the move then completes).
	CancelMove(ctx context.Context, name string) (Volume, error)
	// MoveStep records a step of a move (an agent's internal request, on
	// the control leader) and returns its catalog index.
	MoveStep(ctx context.Context, step MoveStep) (uint64, error)
	// LocalChecksums returns this agent's replica's checksums of volume
	// name once it applied index (any agent holding a replica).
	LocalChecksums(ctx context.Context, name string, q ChecksumQuery) (Checksums, error)
}

// MoveVolume is the body of POST /v1/volumes/{name}/move.
type MoveVolume struct {
	// From is the host whose replica moves; To the destination, an alive
	// host without a replica of the volume, or From itself to rebuild that
	// replica in place (docs/mirror.md).
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	// Hosts, instead of From and To, is the volume's replica set after the
	// moves: each replica on a host not listed moves to a listed host
	// without one, one move after the other.
	Hosts []string `json:"hosts,omitempty"`
	// MaxRate limits the volume copy, in bytes per second: a number or a
	// size string such as "100M" (0 or absent: no limit).
	MaxRate Size `json:"max_rate,omitempty"`
}

// PlannedMove is a replica move that starts when the volume's current one
// completes.
type PlannedMove struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// VolumeMove is a replica move in progress, in a volume body.
type VolumeMove struct {
	// ID is the catalog index of the command that started it.
	ID   uint64 `json:"id"`
	From string `json:"from"`
	To   string `json:"to"`
	// Reason is why the move began: operator (asked for), drain (the
	// source is drained), heal (the source failed longer than the
	// self-healing delay) or lost (a rebuild its host asked for, its
	// replica's files lost).
	Reason string `json:"reason"`
	// Phase is evicting (a rebuild: the replica leaves the group and is
	// deleted), copying (the destination catches up as a non-voter),
	// promoted (it votes; its content is being checked) or removing (the
	// source leaves the group).
	Phase   string    `json:"phase"`
	Started time.Time `json:"started"`
	// MaxRate is the copy's limit in bytes per second (0: none).
	MaxRate int64 `json:"max_rate,omitempty"`
	// Copied is the volume data the destination received by stream so
	// far; Done how far through the Size bytes of the volume the stream is
	// (holes are skipped, not sent); Copying is set while the stream runs;
	// Rate is the stream's bytes per second.
	Copied  int64 `json:"copied"`
	Done    int64 `json:"done"`
	Size    int64 `json:"size"`
	Copying bool  `json:"copying"`
	Rate    int64 `json:"rate"`
	// Lag is how many entries the destination has applied fewer than the
	// leader has committed (0 while unknown).
	Lag uint64 `json:"lag"`
	// Check is the integrity check's result, once it ran.
	Check *MoveCheck `json:"check,omitempty"`
}

// MoveCheck is the result of comparing a moved replica with the leader's,
// range by range, at a log index both had applied.
type MoveCheck struct {
	Index      uint64 `json:"index"`
	Ranges     int64  `json:"ranges"`
	RangeBytes int64  `json:"range_bytes"`
	Compared   int64  `json:"compared"`
	Mismatched int64  `json:"mismatched"`
	Pinned     int64  `json:"pinned,omitempty"`
	OK         bool   `json:"ok"`
	Error      string `json:"error,omitempty"`
}

// MoveResult is how a volume's last replica move ended.
type MoveResult struct {
	ID     uint64 `json:"id"`
	From   string `json:"from"`
	To     string `json:"to"`
	Reason string `json:"reason,omitempty"`
	// Result is completed, cancelled or failed.
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
	// Check is the integrity check's result.
	Check *MoveCheck `json:"check,omitempty"`
	// Bytes is the volume data copied by stream, Copy how long it took.
	Bytes    int64         `json:"bytes"`
	Copy     time.Duration `json:"copy_ns"`
	Started  time.Time     `json:"started"`
	Finished time.Time     `json:"finished"`
}

// MoveStep is the body of POST /v1/internal/move: a step of a replica
// move an agent records in the catalog.
type MoveStep struct {
	Volume string `json:"volume"`
	// Kind is move_phase or end_move.
	Kind string              `json:"kind"`
	Move catalog.MoveCommand `json:"move"`
}

// ChecksumQuery asks a replica for its checksums of Count ranges from
// range First (Count 0: to the end), once it applied Index. With Pinned
// set, the ranges are those the checksum entry at Index with that op id
// named (raftlog.Volume.PinChecksums), as the replica hashed them when it
// applied the entry; First and Count only label the answer.
type ChecksumQuery struct {
	Index  uint64
	First  int64
	Count  int64
	Pinned uint64
}

// Checksums is the body of GET /v1/local/volumes/{name}/checksums: the
// answering replica's checksums of ranges First, First+1... of RangeBytes.
type Checksums struct {
	Host       string               `json:"host"`
	First      int64                `json:"first"`
	RangeBytes int64                `json:"range_bytes"`
	Ranges     []raftlog.RangeSum   `json:"ranges"`
	Status     raftlog.VolumeStatus `json:"status"`
}

// MoveCheckOf converts the catalog's check record.
func MoveCheckOf(c *catalog.MoveCheck) *MoveCheck {
	if c == nil {
		return nil
	}
	return &MoveCheck{Index: c.Index, Ranges: c.Ranges, RangeBytes: c.RangeBytes, Compared: c.Compared, Mismatched: c.Mismatched, Pinned: c.Pinned, OK: c.OK, Error: c.Error}
}

// MoveResultOf converts the catalog's record of a move's end.
func MoveResultOf(r *catalog.MoveResult) *MoveResult {
	if r == nil {
		return nil
	}
	return &MoveResult{ID: r.ID, From: r.From, To: r.To, Reason: r.Reason, Result: r.Result, Error: r.Error, Check: MoveCheckOf(r.Check),
		Bytes: r.Bytes, Copy: r.Copy, Started: r.Started, Finished: r.Finished}
}

// routeMoves adds the move API to mux.
func (s *server) routeMoves(mux *http.ServeMux) {
	m, ok := s.cfg.Cluster.(Mover)
	if !ok {
		return
	}
	mux.HandleFunc("POST /v1/volumes/{name}/move", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		var req MoveVolume
		if !decode(w, r, &req) {
			return
		}
		v, err := m.MoveVolume(r.Context(), r.PathValue("name"), req)
		if err == nil {
			v, err = s.addWriter(r.Context(), v)
		}
		s.reply(w, http.StatusAccepted, v, err)
	}))
	mux.HandleFunc("POST /v1/volumes/{name}/move/cancel", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		v, err := m.CancelMove(r.Context(), r.PathValue("name"))
		if err == nil {
			v, err = s.addWriter(r.Context(), v)
		}
		s.reply(w, http.StatusOK, v, err)
	}))
	mux.HandleFunc("POST /v1/internal/move", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		var req MoveStep
		if !decode(w, r, &req) {
			return
		}
		idx, err := m.MoveStep(r.Context(), req)
		s.reply(w, http.StatusOK, Committed{Index: idx}, err)
	}))
	mux.HandleFunc("GET /v1/local/volumes/{name}/checksums", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var nums [4]uint64
		for i, k := range []string{"index", "first", "count", "pinned"} {
			if v := q.Get(k); v != "" {
				n, err := strconv.ParseUint(v, 10, 64)
				if err != nil || (k == "first" || k == "count") && n > math.MaxInt64 {
					writeError(w, http.StatusBadRequest, fmt.Sprintf("%s=%q: want a non-negative integer", k, v))
					return
				}
				nums[i] = n
			}
		}
		cs, err := m.LocalChecksums(r.Context(), r.PathValue("name"), ChecksumQuery{Index: nums[0], First: int64(nums[1]), Count: int64(nums[2]), Pinned: nums[3]})
		s.reply(w, http.StatusOK, cs, err)
	})
}
