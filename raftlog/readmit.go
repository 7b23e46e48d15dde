package raftlog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tandem-project/tandem/raftlog/mux"
	"github.com/tandem-project/tandem/volume"
)

// Readmission of a replica that has no state, in a configuration without
// a catalog (VolumeSpec.AskPeers: the fixed configuration), and of a
// control-plane voter (ServeReadmit, GroupHasHistory, Evict, Readmit: the
// same questions, asked by cluster/control). A raft server
// must not come back as the same voter without the state it had: it may
// have acknowledged entries that now exist on one other replica only, and
// with an empty log it would vote for a candidate that lacks them. So a
// replica that opens without any log entry or checkpoint first asks the
// other replicas' hosts whether the group has a history (a log beyond the
// bootstrap configuration). If none has, and enough answered that no
// majority can have made one without this host, it bootstraps the group
// as before (a new volume). If one has, this replica was lost (its disk
// replaced, its files deleted), or never took part: before it starts raft
// at all, it has the leader remove it from the group, then joins as a
// non-voter (VolumeSpec.Join), pulls the volume and the log like a moved
// replica, and has the leader promote it once it caught up
// (docs/replication.md, "A replica that lost its state").

const (
	// readmitTimeout bounds one question to one host.
	readmitTimeout = 15 * time.Second
	// readmitRetry is the pause between two rounds of questions.
	readmitRetry = 500 * time.Millisecond
	// readmitLag is how far (in entries) a non-voter may be behind the
	// leader's commit index when it is promoted.
	readmitLag = 64
)

// Readmission steps.
const (
	stepHistory = "history" // any host: the last index of its replica
	stepEvict   = "evict"   // the leader: remove the asking server
	stepAdd     = "add"     // the leader: add it as a non-voter
	stepPromote = "promote" // the leader: make it a voter once caught up
)

// readmitRequest is a question of a replica without state.
type readmitRequest struct {
	Group string `json:"group"`
	ID    string `json:"id"`
	Step  string `json:"step"`
	// Applied and Copying describe the asking replica (promote).
	Applied uint64 `json:"applied,omitempty"`
	Copying bool   `json:"copying,omitempty"`
}

// readmitAnswer is a host's answer.
type readmitAnswer struct {
	// Known: the host can tell what it holds of the group (history): its
	// member is open, or opening without state. A host whose member is not
	// open yet may hold a history it cannot report: it does not count.
	Known bool `json:"known,omitempty"`
	// Index is the last index of the host's replica (history; 0: none).
	Index uint64 `json:"index"`
	// Leader: the host leads the group (the steps other than history are
	// answered by the leader only); Done: the step is complete.
	Leader bool   `json:"leader"`
	Done   bool   `json:"done"`
	Error  string `json:"error,omitempty"`
}

// serveReadmit answers one readmission question.
func (h *Host) serveReadmit(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(readmitTimeout))
	var req readmitRequest
	if err := json.NewDecoder(c).Decode(&req); err != nil {
		h.log.Debug("reading a readmission question", "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	ans := h.answerReadmit(req)
	if err := json.NewEncoder(c).Encode(ans); err != nil {
		h.log.Debug("answering a readmission question", "remote", c.RemoteAddr().String(), "err", err)
	}
}

// readmitGroup is a raft group whose hosts answer readmission questions:
// a volume's (Group) or another group on the same port (ServeReadmit).
type readmitGroup interface {
	raft() *raft.Raft
	local() string
	// transport is the member's raft transport (answeredBy).
	transport() raft.Transport
	// remove, add and promote change the configuration (leader only).
	remove(ctx context.Context, id string) error
	add(ctx context.Context, id string) error
	promote(ctx context.Context, id string) error
}

// volumeReadmit is a volume's group, for readmission: its membership
// changes are the moves' (a checkpoint before an addition, so that the
// newcomer pulls the volume).
type volumeReadmit struct{ g *Group }

func (v volumeReadmit) raft() *raft.Raft          { return v.g.raft }
func (v volumeReadmit) local() string             { return v.g.cfg.Local }
func (v volumeReadmit) transport() raft.Transport { return v.g.trans }
func (v volumeReadmit) remove(ctx context.Context, id string) error {
	return (&Volume{g: v.g}).Remove(ctx, id)
}
func (v volumeReadmit) promote(ctx context.Context, id string) error {
	return (&Volume{g: v.g}).Promote(ctx, id)
}
func (v volumeReadmit) add(ctx context.Context, id string) error {
	ps := v.g.peers()
	i := slices.IndexFunc(ps, func(p Peer) bool { return p.ID == id })
	if i < 0 {
		return fmt.Errorf("server %q is not one of the volume's hosts", id)
	}
	return (&Volume{g: v.g}).AddNonvoter(ctx, ps[i])
}

// bareReadmit is another raft group on the host's port (ServeReadmit).
type bareReadmit struct {
	r     func() *raft.Raft
	trans func() raft.Transport
	addr  func(id string) (string, bool)
	id    string
}

func (b bareReadmit) raft() *raft.Raft          { return b.r() }
func (b bareReadmit) local() string             { return b.id }
func (b bareReadmit) transport() raft.Transport { return b.trans() }
func (b bareReadmit) remove(_ context.Context, id string) error {
	return b.r().RemoveServer(raft.ServerID(id), 0, membershipTimeout).Error()
}
func (b bareReadmit) add(_ context.Context, id string) error {
	addr, ok := b.addr(id)
	if !ok {
		return fmt.Errorf("server %q: address unknown", id)
	}
	return b.r().AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, membershipTimeout).Error()
}
func (b bareReadmit) promote(_ context.Context, id string) error {
	r := b.r()
	for _, s := range r.GetConfiguration().Configuration().Servers {
		if string(s.ID) == id {
			return r.AddVoter(s.ID, s.Address, 0, membershipTimeout).Error()
		}
	}
	return fmt.Errorf("server %q: %w", id, ErrNotMember)
}

