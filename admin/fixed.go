package admin

import (
	"net/http"
	"slices"
	"strconv"

	"github.com/tandem-project/tandem/raftlog"
)

// The read-only API of an agent in fixed mode (no control plane): the
// same bodies as in cluster mode, so that the CLI reads both, filled with
// what this host knows. Other hosts' replicas are not asked: a volume
// lists this host's replica only; GET /v1/local/volumes gives its full
// status.

// allVolumes returns the status of every volume this host serves in fixed
// mode: its replicas, then its local volumes.
func (s *server) allVolumes() []raftlog.VolumeStatus {
	out := append([]raftlog.VolumeStatus{}, s.cfg.Host.Statuses()...)
	if s.cfg.Local != nil {
		out = append(out, s.cfg.Local()...)
	}
	return out
}

// cluster answers GET /v1/cluster: this host, the fixed peer list and the
// volumes; no control plane.
func (s *server) cluster(w http.ResponseWriter, _ *http.Request) {
	n := max(len(s.cfg.Host.Peers()), 1)
	writeJSON(w, http.StatusOK, ClusterStatus{Host: s.cfg.Host.ID(), Version: s.cfg.Version, Hosts: n, HostsAlive: 1,
		Volumes: len(s.allVolumes()), ControlVoters: []string{}})
}

// hosts answers GET /v1/hosts: the fixed peer list (this host alone
// without one); only this host is known to be alive.
func (s *server) hosts(w http.ResponseWriter, _ *http.Request) {
	h := s.cfg.Host
	vols := s.allVolumes()
	out := []Host{}
	add := func(name, raftAddr, nbdAddr string) {
		x := Host{Name: name, RaftAddr: raftAddr, NBDAddr: nbdAddr}
		if name == h.ID() {
			x.State = HostAlive
		}
		for _, v := range vols {
			if slices.Contains(v.Replicas, name) || (len(v.Replicas) == 0 && name == h.ID()) {
				x.Replicas++
			}
		}
		out = append(out, x)
	}
	for _, p := range h.Peers() {
		add(p.ID, p.Raft, p.NBD)
	}
	if len(out) == 0 {
		add(h.ID(), "", "")
	}
	writeJSON(w, http.StatusOK, out)
}

// fixedVolume describes a volume from this host's replica.
func (s *server) fixedVolume(st raftlog.VolumeStatus) Volume {
	self := s.cfg.Host.ID()
	v := Volume{Name: st.Name, Size: st.Size, Hosts: st.Replicas, Leader: st.Leader, State: VolumeReady,
		WriterEpoch: st.WriterEpoch, WriterGen: st.WriterGen,
		Replicas: []Replica{{Host: self, State: st.State, Term: st.Term, LastIndex: st.LastIndex, CommitIndex: st.CommitIndex,
			AppliedIndex: st.AppliedIndex, LastContact: st.LastContact, Error: st.Error}}}
	if v.Hosts == nil {
		v.Hosts = []string{self}
	}
	if st.CommitIndex > st.AppliedIndex {
		v.Replicas[0].Lag = st.CommitIndex - st.AppliedIndex
	}
	if st.Leader == "" && st.State != "Local" {
		v.State = VolumeUnavailable
	}
	for _, p := range s.cfg.Host.Peers() {
		if p.ID == st.Leader && p.NBD != "" {
			v.URI = "nbd://" + p.NBD + "/" + st.Name
		}
	}
	return v
}

// localVolumes answers GET /v1/local/volumes: this host's replicas (and
// local volumes) in full, as in cluster mode (whether it serves reads, its
// log's indexes).
func (s *server) localVolumes(w http.ResponseWriter, _ *http.Request) {
	out := []LocalVolume{}
	for _, st := range s.allVolumes() {
		out = append(out, LocalVolume{VolumeStatus: st})
	}
	writeJSON(w, http.StatusOK, out)
}

// volumes answers GET /v1/volumes.
func (s *server) volumes(w http.ResponseWriter, _ *http.Request) {
	out := []Volume{}
	for _, st := range s.allVolumes() {
		out = append(out, s.fixedVolume(st))
	}
	writeJSON(w, http.StatusOK, out)
}

// volume answers GET /v1/volumes/{name}.
func (s *server) volume(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	for _, st := range s.allVolumes() {
		if st.Name == name {
			writeJSON(w, http.StatusOK, s.fixedVolume(st))
			return
		}
	}
	writeError(w, http.StatusNotFound, "no volume named "+strconv.Quote(name))
}
