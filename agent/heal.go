package agent

import (
	"context"
	"net/http"
	"slices"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/cluster/membership"
)

// maxEvacuations bounds the replica moves the control leader starts for
// draining at once (each copies a whole volume).
const maxEvacuations = 2

// evacuate, on the control leader, moves the replicas of drained hosts to
// other hosts: each by an ordinary replica move (docs/mirror.md) to the
// alive, undrained host with the most room, a few volumes at a time.
func (a *clusterAgent) evacuate(ctx context.Context) {
	st := a.ctl.State()
	alive := map[string]bool{}
	for _, m := range a.members.Members() {
		alive[m.Name] = m.State == membership.Alive
	}
	moving := 0
	for _, v := range st.Volumes {
		if v.Move != nil {
			moving++
		}
	}
	for _, name := range st.VolumeNames() {
		if moving >= maxEvacuations {
			return
		}
		v := st.Volumes[name]
		if v.Move != nil {
			continue
		}
		for _, from := range v.Replicas {
			if h, ok := st.Hosts[from]; !ok || !h.Drained {
				continue
			}
			to, err := a.evacuationTarget(st, v, alive)
			if err != nil {
				a.log.Warn("a replica of a drained host has nowhere to go", "volume", name, "from", from, "err", err)
				break
			}
			err = a.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdMoveReplica, Name: name, Move: &catalog.MoveCommand{From: from, To: to}})
			if err != nil {
				a.log.Warn("starting a replica move", "volume", name, "from", from, "to", to, "err", err)
				return
			}
			a.log.Info("moving a replica off a drained host", "volume", name, "from", from, "to", to)
			moving++
			break
		}
	}
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