// ServeReadmit makes this host answer the readmission questions (see
// Readmit) about group name, a raft group on its port other than a
// volume's: r returns the group's current raft instance on this host (nil
// before it started: no answer then) and trans its transport, addr a
// server's replication address. Call it before the group's member starts.
func (h *Host) ServeReadmit(name string, r func() *raft.Raft, trans func() raft.Transport, addr func(id string) (string, bool)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.readmit == nil {
		h.readmit = map[string]readmitGroup{}
	}
	h.readmit[name] = bareReadmit{r: r, trans: trans, addr: addr, id: h.cfg.ID}
}

// setOpening records that this host opens its replica of volume name,
// which holds entries or not (answerReadmit).
func (h *Host) setOpening(name string, holds bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.opening == nil {
		h.opening = map[string]bool{}
	}
	h.opening[name] = holds
}

// doneOpening records that this host no longer opens its replica of
// volume name (it is open, or the opening failed).
func (h *Host) doneOpening(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.opening, name)
}

// answerReadmit carries out one readmission step on this host's member of
// the group.
func (h *Host) answerReadmit(req readmitRequest) readmitAnswer {
	h.mu.Lock()
	var rg readmitGroup
	if g := h.groups[req.Group]; g != nil {
		rg = volumeReadmit{g}
	} else if b, ok := h.readmit[req.Group]; ok {
		rg = b
	}
	holds, opening := h.opening[req.Group]
	h.mu.Unlock()
	if rg == nil {
		if req.Step != stepHistory {
			return readmitAnswer{}
		}
		// A volume's replica opening without state (asking the same
		// question), or of which this host has no directory at all, holds
		// no history here. One with a directory, opening or not open yet,
		// may: this host cannot tell until it is open.
		if opening {
			return readmitAnswer{Known: !holds}
		}
		_, err := os.Stat(filepath.Join(h.cfg.DataDir, "groups", req.Group))
		return readmitAnswer{Known: volume.ValidateName(req.Group) == nil && errors.Is(err, os.ErrNotExist)}
	}
	r := rg.raft()
	if r == nil {
		return readmitAnswer{} // not started yet
	}
	if req.Step == stepHistory {
		return readmitAnswer{Known: true, Index: r.LastIndex()}
	}
	if r.State() != raft.Leader {
		return readmitAnswer{}
	}
	ans := readmitAnswer{Leader: true}
	if req.ID == "" || req.ID == rg.local() {
		ans.Error = fmt.Sprintf("server %q cannot be readmitted by this leader", req.ID)
		return ans
	}
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		ans.Error = err.Error()
		return ans
	}
	servers := f.Configuration().Servers
	i := slices.IndexFunc(servers, func(s raft.Server) bool { return string(s.ID) == req.ID })
	ctx, cancel := context.WithTimeout(context.Background(), readmitTimeout)
	defer cancel()
	var err error
	switch req.Step {
	case stepEvict:
		if i < 0 {
			break
		}
		// A server that answers this leader runs with its state: a stray
		// or forged request does not take it out of the group.
		if at, _ := answeredBy(rg.transport(), servers[i].Address); time.Since(at) < 2*h.cfg.HeartbeatTimeout {
			ans.Error = fmt.Sprintf("server %q answers the leader: it is not without state", req.ID)
			return ans
		}
		err = rg.remove(ctx, req.ID)
	case stepAdd:
		if i < 0 {
			err = rg.add(ctx, req.ID)
		}
	case stepPromote:
		switch {
		case i < 0:
			err = fmt.Errorf("server %q: %w", req.ID, ErrNotMember)
		case servers[i].Suffrage == raft.Voter:
		case req.Applied == 0 || req.Copying || req.Applied+readmitLag < r.CommitIndex():
			return ans // not caught up yet
		default:
			err = rg.promote(ctx, req.ID)
		}
	default:
		ans.Error = fmt.Sprintf("unknown readmission step %q", req.Step)
		return ans
	}
	if err != nil {
		ans.Error = err.Error()
		return ans
	}
	ans.Done = true
	return ans
}

