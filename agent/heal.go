package agent

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/cluster/membership"
)

// maxEvacuations bounds the replica moves the control leader starts for
// draining or healing at once (each copies a whole volume).
const maxEvacuations = 2

// unseenGrace is how long after its start an agent's gossip is trusted
// to know every live host: a host of the catalog it has not seen by then
// is recorded as failed.
const unseenGrace = 30 * time.Second

// unseenHosts returns, as failed members, the catalog's hosts that gossip
// does not know at all (failed before this agent started), once gossip has
// had unseenGrace to find them.
func (a *clusterAgent) unseenHosts(st *catalog.State, members []membership.Member) []membership.Member {
	if time.Since(a.started) < unseenGrace {
		return nil
	}
	var out []membership.Member
	for _, name := range st.HostNames() {
		if !slices.ContainsFunc(members, func(m membership.Member) bool { return m.Name == name }) {
			out = append(out, membership.Member{Name: name, State: membership.Failed})
		}
	}
	return out
}

// leaving returns why the replicas of host h must leave it: MoveToDrain,
// MoveToHeal (failed or left longer than the self-healing delay), or "".
func (a *clusterAgent) leaving(h *catalog.Host, now time.Time) string {
	switch {
	case h.Drained:
		return catalog.MoveToDrain
	case a.healing(h, now):
		return catalog.MoveToHeal
	}
	return ""
}

// healing reports whether host h has been down (failed, left, or shut
// out for a revoked certificate) longer than the self-healing delay.
func (a *clusterAgent) healing(h *catalog.Host, now time.Time) bool {
	down := h.State == string(membership.Failed) || h.State == string(membership.Left) || h.State == catalog.HostRevoked
	return down && a.cc.HealAfter > 0 && !h.Since.IsZero() && now.Sub(h.Since) >= a.cc.HealAfter
}

// leave is a replica that must leave its host, and why (a catalog move
// reason).
type leave struct {
	volume, from, reason string
	// failedSince is set for a replica out of service on an alive host.
	failedSince time.Time
}

// evacuate, on the control leader, moves to other hosts the replicas of
// drained hosts, of hosts down longer than the self-healing delay, and
// those out of service after a failure of their disk for that long (on an
// alive host): each by an ordinary replica move (docs/mirror.md) to the
// alive, undrained host with the most room, a few volumes at a time, the
// volumes that lost a replica first. It also ends the moves that cannot
// finish or are no longer needed: a move to a host down longer than the
// self-healing delay, and a move healing a failed host still copying
// whose source came back.
func (a *clusterAgent) evacuate(ctx context.Context) {
	st := a.ctl.State()
	now := time.Now()
	alive := map[string]bool{}
	members := a.members.Members()
	for _, m := range members {
		alive[m.Name] = m.State == membership.Alive
	}
	moving := 0
	for _, name := range st.VolumeNames() {
		v := st.Volumes[name]
		m := v.Move
		if m == nil {
			continue
		}
		why := ""
		if to, ok := st.Hosts[m.To]; ok && a.healing(to, now) && m.Phase != catalog.MoveRemoving {
			why = fmt.Sprintf("its destination %s is down since %s", m.To, to.Since.Format(time.RFC3339))
		}
		// A host alive since before the move began did not come back: the
		// move heals a replica that failed on it.
		if from, ok := st.Hosts[m.From]; ok && m.Reason == catalog.MoveToHeal && m.Phase == catalog.MoveCopying && from.State == string(membership.Alive) && alive[m.From] && from.Since.After(m.Started) {
			why = fmt.Sprintf("its source %s is back", m.From)
		}
		if why == "" {
			moving++
			continue
		}
		err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdEndMove, Name: name, At: now.UTC(),
			Move: &catalog.MoveCommand{ID: m.ID, Result: &catalog.MoveResult{Result: catalog.MoveCancelled, Error: why}}})
		if err != nil {
			a.log.Warn("cancelling a replica move", "volume", name, "why", why, "err", err)
			moving++
			continue
		}
		a.log.Info("replica move cancelled", "volume", name, "from", m.From, "to", m.To, "why", why)
	}
	// Volumes that lost a replica to a failed host or disk first, then
	// drains.
	var todo []leave
	for _, name := range st.VolumeNames() {
		v := st.Volumes[name]
		if v.Move != nil {
			continue
		}
		for _, from := range v.Replicas {
			if h, ok := st.Hosts[from]; ok {
				if r := a.leaving(h, now); r != "" {
					todo = append(todo, leave{volume: name, from: from, reason: r})
					break
				}
			}
		}
	}
	for _, l := range a.failedReplicas(ctx, st, members, now) {
		if !slices.ContainsFunc(todo, func(t leave) bool { return t.volume == l.volume }) {
			todo = append(todo, l)
		}
	}
	rank := func(l leave) int {
		if l.reason == catalog.MoveToHeal {
			return 0
		}
		return 1
	}
	slices.SortStableFunc(todo, func(x, y leave) int { return cmp.Compare(rank(x), rank(y)) })
	for _, l := range todo {
		if moving >= maxEvacuations {
			return
		}
		v := st.Volumes[l.volume]
		to, err := a.evacuationTarget(st, v, alive)
		if err != nil {
			a.log.Warn("a replica that must leave its host has nowhere to go", "volume", l.volume, "from", l.from, "reason", l.reason, "err", err)
			continue
		}
		err = a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdMoveReplica, Name: l.volume, At: now.UTC(),
			Move: &catalog.MoveCommand{From: l.from, To: to, Reason: l.reason}})
		if err != nil {
			a.log.Warn("starting a replica move", "volume", l.volume, "from", l.from, "to", to, "reason", l.reason, "err", err)
			return
		}
		switch {
		case !l.failedSince.IsZero():
			a.log.Info("healing: moving a failed replica off its host", "volume", l.volume, "from", l.from, "to", to, "failed_since", l.failedSince)
		case l.reason == catalog.MoveToHeal:
			a.log.Info("healing: moving a replica off a failed host", "volume", l.volume, "from", l.from, "to", to, "down_since", st.Hosts[l.from].Since)
		default:
			a.log.Info("moving a replica off a drained host", "volume", l.volume, "from", l.from, "to", to)
		}
		moving++
	}
}

