package control

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tandem-project/tandem/cluster/catalog"
)

// TestLostVoter deletes a follower voter's whole data directory while it
// is down (a replaced disk) and starts it again: it does not come back as
// the same voter with an empty log (which could elect a leader that lacks
// committed commands); the leader's configuration leaves it out or as a
// non-voter until it caught up, then it is a voter again with the whole
// catalog, and the group goes on without the old leader.
func TestLostVoter(t *testing.T) {
	g := newGroup(t, false)
	ctx := context.Background()
	for _, n := range []string{"a", "b", "c"} {
		g.onLeader("putting host "+n, func(l *member) error {
			return l.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdPutHost, Host: &catalog.Host{Name: n, RaftAddr: "x", Capacity: 1 << 40}})
		})
	}
	l := g.leader()
	var f string
	for _, n := range g.voters {
		if g.members[n] != l {
			f = n
		}
	}
	waitCatalog(t, g.members[f], "host c", func(s *catalog.State) bool { return s.Hosts["c"] != nil })
	g.stop(f)
	dir := g.members[f].dir
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	stop, left := make(chan struct{}), make(chan bool, 1)
	go func() {
		out := false
		for {
			select {
			case <-stop:
				left <- out
				return
			case <-time.After(2 * time.Millisecond):
			}
			cf := l.ctl.cur().raft.GetConfiguration()
			if cf.Error() == nil && !slices.ContainsFunc(cf.Configuration().Servers, func(s raft.Server) bool { return string(s.ID) == f && s.Suffrage == raft.Voter }) {
				out = true
			}
		}
	}()
	m := g.start(f)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if ok, _ := m.ctl.isVoter(); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s was not readmitted as a voter: %+v", f, l.ctl.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	if !<-left {
		t.Errorf("%s was a voter throughout: it came back as the same voter without its state", f)
	}
	waitCatalog(t, m, "the catalog of before", func(s *catalog.State) bool { return len(s.Hosts) == 3 })
	// The group goes on with the readmitted voter and without the leader.
	for n, mm := range g.members {
		if mm == l {
			g.stop(n)
		}
	}
	g.onLeader("putting host d", func(l *member) error {
		return l.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdPutHost, Host: &catalog.Host{Name: "d", RaftAddr: "x", Capacity: 1 << 40}})
	})
	waitCatalog(t, m, "host d", func(s *catalog.State) bool { return s.Hosts["d"] != nil })
}
