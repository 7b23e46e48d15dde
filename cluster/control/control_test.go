package control

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/internal/testnet"
	"github.com/tandem-project/tandem/raftlog"
	"github.com/tandem-project/tandem/raftlog/wal"
	"github.com/tandem-project/tandem/volume"
)

type member struct {
	name string
	dir  string
	addr string
	host *raftlog.Host
	ctl  *Control
	// full makes the member's write log fail when it needs a new segment
	// (with testGroup.smallLogs).
	full atomic.Bool
}

type testGroup struct {
	t       *testing.T
	voters  []string
	mu      sync.Mutex
	addrs   map[string]string
	members map[string]*member
	// smallLogs gives the members' write logs 64 KiB segments and a room
	// check that fails while member.full is set.
	smallLogs bool
	// configure adjusts each member's configuration.
	configure []func(*member, *Config)
}

func (g *testGroup) resolve(name string) (string, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	a, ok := g.addrs[name]
	return a, ok
}

func (g *testGroup) start(name string) *member {
	t := g.t
	m := g.members[name]
	if m == nil {
		m = &member{name: name, dir: t.TempDir(), addr: testnet.FreeAddr(t)}
		g.members[name] = m
	}
	cfg := raftlog.DefaultConfig()
	cfg.ID, cfg.DataDir, cfg.RaftAddr = name, m.dir, m.addr
	h, err := raftlog.OpenHost(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ccfg := Config{Name: name, Dir: filepath.Join(m.dir, "control"), Host: h, Voters: g.voters, Resolve: g.resolve, HeartbeatTimeout: 300 * time.Millisecond}
	if g.smallLogs {
		ccfg.logConfig = func(c *wal.Config) {
			c.SegmentSize, c.PreZeroRate, c.MaxRecycled = 64<<10, 0, 0
			c.Room = func(int64) error {
				if m.full.Load() {
					return errNoRoom
				}
				return nil
			}
		}
	}
	for _, f := range g.configure {
		f(m, &ccfg)
	}
	c, err := Open(ccfg)
	if err != nil {
		h.Close()
		t.Fatal(err)
	}
	m.host, m.ctl = h, c
	g.mu.Lock()
	g.addrs[name] = m.addr
	g.mu.Unlock()
	return m
}

func (g *testGroup) stop(name string) {
	m := g.members[name]
	if m.ctl != nil {
		m.ctl.Close()
		m.host.Close()
		m.ctl, m.host = nil, nil
	}
}

func (g *testGroup) leader() *member {
	g.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range g.members {
			if m.ctl != nil && m.ctl.IsLeader() {
				return m
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	g.t.Fatal("no control leader")
	return nil
}

// onLeader runs f on the leader until it succeeds, again on whoever then
// leads while f fails for a change of leader (the group's 300 ms
// heartbeat loses leadership on a starved machine), and returns the
// member it succeeded on. f must be safe to repeat: a command whose
// leader was lost may still have been committed.
func (g *testGroup) onLeader(what string, f func(l *member) error) *member {
	g.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		l := g.leader()
		err := f(l)
		if err == nil {
			return l
		}
		lost := errors.Is(err, ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrNotLeader)
		if !lost || time.Now().After(deadline) {
			g.t.Fatalf("%s on %s: %v", what, l.name, err)
		}
		g.t.Logf("%s on %s: %v; again on the leader", what, l.name, err)
	}
}

// newGroup starts the voters a, b and c of a group stopped at cleanup.
func newGroup(t *testing.T, smallLogs bool, configure ...func(*member, *Config)) *testGroup {
	g := &testGroup{t: t, voters: []string{"a", "b", "c"}, addrs: map[string]string{}, members: map[string]*member{}, smallLogs: smallLogs, configure: configure}
	t.Cleanup(func() {
		for n := range g.members {
			g.stop(n)
		}
	})
	for _, n := range g.voters {
		g.start(n)
	}
	return g
}

func waitCatalog(t *testing.T, m *member, what string, ok func(*catalog.State) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok(m.ctl.State()) {
		if time.Now().After(deadline) {
			t.Fatalf("%s never saw %s: %+v", m.name, what, m.ctl.State())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestControlGroup bootstraps three voters once they can all be resolved,
// commits catalog commands on the leader, adds a non-voter that then holds
// the catalog, refuses proposals on followers, and restarts a voter that
// comes back with the catalog.
func TestControlGroup(t *testing.T) {
	g := newGroup(t, false)
	ctx := context.Background()
	for _, n := range []string{"a", "b", "c", "d"} {
		g.onLeader("putting host "+n, func(l *member) error {
			return l.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdPutHost, Host: &catalog.Host{Name: n, RaftAddr: "x", Capacity: 1 << 40}})
		})
	}
	g.onLeader("a refused command", func(l *member) error {
		err := l.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdCreateVolume, Volume: &catalog.Volume{Name: "v", Size: 1 << 20, Replicas: []string{"a", "b", "zz"}}})
		switch {
		case errors.Is(err, catalog.ErrNotFound):
			return nil
		case err == nil:
			return errors.New("accepted, want ErrNotFound")
		}
		return fmt.Errorf("%w, want ErrNotFound", err)
	})
	tries := 0
	g.onLeader("creating volume v", func(l *member) error {
		tries++
		err := l.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdCreateVolume, Volume: &catalog.Volume{Name: "v", Size: 1 << 20, Replicas: []string{"a", "b", "c"}}})
		if tries > 1 && errors.Is(err, catalog.ErrExists) {
			return nil // the try whose leader was lost committed it
		}
		return err
	})
	for _, n := range g.voters {
		waitCatalog(t, g.members[n], "volume v", func(s *catalog.State) bool { return s.Volumes["v"] != nil })
		if m := g.members[n]; !m.ctl.IsLeader() {
			if err := m.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdRemoveVolume, Name: "v"}); !errors.Is(err, ErrNotLeader) {
				t.Fatalf("proposal on follower %s: %v", n, err)
			}
		}
	}
	d := g.start("d")
	l := g.onLeader("adding d", func(l *member) error { return l.ctl.EnsureMember("d", d.addr) })
	waitCatalog(t, d, "volume v", func(s *catalog.State) bool { return s.Volumes["v"] != nil })
	if st := l.ctl.Status(); st.Members["d"] != "nonvoter" || fmt.Sprint(st.Voters) != "[a b c]" {
		t.Fatalf("status %+v", st)
	}
	// A restarted follower keeps its catalog (log and snapshots on disk).
	var f string
	for _, n := range g.voters {
		if g.members[n] != l {
			f = n
		}
	}
	g.stop(f)
	l = g.onLeader("resizing v", func(l *member) error {
		err := l.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdResizeVolume, Name: "v", Size: 2 << 20})
		if v := l.ctl.State().Volumes["v"]; err != nil && v != nil && v.Size == 2<<20 {
			return nil // the try whose leader was lost committed it
		}
		return err
	})
	m := g.start(f)
	waitCatalog(t, m, "the resize made while it was down", func(s *catalog.State) bool {
		return s.Volumes["v"] != nil && s.Volumes["v"].Size == 2<<20
	})

	// Restart the leader and watch every member until all are caught up.
	// Neither the restarted member nor a leader (whoever wins) is ever
	// caught up on a catalog that misses a command committed before the
	// restart. The other followers may lag by the commit index the old
	// leader had no time to send them (see CaughtUp).
	var restarted string
	for n, mm := range g.members {
		if mm == l {
			g.stop(n)
			g.start(n)
			restarted = n
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		all := true
		for n, mm := range g.members {
			if !mm.ctl.CaughtUp() {
				all = false
				continue
			}
			if n != restarted && mm.ctl.cur().raft.State() != raft.Leader {
				continue
			}
			if v := mm.ctl.State().Volumes["v"]; v == nil || v.Size != 2<<20 {
				t.Fatalf("%s (%v) reports itself caught up with a catalog that misses the resize", n, mm.ctl.cur().raft.State())
			}
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not every member caught up within 30 s")
		}
		time.Sleep(time.Millisecond)
	}
}