// failedReplicas returns the replicas out of service after a failure of
// their disk, on alive hosts, for longer than the self-healing delay
// (attempts at opening them again do not count as service), of volumes not
// moving. Only hosts that gossip a failed replica are asked which.
func (a *clusterAgent) failedReplicas(ctx context.Context, st *catalog.State, members []membership.Member, now time.Time) []leave {
	if a.cc.HealAfter <= 0 {
		return nil
	}
	var out []leave
	for _, m := range members {
		h, ok := st.Hosts[m.Name]
		if m.State != membership.Alive || m.Meta.Failed == 0 || !ok {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		lvs, err := a.localVolumes(lctx, h)
		cancel()
		if err != nil {
			a.log.Warn("asking a host which of its replicas failed", "host", m.Name, "err", err)
			continue
		}
		for _, lv := range lvs {
			v := st.Volumes[lv.Name]
			if lv.Error == "" || lv.FailedSince.IsZero() || now.Sub(lv.FailedSince) < a.cc.HealAfter ||
				v == nil || v.Move != nil || !slices.Contains(v.Replicas, m.Name) {
				continue
			}
			out = append(out, leave{volume: lv.Name, from: m.Name, reason: catalog.MoveToHeal, failedSince: lv.FailedSince})
		}
	}
	return out
}

// evacuationTarget chooses the host a replica of v moves to: alive,
// undrained, holding no replica of v, with room for it, the most free.
func (a *clusterAgent) evacuationTarget(st *catalog.State, v *catalog.Volume, alive map[string]bool) (string, error) {
	var cands []catalog.Candidate
	for _, h := range st.Hosts {
		if slices.Contains(v.Replicas, h.Name) {
			continue
		}
		cands = append(cands, catalog.Candidate{Name: h.Name, Free: h.Capacity - st.Allocated(h.Name), Alive: alive[h.Name] && !h.Drained && h.State == string(membership.Alive)})
	}
	hosts, _, err := st.Place(v.Size, 1, cands)
	if err != nil {
		return "", err
	}
	return hosts[0], nil
}

// DrainHost implements admin.Cluster (on the control leader).
func (a *clusterAgent) DrainHost(ctx context.Context, name string, drained bool) (admin.Host, error) {
	if _, ok := a.ctl.State().Hosts[name]; !ok {
		return admin.Host{}, admin.Errorf(http.StatusNotFound, "no host named %q", name)
	}
	if err := a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdDrainHost, Name: name, Drained: drained}); err != nil {
		return admin.Host{}, vmError(err, http.StatusNotFound)
	}
	hs, err := a.Hosts(ctx)
	if err != nil {
		return admin.Host{}, err
	}
	for _, h := range hs {
		if h.Name == name {
			return h, nil
		}
	}
	return admin.Host{}, admin.Errorf(http.StatusNotFound, "no host named %q", name)
}
