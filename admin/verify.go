package admin

import (
	"context"
	"net/http"
	"time"

	"github.com/tandem-project/tandem/cluster/catalog"
)

// Replica verification (docs/mirror.md, "Verifying a volume's replicas"):
// POST /v1/volumes/{name}/verify and /verify/cancel for operators, and the
// agents' internal
// POST /v1/internal/verify (a verification's result, on the control
// leader).

// Verifier is what the verification API needs from an agent in cluster
// mode, besides Cluster. An agent whose Cluster does not implement it
// answers 501.
type Verifier interface {
	// VerifyVolume records a verification of volume name's replicas; the
	// agent that leads the volume carries it out.
	VerifyVolume(ctx context.Context, name string, req VerifyVolume) (Volume, error)
	// CancelVerify ends the volume's verification without a result (a
	// 409 when none runs).
	CancelVerify(ctx context.Context, name string) (Volume, error)
	// VerifyStep records how a verification ended (an agent's internal
	// request, on the control leader) and returns its catalog index.
	VerifyStep(ctx context.Context, step VerifyStep) (uint64, error)
}

// VerifyVolume is the body of POST /v1/volumes/{name}/verify.
type VerifyVolume struct {
	// MaxRate limits how fast each replica is read, in bytes per second:
	// a number or a size string such as "100M" (0 or absent: no limit).
	MaxRate Size `json:"max_rate,omitempty"`
}

// VolumeVerify is a verification of a volume's replicas under way, in a
// volume body.
type VolumeVerify struct {
	// ID is the catalog index of the command that asked for it.
	ID      uint64    `json:"id"`
	MaxRate int64     `json:"max_rate,omitempty"`
	Started time.Time `json:"started"`
}

// VerifyResult is how a volume's last verification ended.
type VerifyResult struct {
	ID uint64 `json:"id"`
	// Leader is the host whose replica the others were compared with.
	Leader string `json:"leader"`
	// Replicas holds the comparison of each other replica with the
	// leader's.
	Replicas []VerifiedReplica `json:"replicas"`
	// OK: every other replica was compared in full and none differs.
	OK bool `json:"ok"`
	// Cancelled: an operator cancelled it (OK is false).
	Cancelled bool      `json:"cancelled,omitempty"`
	Error     string    `json:"error,omitempty"`
	Started   time.Time `json:"started"`
	Finished  time.Time `json:"finished"`
}

// VerifiedReplica is the comparison of one replica with the leader's.
type VerifiedReplica struct {
	Host  string    `json:"host"`
	Check MoveCheck `json:"check"`
}

// VerifyStep is the body of POST /v1/internal/verify: the end of a
// verification, which the agent that ran it records in the catalog.
type VerifyStep struct {
	Volume string                `json:"volume"`
	Verify catalog.VerifyCommand `json:"verify"`
}

// VerifyOf converts the catalog's record of a verification under way.
func VerifyOf(v *catalog.Verify) *VolumeVerify {
	if v == nil {
		return nil
	}
	return &VolumeVerify{ID: v.ID, MaxRate: v.MaxRate, Started: v.Started}
}

// VerifyResultOf converts the catalog's record of a verification's end.
func VerifyResultOf(r *catalog.VerifyResult) *VerifyResult {
	if r == nil {
		return nil
	}
	out := &VerifyResult{ID: r.ID, Leader: r.Leader, OK: r.OK, Cancelled: r.Cancelled, Error: r.Error, Started: r.Started, Finished: r.Finished,
		Replicas: make([]VerifiedReplica, 0, len(r.Replicas))}
	for _, vr := range r.Replicas {
		out.Replicas = append(out.Replicas, VerifiedReplica{Host: vr.Host, Check: *MoveCheckOf(&vr.Check)})
	}
	return out
}

// routeVerify adds the verification API to mux.
func (s *server) routeVerify(mux *http.ServeMux) {
	vf, ok := s.cfg.Cluster.(Verifier)
	if !ok {
		return
	}
	mux.HandleFunc("POST /v1/volumes/{name}/verify", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		var req VerifyVolume
		if !decodeOptional(w, r, &req) {
			return
		}
		v, err := vf.VerifyVolume(r.Context(), r.PathValue("name"), req)
		if err == nil {
			v, err = s.addWriter(r.Context(), v)
		}
		s.reply(w, http.StatusAccepted, v, err)
	}))
	mux.HandleFunc("POST /v1/volumes/{name}/verify/cancel", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		v, err := vf.CancelVerify(r.Context(), r.PathValue("name"))
		if err == nil {
			v, err = s.addWriter(r.Context(), v)
		}
		s.reply(w, http.StatusOK, v, err)
	}))
	mux.HandleFunc("POST /v1/internal/verify", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		var req VerifyStep
		if !decode(w, r, &req) {
			return
		}
		idx, err := vf.VerifyStep(r.Context(), req)
		s.reply(w, http.StatusOK, Committed{Index: idx}, err)
	}))
}
