package raftlog

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/tandem-project/tandem/nbd/nbdclient"
	"github.com/tandem-project/tandem/raftlog/mux"
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
	// epoch is the writer epoch the connection's requests come under: the
	// export is ForwardPrefix + volume.WriterExport(volume, epoch).
	epoch uint64

	mu     sync.Mutex
	used   time.Time // last get
	to     string    // peer ID the connection goes to
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

// get returns the connection to p's agent, dialing it on p's replication
// port with d (and aborting one to another host) if needed.
func (l *leaderConn) get(ctx context.Context, d mux.Dialer, p Peer, timeout time.Duration) (*nbdclient.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, fmt.Errorf("%w: volume %s is closed on this host", volume.ErrUnavailable, l.volume)
	}
	l.used = time.Now()
	if l.conn != nil && l.to == p.ID && l.conn.Err() == nil {
		return l.conn, nil
	}
	if l.conn != nil {
		l.conn.Abort()
		l.conn = nil
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	nc, err := d.Dial(dctx, p.Raft, mux.KindNBD, "")
	if err != nil {
		return nil, fmt.Errorf("raftlog: volume %s: connecting to the agent of %s: %w", l.volume, p.ID, err)
	}
	c, err := nbdclient.Handshake(dctx, nc, nbdclient.Options{
		Export:       ForwardPrefix + volume.WriterExport(l.volume, l.epoch),
		MetaContexts: []string{nbdclient.MetaContextBase},
	})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("raftlog: volume %s: connecting to the agent of %s (%s): %w", l.volume, p.ID, p.Raft, err)
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

// drop forgets c after it failed, and returns the peer ID it went to (""
// if it was forgotten already).
func (l *leaderConn) drop(c *nbdclient.Conn) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != c {
		return ""
	}
	l.conn = nil
	c.Abort()
	return l.to
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

// idleConn is how long a leader connection of a writer epoch nobody uses
// any more (a VM that moved away) stays open.
const idleConn = time.Minute

// leaderConns holds a volume's leader connections, one per writer epoch:
// the epoch is part of the export name, so requests of different writers
// never share a connection.
type leaderConns struct {
	volume string

	mu     sync.Mutex
	byEp   map[uint64]*leaderConn
	closed bool
}

// of returns the connection holder of epoch, and closes the holders of
// other epochs that were not used for idleConn.
func (ls *leaderConns) of(epoch uint64) *leaderConn {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.byEp == nil {
		ls.byEp = map[uint64]*leaderConn{}
	}
	l, ok := ls.byEp[epoch]
	if !ok {
		l = &leaderConn{volume: ls.volume, epoch: epoch, closed: ls.closed, used: time.Now()}
		ls.byEp[epoch] = l
	}
	for e, o := range ls.byEp {
		if e == epoch || e == 0 {
			continue
		}
		o.mu.Lock()
		idle := time.Since(o.used) > idleConn
		o.mu.Unlock()
		if idle {
			o.close()
			delete(ls.byEp, e)
		}
	}
	return l
}

// each calls fn for every holder.
func (ls *leaderConns) each(fn func(*leaderConn)) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for _, l := range ls.byEp {
		fn(l)
	}
}

// close closes every connection; later gets fail.
func (ls *leaderConns) close() {
	ls.mu.Lock()
	ls.closed = true
	ls.mu.Unlock()
	ls.each((*leaderConn).close)
}

// forwarder sends a volume's I/O to the agent of the host that leads it,
// over NBD, keeping one connection per writer epoch to the current leader.
type forwarder struct {
	g *Group
	leaderConns
}

func newForwarder(g *Group) *forwarder {
	return &forwarder{g: g, leaderConns: leaderConns{volume: g.spec.Name}}
}

// errNoLeader means no leader is known right now; the caller waits.
var errNoLeader = errors.New("raftlog: no leader known")

// get returns a connection to the current leader's agent for requests of
// writer epoch.
func (f *forwarder) get(ctx context.Context, epoch uint64) (*nbdclient.Conn, error) {
	p, ok := f.g.leader()
	if !ok || p.ID == f.g.cfg.Local {
		return nil, errNoLeader
	}
	c, err := f.of(epoch).get(ctx, f.g.h.dialer(), p, 5*time.Second)
	if err != nil {
		f.g.forwardMissed(p.ID)
	}
	return c, err
}

// drop forgets c, a connection of epoch, after it failed.
func (f *forwarder) drop(epoch uint64, c *nbdclient.Conn) {
	if to := f.of(epoch).drop(c); to != "" {
		f.g.forwardMissed(to)
	}
}

// retarget closes the connection if it goes to a host that no longer
// leads: requests waiting on it (a partitioned or dead leader may never
// answer) fail at once and are sent again to the new leader.
func (f *forwarder) retarget() {
	p, ok := f.g.leader()
	if !ok {
		p.ID = ""
	}
	f.each(func(l *leaderConn) { l.abortUnlessTo(p.ID) })
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

// answer turns a permanent error from the leader's agent into the volume
// error this host's NBD server sends for it, so that the client gets the
// leader's verdict (EPERM for a fenced writer: read-only volumes are
// refused before forwarding). Other errors are returned as they are.
func answer(err error) error {
	var e *nbdclient.Error
	if !errors.As(err, &e) {
		return err
	}
	switch syscall.Errno(e.Errno) {
	case syscall.EPERM:
		return fmt.Errorf("%w: %v", volume.ErrFenced, err)
	case syscall.ENOSPC:
		return fmt.Errorf("%w: %v", volume.ErrNoSpace, err)
	case syscall.EINVAL:
		return fmt.Errorf("%w: %v", volume.ErrOutOfRange, err)
	case syscall.ENOTSUP:
		return fmt.Errorf("%w: %v", volume.ErrNotFast, err)
	}
	return err
}