var errNoRoom = fmt.Errorf("test: %w", volume.ErrNoSpace)

// TestLogFailure fails the write log of the leader, then of a follower,
// and checks that the member leaves the group (its raft stops: it neither
// votes nor stands), says why, stops claiming a leader or a current
// catalog, keeps its catalog, and that the other two go on committing.
// Then it rejoins by itself with the catalog: after Config.Retry (the
// leader, whose group has no Room), or as soon as its disk has room (the
// follower, whose Retry is an hour); or, with no Retry, once restarted.
func TestLogFailure(t *testing.T) {
	for _, tc := range []struct {
		victim string
		retry  time.Duration
		room   bool
	}{
		{"leader", 300 * time.Millisecond, false},
		{"follower", time.Hour, true},
		{"follower", 0, false},
	} {
		t.Run(fmt.Sprintf("%s/retry=%v/room=%v", tc.victim, tc.retry, tc.room), func(t *testing.T) {
			g := newGroup(t, true, func(m *member, c *Config) {
				c.Retry = tc.retry
				if tc.room {
					c.roomEvery = 50 * time.Millisecond
					c.Room = func() error {
						if m.full.Load() {
							return errNoRoom
						}
						return nil
					}
				}
			})
			ctx := context.Background()
			put := func(i int) {
				// 4 KiB per command: a 64 KiB segment fills in about 16.
				g.onLeader(fmt.Sprint("putting host ", i), func(l *member) error {
					err := l.ctl.Propose(ctx, catalog.Command{Kind: catalog.CmdPutHost, Host: &catalog.Host{Name: fmt.Sprint("h", i), RaftAddr: strings.Repeat("x", 4<<10), Capacity: 1 << 40}})
					if errors.Is(err, wal.ErrFailed) || errors.Is(err, errNoRoom) {
						// The leader's own log failed: it is leaving.
						return fmt.Errorf("%w: %w", ErrNotLeader, err)
					}
					return err
				})
			}
			put(0)
			v := g.leader()
			if tc.victim == "follower" {
				for _, n := range g.voters {
					if g.members[n] != v {
						v = g.members[n]
						break
					}
				}
			}
			// A snapshot older than the catalog it will hold when its log
			// fails: what a new instance restores first.
			waitCatalog(t, v, "h0", func(s *catalog.State) bool { return s.Hosts["h0"] != nil })
			if err := v.ctl.cur().raft.Snapshot().Error(); err != nil {
				t.Fatal(err)
			}
			v.full.Store(true)
			i := 1
			for ; v.ctl.Failed() == nil; i++ {
				if i > 500 {
					t.Fatalf("%s's log never failed", v.name)
				}
				put(i)
			}
			if err := v.ctl.Failed(); !errors.Is(err, wal.ErrFailed) || !errors.Is(err, volume.ErrNoSpace) {
				t.Fatalf("Failed() = %v, want wal.ErrFailed for the room", err)
			}
			held := v.ctl.State()
			if held.Hosts["h0"] == nil {
				t.Fatalf("the failed member lost its catalog: %+v", held)
			}
			deadline := time.Now().Add(10 * time.Second)
			for v.ctl.cur().raft.State() != raft.Shutdown {
				if time.Now().After(deadline) {
					t.Fatalf("%s's raft still %v after its log failed", v.name, v.ctl.cur().raft.State())
				}
				time.Sleep(10 * time.Millisecond)
			}
			if st := v.ctl.Status(); st.Error == "" || st.Leader != "" {
				t.Fatalf("status of the failed member %+v: want its error and no leader", st)
			}
			if _, ok := v.ctl.Leader(); ok || v.ctl.CaughtUp() {
				t.Fatal("the failed member still claims a leader or a current catalog")
			}

			// The other two go on.
			last := fmt.Sprint("h", i)
			put(i)
			if l := g.leader(); l == v {
				t.Fatal("the failed member leads")
			}
			for _, n := range g.voters {
				if m := g.members[n]; m != v {
					waitCatalog(t, m, last, func(s *catalog.State) bool { return s.Hosts[last] != nil })
				}
			}
			if v.ctl.Failed() == nil {
				t.Fatal("the member rejoined while its disk had no room")
			}

			// With room, it rejoins: by itself, or when restarted. Its
			// catalog never goes back to its last snapshot meanwhile.
			v.full.Store(false)
			m := v
			if tc.retry == 0 {
				g.stop(v.name)
				m = g.start(v.name)
			} else {
				stop := make(chan struct{})
				back := make(chan string, 1)
				go func() {
					for {
						select {
						case <-stop:
							back <- ""
							return
						default:
						}
						if st := v.ctl.State(); st.Index < held.Index {
							back <- fmt.Sprintf("catalog went back from index %d to %d", held.Index, st.Index)
							return
						}
						time.Sleep(time.Millisecond)
					}
				}()
				defer func() {
					close(stop)
					if msg := <-back; msg != "" {
						t.Error(msg)
					}
				}()
			}
			waitCatalog(t, m, last, func(s *catalog.State) bool { return s.Hosts[last] != nil })
			deadline = time.Now().Add(10 * time.Second)
			for m.ctl.Failed() != nil || !m.ctl.CaughtUp() {
				if time.Now().After(deadline) {
					t.Fatalf("%s: failed %v, caught up %v", m.name, m.ctl.Failed(), m.ctl.CaughtUp())
				}
				time.Sleep(10 * time.Millisecond)
			}
			// It follows again: it applies a new command.
			i++
			next := fmt.Sprint("h", i)
			put(i)
			waitCatalog(t, m, next, func(s *catalog.State) bool { return s.Hosts[next] != nil })
		})
	}
}

