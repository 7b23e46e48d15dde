package raftlog

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/tandem-project/tandem/nbd/nbdclient"
	"github.com/tandem-project/tandem/volume"
)

// ForwardPrefix prefixes the export name under which an agent serves a
// volume only if it leads it: forwarded requests never bounce further, so
// two agents with different ideas of the leader cannot ping-pong a request.
const ForwardPrefix = "_fwd/"

// leaderConn keeps one NBD connection to a volume's leader-only export
// (ForwardPrefix) on some host's agent: the forwarder's, to the leader it
// knows, and the proxy's, to the replica host that answered last.
type leaderConn struct {
	volume string

	mu     sync.Mutex
	to     string // peer ID the connection goes to
	conn   *nbdclient.Conn
	closed bool
}

// healthy returns the connection if it is up, else nil.
func (l *leaderConn) healthy() *nbdclient.Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != nil && l.conn.Err() == nil {
		return l.conn
	}
	return nil
}

// get returns the connection to p's agent, dialing it (and aborting one to
// another host) if needed.
func (l *leaderConn) get(ctx context.Context, p Peer, timeout time.Duration) (*nbdclient.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, fmt.Errorf("%w: volume %s is closed on this host", volume.ErrUnavailable, l.volume)
	}
	if l.conn != nil && l.to == p.ID && l.conn.Err() == nil {
		return l.conn, nil
	}
	if l.conn != nil {
		l.conn.Abort()
		l.conn = nil
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := nbdclient.Dial(dctx, "tcp", p.NBD, nbdclient.Options{
		Export:       ForwardPrefix + l.volume,
		MetaContexts: []string{nbdclient.MetaContextBase},
	})
	if err != nil {
		return nil, fmt.Errorf("raftlog: volume %s: connecting to the agent of %s (%s): %w", l.volume, p.ID, p.NBD, err)
	}
	l.conn, l.to = c, p.ID
	return c, nil
}

// abortUnlessTo aborts the connection unless it goes to host id (any
// connection, if id is ""): requests waiting on it fail at once and are
// sent again elsewhere.
func (l *leaderConn) abortUnlessTo(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != nil && (id == "" || l.to != id) {
		l.conn.Abort()
		l.conn = nil
	}
}

// drop forgets c after it failed.
func (l *leaderConn) drop(c *nbdclient.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == c {
		l.conn = nil
		c.Abort()
	}
}

// close closes the connection; later gets fail.
func (l *leaderConn) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.conn != nil {
		l.conn.Close()
		l.conn = nil
	}
}

// forwarder sends a volume's I/O to the agent of the host that leads it,
// over NBD, keeping one connection to the current leader.
type forwarder struct {
	g *Group
	leaderConn
}

func newForwarder(g *Group) *forwarder {
	return &forwarder{g: g, leaderConn: leaderConn{volume: g.spec.Name}}
}

// errNoLeader means no leader is known right now; the caller waits.
var errNoLeader = errors.New("raftlog: no leader known")

// get returns a connection to the current leader's agent.
func (f *forwarder) get(ctx context.Context) (*nbdclient.Conn, error) {
	p, ok := f.g.leader()
	if !ok || p.ID == f.g.cfg.Local {
		return nil, errNoLeader
	}
	return f.leaderConn.get(ctx, p, 5*time.Second)
}

// retarget closes the connection if it goes to a host that no longer
// leads: requests waiting on it (a partitioned or dead leader may never
// answer) fail at once and are sent again to the new leader.
func (f *forwarder) retarget() {
	p, ok := f.g.leader()
	if !ok {
		p.ID = ""
	}
	f.abortUnlessTo(p.ID)
}

// permanent reports whether a forwarded request's error is the answer
// (bad request, read-only, no fast zero) rather than a reason to try again
// at whoever leads next.
func permanent(err error) bool {
	var e *nbdclient.Error
	if !errors.As(err, &e) {
		return false
	}
	switch syscall.Errno(e.Errno) {
	case syscall.EINVAL, syscall.ENOSPC, syscall.EPERM, syscall.ENOTSUP:
		return true
	}
	return false
}
