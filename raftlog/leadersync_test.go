package raftlog

import (
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// gatedStore is an in-memory raft.DeferredSyncLogStore whose syncs can be
// held back, standing for a leader's slow disk.
type gatedStore struct {
	*raft.InmemStore
	mu     sync.Mutex
	gate   chan struct{} // closed: syncs pass
	synced uint64        // last index known durable
}

func newGatedStore() *gatedStore {
	g := &gatedStore{InmemStore: raft.NewInmemStore(), gate: make(chan struct{})}
	close(g.gate)
	return g
}

// hold makes syncs wait until the returned function is first called.
func (g *gatedStore) hold() (release func()) {
	ch := make(chan struct{})
	g.mu.Lock()
	g.gate = ch
	g.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

func (g *gatedStore) StoreLogsNoSync(logs []*raft.Log) error { return g.InmemStore.StoreLogs(logs) }

func (g *gatedStore) SyncLogs() error {
	last, _ := g.LastIndex()
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	<-gate
	g.mu.Lock()
	g.synced = max(g.synced, last)
	g.mu.Unlock()
	return nil
}

// durable returns the last index known durable.
func (g *gatedStore) durable() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.synced
}

// StoreLogs is a store and a sync, as for any LogStore.
func (g *gatedStore) StoreLogs(logs []*raft.Log) error {
	if err := g.StoreLogsNoSync(logs); err != nil {
		return err
	}
	return g.SyncLogs()
}

func (g *gatedStore) StoreLog(l *raft.Log) error { return g.StoreLogs([]*raft.Log{l}) }

// nopFSM applies nothing: the test looks at commits only.
type nopFSM struct{}

func (nopFSM) Apply(*raft.Log) any                 { return nil }
func (nopFSM) Snapshot() (raft.FSMSnapshot, error) { return nil, fmt.Errorf("no snapshots") }
func (nopFSM) Restore(io.ReadCloser) error         { return nil }

type syncNode struct {
	r     *raft.Raft
	store *gatedStore
	trans *raft.InmemTransport
}

// TestLeaderSyncOverlapsReplication checks the change Tandem made to
// hashicorp/raft (third_party/hashicorp-raft, deferred_sync.go): a leader
// sends new entries to its followers before its own sync returns, so an
// entry commits once two followers have it durable even while the leader's
// disk is slow; and the leader counts its own copy only once it is synced,
// so an entry durable on one follower alone, with the leader's
// sync pending, is not committed.
func TestLeaderSyncOverlapsReplication(t *testing.T) {
	nodes := make([]*syncNode, 3)
	var servers []raft.Server
	for i := range nodes {
		addr, trans := raft.NewInmemTransport(raft.ServerAddress(fmt.Sprintf("n%d", i)))
		nodes[i] = &syncNode{store: newGatedStore(), trans: trans}
		servers = append(servers, raft.Server{ID: raft.ServerID(addr), Address: addr})
	}
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				a.trans.Connect(b.trans.LocalAddr(), b.trans)
			}
		}
	}
	for i, n := range nodes {
		c := raft.DefaultConfig()
		c.LocalID = servers[i].ID
		c.HeartbeatTimeout = 100 * time.Millisecond
		c.ElectionTimeout = 100 * time.Millisecond
		c.LeaderLeaseTimeout = 50 * time.Millisecond
		c.CommitTimeout = 5 * time.Millisecond
		c.Logger = hclog.New(&hclog.LoggerOptions{Output: io.Discard})
		logs, err := raft.NewLogCache(64, n.store)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := raft.BootstrapCluster(c, logs, n.store, raft.NewInmemSnapshotStore(), n.trans, raft.Configuration{Servers: servers}); err != nil {
				t.Fatal(err)
			}
		}
		if n.r, err = raft.NewRaft(c, nopFSM{}, logs, n.store, raft.NewInmemSnapshotStore(), n.trans); err != nil {
			t.Fatal(err)
		}
		defer n.r.Shutdown()
	}

	leader := func() (*syncNode, []*syncNode) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			for i, n := range nodes {
				if n.r.State() == raft.Leader && n.r.Barrier(time.Second).Error() == nil {
					var others []*syncNode
					for j, o := range nodes {
						if j != i {
							others = append(others, o)
						}
					}
					return n, others
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatal("no leader")
		return nil, nil
	}
	l, followers := leader()

	// Overlap: with the leader's sync held, an entry still commits on the
	// two followers' syncs.
	release := l.store.hold()
	defer release() // lets a stuck leader shut down if the test fails
	select {
	case err := <-applyAnswer(l.r.Apply([]byte("a"), time.Second)):
		if err != nil {
			t.Fatalf("apply with the leader's sync held: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("apply with the leader's sync held: no answer in 10 s (the leader waits for its own sync before replicating)")
	}
	release()
	if err := l.r.Barrier(5 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}

	// Safety: with the leader's sync held and one follower cut off, an
	// entry durable on the other follower only is not committed.
	cut := followers[1]
	l.trans.Disconnect(cut.trans.LocalAddr())
	cut.trans.Disconnect(l.trans.LocalAddr())
	release = l.store.hold()
	defer release()
	before := l.r.LastIndex()
	done := applyAnswer(l.r.Apply([]byte("b"), 10*time.Second))
	index := l.r.LastIndex()
	for ; index == before; index = l.r.LastIndex() {
		time.Sleep(time.Millisecond) // until the leader appended it
	}
	for followers[0].store.durable() < index {
		select {
		case err := <-done:
			t.Fatalf("apply answered (%v) before the follower stored the entry", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	// The follower has acknowledged by now or within a few heartbeats; a
	// leader that counted its unsynced copy would commit at once.
	select {
	case err := <-done:
		t.Fatalf("entry committed (apply: %v) while durable on one of three servers", err)
	case <-time.After(300 * time.Millisecond):
	}
	if ci := l.r.CommitIndex(); ci >= index {
		t.Fatalf("commit index %d reached the entry %d durable on one server", ci, index)
	}
	release()
	if err := <-done; err != nil {
		t.Fatalf("apply after the leader's sync: %v", err)
	}
}

// applyAnswer delivers f's error once it has one.
func applyAnswer(f raft.ApplyFuture) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f.Error() }()
	return ch
}