func TestValidateVoters(t *testing.T) {
	for _, tc := range []struct {
		voters []string
		ok     bool
	}{
		{[]string{"a"}, true},
		{[]string{"a", "b", "c"}, true},
		{[]string{"a", "b", "c", "d", "e"}, true},
		{nil, false},
		{[]string{"a", "b"}, false},
		{[]string{"a", "b", "a"}, false},
		{[]string{"a", "", "c"}, false},
	} {
		if err := ValidateVoters(tc.voters); (err == nil) != tc.ok {
			t.Errorf("ValidateVoters(%q) = %v", tc.voters, err)
		}
	}
}

// TestLastCommand checks the index CaughtUp compares the catalog's with:
// the last command at or below the commit index, skipping the entries the
// FSM never sees (a new leader's no-op, configurations, barriers), and 0
// when the log holds none (they are in the snapshot).
func TestLastCommand(t *testing.T) {
	store := raft.NewInmemStore()
	types := map[uint64]raft.LogType{
		5: raft.LogConfiguration, 6: raft.LogNoop, 7: raft.LogCommand, 8: raft.LogCommand,
		9: raft.LogNoop, 10: raft.LogBarrier, 11: raft.LogCommand,
	}
	for i := uint64(5); i <= 11; i++ {
		if err := store.StoreLog(&raft.Log{Index: i, Term: 1, Type: types[i]}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ commit, want uint64 }{
		{11, 11}, {10, 8}, {9, 8}, {8, 8}, {7, 7}, {6, 0}, {5, 0}, {4, 0},
	} {
		got, term, err := lastCommand(store, tc.commit)
		if err != nil || got != tc.want {
			t.Errorf("lastCommand(commit %d) = %d, %v; want %d", tc.commit, got, err, tc.want)
		}
		if wantTerm := uint64(min(tc.commit/5, 1)); term != wantTerm {
			t.Errorf("lastCommand(commit %d): term %d, want %d", tc.commit, term, wantTerm)
		}
	}
}

// TestFSMKeepsNewerCatalog checks what lets a member rejoin over the
// catalog it held when its log failed: the snapshot and the log entries a
// new instance goes through again change nothing older than that catalog
// (a replay that put h back to its old capacity would show the past), and
// what comes after is applied.
func TestFSMKeepsNewerCatalog(t *testing.T) {
	put := func(capacity int64) []byte {
		return catalog.Command{Kind: catalog.CmdPutHost, Host: &catalog.Host{Name: "h", RaftAddr: "x", Capacity: capacity}}.Encode()
	}
	f := newFSM()
	var snap []byte
	for i := uint64(1); i <= 5; i++ {
		if err := f.Apply(&raft.Log{Index: i, Type: raft.LogCommand, Data: put(int64(i))}); err != nil {
			t.Fatalf("applying %d: %v", i, err)
		}
		if i == 3 {
			s, err := f.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			snap = []byte(s.(snapshot))
		}
	}
	check := func(what string, index uint64, capacity int64) {
		t.Helper()
		st := f.state()
		if st.Index != index || st.Hosts["h"].Capacity != capacity {
			t.Fatalf("%s: catalog at index %d with capacity %d, want %d and %d", what, st.Index, st.Hosts["h"].Capacity, index, capacity)
		}
	}
	if err := f.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	check("after restoring an older snapshot", 5, 5)
	for i := uint64(4); i <= 5; i++ {
		f.Apply(&raft.Log{Index: i, Type: raft.LogCommand, Data: put(int64(i))})
		check(fmt.Sprint("after replaying ", i), 5, 5)
	}
	f.Apply(&raft.Log{Index: 6, Type: raft.LogCommand, Data: put(6)})
	check("after a new entry", 6, 6)

	// A fresh member takes the snapshot.
	f = newFSM()
	if err := f.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	check("a fresh member after restoring", 3, 3)
}
