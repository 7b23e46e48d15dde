package agent

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/admin/client"
	"github.com/tandem-project/tandem/cluster/catalog"
)

// Verifying a volume's replicas (docs/mirror.md, "Verifying a volume's
// replicas"): the operator's request is recorded in the catalog; the
// agent that leads the volume compares every other replica with its own,
// range by range, as a move's integrity check does (checkReplica), and
// records the result. A leader that loses the volume's leadership before
// it is done records nothing: the next leader's agent runs it again.

// VerifyVolume implements admin.Verifier (on the control leader).
func (a *clusterAgent) VerifyVolume(ctx context.Context, name string, req admin.VerifyVolume) (admin.Volume, error) {
	if req.MaxRate < 0 {
		return admin.Volume{}, admin.Errorf(http.StatusBadRequest, "max_rate: negative")
	}
	cv, ok := a.ctl.State().Volumes[name]
	switch {
	case !ok:
		return admin.Volume{}, admin.Errorf(http.StatusNotFound, "no volume named %q", name)
	case cv.Verify != nil:
		return admin.Volume{}, admin.Errorf(http.StatusConflict, "volume %q is being verified already (since %s)", name, cv.Verify.Started.Format(time.RFC3339))
	case cv.Move != nil:
		return admin.Volume{}, admin.Errorf(http.StatusConflict, "volume %q is moving a replica from %s to %s; its own integrity check compares the new replica, verify once it is over", name, cv.Move.From, cv.Move.To)
	}
	err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdVerifyVolume, Name: name, At: time.Now().UTC(),
		Verify: &catalog.VerifyCommand{MaxRate: int64(req.MaxRate)}})
	if err != nil {
		return admin.Volume{}, moveError(err)
	}
	return a.Volume(ctx, name)
}

// CancelVerify implements admin.Verifier (on the control leader).
func (a *clusterAgent) CancelVerify(ctx context.Context, name string) (admin.Volume, error) {
	cv, ok := a.ctl.State().Volumes[name]
	switch {
	case !ok:
		return admin.Volume{}, admin.Errorf(http.StatusNotFound, "no volume named %q", name)
	case cv.Verify == nil:
		return admin.Volume{}, admin.Errorf(http.StatusConflict, "volume %q is not being verified", name)
	}
	err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdEndVerify, Name: name, At: time.Now().UTC(),
		Verify: &catalog.VerifyCommand{ID: cv.Verify.ID, Result: &catalog.VerifyResult{Cancelled: true, Error: "cancelled"}}})
	if err != nil {
		return admin.Volume{}, moveError(err)
	}
	return a.Volume(ctx, name)
}

// VerifyStep implements admin.Verifier (on the control leader).
func (a *clusterAgent) VerifyStep(ctx context.Context, s admin.VerifyStep) (uint64, error) {
	vc := s.Verify
	idx, err := a.ctl.Commit(ctx, catalog.Command{Kind: catalog.CmdEndVerify, Name: s.Volume, Verify: &vc, At: time.Now().UTC()})
	if err != nil {
		return 0, moveError(err)
	}
	return idx, nil
}