// askReadmit asks the host at addr one readmission question.
func askReadmit(ctx context.Context, d mux.Dialer, addr string, req readmitRequest) (readmitAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, readmitTimeout)
	defer cancel()
	c, err := d.Dial(ctx, addr, mux.KindReadmit, req.Group)
	if err != nil {
		return readmitAnswer{}, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return readmitAnswer{}, err
	}
	var ans readmitAnswer
	if err := json.NewDecoder(c).Decode(&ans); err != nil {
		return readmitAnswer{}, err
	}
	return ans, nil
}

// Evict has the leader of group name (on one of peers' hosts) remove this
// host's server, which lost its state, from the group. Start the new
// member only after it returned, without bootstrapping, then call Readmit.
func (h *Host) Evict(ctx context.Context, name string, peers []Peer) error {
	return h.readmitStep(ctx, name, peers, stepEvict, nil)
}

// Readmit has the leader of group name add this host's new member back as
// a non-voter, then promote it once state reports its applied index within
// readmitLag entries of the leader's commit index and no copy under way.
// It returns once this host is a voter again, or ctx ends.
func (h *Host) Readmit(ctx context.Context, name string, peers []Peer, state func() (applied uint64, copying bool)) error {
	if err := h.readmitStep(ctx, name, peers, stepAdd, nil); err != nil {
		return err
	}
	return h.readmitStep(ctx, name, peers, stepPromote, state)
}

// GroupHasHistory asks the other hosts of a group, which this host holds
// no state of, whether the group has a history: true once one answers a
// log beyond the bootstrap configuration, false once enough answered
// none that, with this host, they are a majority (no history can have
// been made without one of them). It asks again until it can tell, or
// ctx ends.
func (h *Host) GroupHasHistory(ctx context.Context, name string, peers []Peer) (bool, error) {
	others := slices.DeleteFunc(slices.Clone(peers), func(p Peer) bool { return p.ID == h.cfg.ID })
	quorum := len(peers)/2 + 1
	for round := 0; ; round++ {
		var (
			mu       sync.Mutex
			wg       sync.WaitGroup
			answered int
			history  bool
		)
		for _, p := range others {
			wg.Add(1)
			go func() {
				defer wg.Done()
				qctx, cancel := context.WithTimeout(ctx, time.Second)
				defer cancel()
				ans, err := askReadmit(qctx, h.dialer(), p.Raft, readmitRequest{Group: name, ID: h.cfg.ID, Step: stepHistory})
				mu.Lock()
				defer mu.Unlock()
				if err != nil || !ans.Known {
					return
				}
				answered++
				// Index 1 is the bootstrap configuration every replica of a
				// new group writes; an elected leader writes more.
				history = history || ans.Index > 1
			}()
		}
		wg.Wait()
		switch {
		case history:
			return true, nil
		case answered+1 >= quorum:
			return false, nil
		case round == 0:
			h.log.Info("replica without state: waiting for its group's other hosts to tell whether the volume exists", "volume", name, "answered", answered, "needed", quorum-1)
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("raftlog: volume %s: asking the other hosts whether the volume exists: %w", name, ctx.Err())
		case <-time.After(readmitRetry):
		}
	}
}

// readmitStep asks the group's hosts, in turn, until its leader has done
// step for this host, or ctx ends.
func (h *Host) readmitStep(ctx context.Context, name string, peers []Peer, step string, state func() (uint64, bool)) error {
	var last string
	for {
		for _, p := range peers {
			if p.ID == h.cfg.ID {
				continue
			}
			req := readmitRequest{Group: name, ID: h.cfg.ID, Step: step}
			if state != nil {
				req.Applied, req.Copying = state()
			}
			ans, err := askReadmit(ctx, h.dialer(), p.Raft, req)
			switch {
			case err != nil:
				last = err.Error()
			case ans.Error != "":
				last = ans.Error
			case ans.Done:
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if last == "" {
				last = "no leader answered"
			}
			return fmt.Errorf("raftlog: volume %s: readmission step %s: %w (last: %s)", name, step, ctx.Err(), last)
		case <-time.After(readmitRetry):
		}
	}
}

// readmitting reports whether this replica, which has state, is not a
// voter in the latest configuration it knows: a readmission stopped
// before its promotion (a checkpoint it pulled may even predate its
// addition as a non-voter).
func (g *Group) readmitting() bool {
	f := g.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	return !slices.ContainsFunc(f.Configuration().Servers, func(s raft.Server) bool {
		return string(s.ID) == g.cfg.Local && s.Suffrage == raft.Voter
	})
}

// rejoin, run by a replica opened without state after its leader removed
// it from the group, has the leader add it back as a non-voter, and
// promote it once it pulled the volume and caught up with the log.
func (g *Group) rejoin() {
	defer g.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-g.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	state := func() (uint64, bool) { return g.raft.AppliedIndex(), (&Volume{g: g}).Copy().Active }
	if err := g.h.Readmit(ctx, g.spec.Name, g.cfg.Peers, state); err != nil {
		g.log.Warn("replica without state: not readmitted", "err", err)
		return
	}
	g.log.Info("replica without state readmitted: a voter again", "applied", g.raft.AppliedIndex())
}