// driveVerify runs verification id of volume name's replicas while this
// host leads the volume, and records its result.
func (a *clusterAgent) driveVerify(name string, id uint64) {
	log := a.log.With("volume", name, "verification", id)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	current := func() bool {
		cur := a.ctl.State().Volumes[name]
		return cur != nil && cur.Verify != nil && cur.Verify.ID == id
	}
	st := a.ctl.State()
	cv := st.Volumes[name]
	a.mu.Lock()
	v := a.vols[name]
	a.mu.Unlock()
	leading := func() bool { return v != nil && v.Status().State == "Leader" }
	if cv == nil || cv.Verify == nil || cv.Verify.ID != id || !leading() {
		return
	}
	go func() { // stops the checks once the agent stops, it is cancelled, or another host leads
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-a.stop:
				cancel()
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if !current() || !leading() {
					cancel()
					return
				}
			}
		}
	}()
	log.Info("verifying the volume's replicas", "replicas", cv.Replicas, "max_rate", cv.Verify.MaxRate)
	res := catalog.VerifyResult{Leader: a.cfg.Name, OK: true}
	for _, h := range cv.Replicas {
		if h == a.cfg.Name {
			continue
		}
		var ck catalog.MoveCheck
		if host, ok := st.Hosts[h]; ok {
			ck = a.checkReplica(ctx, v, name, host, cv.Verify.MaxRate)
		} else {
			ck = catalog.MoveCheck{Error: "host not in the catalog"}
		}
		switch {
		case !current():
			log.Info("verification cancelled")
			return
		case !leading() || ctx.Err() != nil:
			log.Info("verification left to the volume's next leader", "reason", "no longer leading here")
			return
		}
		res.Replicas = append(res.Replicas, catalog.VerifiedReplica{Host: h, Check: ck})
		if !ck.OK {
			if res.OK {
				res.Error = ck.Error
				if !strings.Contains(ck.Error, h) {
					res.Error = fmt.Sprintf("%s: %s", h, ck.Error)
				}
			}
			res.OK = false
		}
	}
	cmd := catalog.Command{Kind: catalog.CmdEndVerify, Name: name, At: time.Now().UTC(),
		Verify: &catalog.VerifyCommand{ID: id, Result: &res}}
	step := admin.VerifyStep{Volume: name, Verify: *cmd.Verify}
	cctx, ccancel := context.WithTimeout(ctx, time.Minute)
	defer ccancel()
	if _, err := a.commitOnLeader(cctx, cmd, func(ctx context.Context, c *client.Client) (uint64, error) { return c.VerifyStep(ctx, step) }); err != nil {
		log.Warn("recording the verification's result", "err", err)
		return
	}
	if res.OK {
		log.Info("volume verified: every replica matches the leader's", "replicas", len(res.Replicas)+1)
	} else {
		log.Error("volume verification found replicas that differ from the leader's, or could not compare them", "err", res.Error)
	}
}

// scheduleVerify is the control leader's part of scheduled verification
// (ClusterConfig.VerifyEvery): while no volume is being verified, it asks
// for a verification of the volume due longest, if any is due at now.
// One volume of the cluster at a time bounds the reads it adds.
func (a *clusterAgent) scheduleVerify(ctx context.Context, st *catalog.State, now time.Time) {
	name := dueForVerify(st, a.cc.VerifyEvery, now)
	if name == "" {
		return
	}
	err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdVerifyVolume, Name: name, At: now.UTC(),
		Verify: &catalog.VerifyCommand{MaxRate: a.cc.VerifyRate}})
	if err != nil {
		a.log.Warn("asking for a scheduled verification", "volume", name, "err", err)
		return
	}
	a.log.Info("scheduled verification of a volume's replicas", "volume", name, "every", a.cc.VerifyEvery)
}

// dueForVerify returns the volume of st to verify next at now, when
// volumes are to be verified every period: none while one is being
// verified; else, among those with several replicas and no move, the one
// whose last verification (or, never verified, creation) is oldest, if
// that is at least period ago. "" for none.
func dueForVerify(st *catalog.State, every time.Duration, now time.Time) string {
	if every <= 0 {
		return ""
	}
	best, bestAt := "", time.Time{}
	for _, name := range st.VolumeNames() {
		cv := st.Volumes[name]
		if cv.Verify != nil {
			return ""
		}
		if cv.Move != nil || len(cv.Replicas) < 2 {
			continue
		}
		at := cv.Created
		if r := cv.LastVerify; r != nil {
			at = r.Finished
		}
		if now.Sub(at) >= every && (best == "" || at.Before(bestAt)) {
			best, bestAt = name, at
		}
	}
	return best
}
